"""The across-chunk state of the delta rule as an associative scan, and sequence (context)
parallelism built on it.

Over a chunk (or any block of tokens, e.g. one device's slice) the (gated) delta rule's state
map (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule", §3; Gated
DeltaNet, Yang et al. 2025, eq. 10)

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ    (S reset to W_0 at a document start)

is affine in the block's start state, with a full [dk, dk] multiplier:

    S_end = A S_start + U,    A = Π_t α_t (I − β_t k_t k_tᵀ)  (later tokens on the left;
                                                               A = 0 if the block has a reset),

U the block's final state from a zero start (W_0's contribution after a reset included). Affine
maps compose associatively, (A₂, U₂) ∘ (A₁, U₁) = (A₂ A₁, A₂ U₁ + U₂), so the block-start states
come from ``jax.lax.associative_scan`` in log depth (Blelloch 1990), as for the linear memories
(linear_memory/state_passing.py) where A is diagonal.

The outputs are affine in the start state too: y_t = S_tᵀ q_t with S_t = A_t S_start + U_t (A_t,
U_t the map from the block start to t), so y_t = y0_t + S_startᵀ r_t with r_t = A_tᵀ q_t.

One local run gives all four of y0, U, r and A: A is the state of the *homogeneous* recurrence
(v = 0, W_0 = 0) started from the identity, taken as a [dk, dk] state (dv = dk), and r_t is that
run's output. Both runs share every coefficient of the WY chunk form (the keys, β, the gates and
so the [c, c] triangular solve), so they are one run of the same kernel with the value width
widened to dv + dk:

    v' = [v | 0],   start' = [0 | I],   W_0' = [W_0 | 0]   →   y' = [y0 | r],   S' = [U | A].

A reset inside the block (or at its first token) sends start' to [W_0 | 0]: A and r are then
exactly zero from the reset on, so the carried state never reaches a token after a reset. The
cost is that widened run (dv + dk instead of dv columns in the right-hand sides, outputs and
state; the solve and the [c, c] products are shared: about 2x the width-dependent work for
dk = dv, where the linear memories' combine needs no extra width) plus one [T, dk] x [dk, dv]
matmul to add the read; no second pass. Across devices an all-gather of one [dk, dk + dv] map per
(row, head) and device. Exact: the same products in another order (fp32 state throughout).

``chunk_scan`` is the over-chunks form (``delta_rule(..., state_passing='associative')``): every
chunk's map from the widened chunk function, a log-depth scan over chunks, then the read; every
chunk state is materialised (the parallel-over-chunks option, not the memory-lean default).

``context_parallel`` applies it across devices: each device runs the kernel on its slice with the
widened inputs, the (A, U) of all devices are gathered and prefix-composed, and each device adds
y_t += S_dᵀ r_t for its true start state S_d. ``pass_state_across`` is that cross-device half
alone, for any local implementation (the model's sequence parallelism runs the XLA chunked path
locally: miras_jax/layers/sequence_parallel.py); ``widen`` / ``split`` build and undo the widened
inputs in the kernels' [dk, dv] state layout.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.delta_rule.chunk import delta_chunk


def _compose(a, b):
  """(A₂, U₂) ∘ (A₁, U₁) with ``a`` the earlier block: A [..., dk, dk], U [..., dk, dv]."""
  (a1, u1), (a2, u2) = a, b
  mm = functools.partial(jnp.einsum, precision=jax.lax.Precision.HIGHEST)
  return mm('...ij,...jk->...ik', a2, a1), mm('...ij,...jv->...iv', a2, u1) + u2


def _eye_like(x, dk):
  """I [dk, dk] broadcast to x's leading axes (x [..., dk, ·]), fp32."""
  return jnp.broadcast_to(jnp.eye(dk, dtype=jnp.float32), x.shape[:-1] + (dk,))


def widen(v, start, reset_state):
  """The widened inputs of the one local run (module doc), in the kernels' layout.

  v [..., T, dv] → [v | 0] [..., T, dv + dk] (v's dtype); ``start`` [..., dk, dv] (the block's
  own run starts from zeros) → [start | I] [..., dk, dv + dk] fp32; ``reset_state`` W_0
  [..., dk, dv] → [W_0 | 0] fp32. The key width dk is start's axis −2. A reset at the block's
  first token, given to the kernel, replaces the whole start by [W_0 | 0], so A = 0 there."""
  dk = start.shape[-2]
  v2 = jnp.concatenate([v, jnp.zeros(v.shape[:-1] + (dk,), v.dtype)], axis=-1)
  s2 = jnp.concatenate([start.astype(jnp.float32), _eye_like(start, dk)], axis=-1)
  w = reset_state.astype(jnp.float32)
  w2 = jnp.concatenate([w, jnp.zeros(w.shape[:-1] + (dk,), jnp.float32)], axis=-1)
  return v2, s2, w2


def split(y, state, dv):
  """Undo ``widen`` on the run's results: y [..., T, dv + dk], state [..., dk, dv + dk] →
  (y0 [..., T, dv], U [..., dk, dv], r [..., T, dk], A [..., dk, dk])."""
  return y[..., :dv], state[..., :dv], y[..., dv:], state[..., dv:]


def _read(y0, r, start):
  """y0 + S_startᵀ r_t per token: y0 [..., T, dv], r [..., T, dk], start [..., dk, dv]."""
  read = jnp.einsum(
    '...tk,...kv->...tv', r.astype(jnp.float32), start, precision=jax.lax.Precision.HIGHEST
  )
  return y0.astype(jnp.float32) + read


def chunk_scan(q, k, v, beta, G, E, seg, h0, w0, *, c, resets):
  """The associative-scan form of the kernels' core: flattened inputs [N, Tp, ·] (Tp a multiple
  of c), h0 / w0 [N, dk, dv] → (y [N, Tp, dv] f32, final state [N, dk, dv] f32)."""
  N, Tp, dk = q.shape
  dv = v.shape[-1]
  nc = Tp // c
  v2, s2, w2 = widen(v, jnp.zeros_like(h0), w0)  # [N, Tp, dv+dk], [N, dk, dv+dk] x 2
  chunks = [x.reshape(N, nc, c, x.shape[-1]) for x in (q, k, v2, beta, G, E, seg)]
  fn = functools.partial(delta_chunk, resets=resets, dtype=q.dtype)
  over = jax.vmap(jax.vmap(fn, in_axes=(0, None, None)), in_axes=(0, 0, 0))
  y2, S2 = over(tuple(chunks), s2, w2)  # [N, nc, c, dv+dk], [N, nc, dk, dv+dk]
  y0, U, r, A = split(y2, S2, dv)
  Ap, Up = jax.lax.associative_scan(_compose, (A, U), axis=1)
  # state after chunk j: the prefix map applied to the sequence's start state
  ends = jnp.einsum('njik,nkv->njiv', Ap, h0, precision=jax.lax.Precision.HIGHEST) + Up
  starts = jnp.concatenate([h0[:, None], ends[:, :-1]], axis=1)  # [N, nc, dk, dv]
  y = _read(y0, r, starts)
  return y.reshape(N, Tp, dv), ends[:, -1]


def context_parallel(
  q, k, v, beta, log_alpha, reset, initial_state, reset_state, *, axis_name, **kernel_kw
):
  """Call inside ``shard_map`` with the time axis (axis 2) split over ``axis_name``.

  Inputs are the local slices (q, k [B, H, T_local, dk], v [B, H, T_local, dv], beta and
  log_alpha [B, H, T_local], log_alpha None for DeltaNet); ``reset`` [B, H, T_local] must be
  computed from the *global* segment ids (a document may start at a device boundary) or be None;
  ``initial_state`` [B, H, dk, dv] (the sequence's, replicated; None: zeros) and ``reset_state``
  [H, dk, dv] (None: zeros). ``kernel_kw`` goes to ``delta_rule``. Returns (local y, final state
  of the whole sequence [B, H, dk, dv] fp32, replicated)."""
  from pallas_kernels.delta_rule.api import delta_rule  # pylint: disable=import-outside-toplevel

  B, H, _, dk = q.shape
  dv = v.shape[-1]
  f32 = jnp.float32
  w0 = jnp.zeros((H, dk, dv), f32) if reset_state is None else reset_state
  v2, s2, w2 = widen(v, jnp.zeros((B, H, dk, dv), f32), w0)
  y2, S2 = delta_rule(
    q, k, v2, beta, log_alpha, reset=reset, initial_state=s2, reset_state=w2, **kernel_kw
  )
  y0, U, r, A = split(y2, S2, dv)
  return pass_state_across(y0, U, r, A, initial_state, axis_name=axis_name)


def pass_state_across(y0, U, r, A, initial_state, *, axis_name):
  """The cross-device half of ``context_parallel``, for any local implementation.

  Inside ``shard_map`` (time split over ``axis_name``), given each device's widened run of its
  slice (``widen`` / ``split``; resets from the global segment ids, a document start at the
  slice's first token included): y0 [B, H, T_local, dv] and U [B, H, dk, dv] (the run from a
  zero start), r [B, H, T_local, dk] and A [B, H, dk, dk] (the homogeneous run from I).
  ``initial_state`` [B, H, dk, dv] or None (zeros): the state before the sequence. Composes the
  slices' affine maps (A, U) across devices and adds to y0 the read S_dᵀ r_t of each device's
  true start state S_d. Returns (y in y0's dtype, final state of the whole sequence
  [B, H, dk, dv] fp32, replicated)."""
  f32 = jnp.float32
  As = jax.lax.all_gather(A.astype(f32), axis_name)  # [P, B, H, dk, dk]
  Us = jax.lax.all_gather(U.astype(f32), axis_name)  # [P, B, H, dk, dv]
  Ap, Up = jax.lax.associative_scan(_compose, (As, Us), axis=0)
  h0 = jnp.zeros(U.shape, f32) if initial_state is None else initial_state.astype(f32)
  ends = jnp.einsum('pbhik,bhkv->pbhiv', Ap, h0, precision=jax.lax.Precision.HIGHEST) + Up
  d = jax.lax.axis_index(axis_name)
  start = jnp.where(d == 0, h0, ends[jnp.maximum(d - 1, 0)])
  y = _read(y0, r, start)
  return y.astype(y0.dtype), ends[-1]
