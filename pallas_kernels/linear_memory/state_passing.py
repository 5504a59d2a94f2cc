"""The across-chunk state of the linear memory as an associative scan, and sequence (context)
parallelism built on it.

Over a chunk (or any block of tokens) the state map is affine with a diagonal multiplier:

    S_end = m ⊙ S_start + U,   m = e^{E_end} (0 when the block contains a document start),

U the block's state from a zero start (W_0's contribution after a reset included). Affine maps
compose associatively, (m₂, U₂) ∘ (m₁, U₁) = (m₂ m₁, m₂ ⊙ U₁ + U₂), so the chunk-start states
come from ``jax.lax.associative_scan`` in log depth over the chunks (Blelloch 1990; the
state-passing form of Mamba2 / SSD, Dao & Gu 2024 §6, and GLA, Yang et al. 2024 §4) instead of
the kernels' sequential loop. Exact (the same sums in another order), but every chunk state is
materialised: this is the parallel-over-chunks option, not the memory-lean default.

``context_parallel`` applies the same composition across devices: each device runs the
sequential kernel on its slice of the sequence from a zero state, the (m, U) of all devices are
gathered and prefix-composed, and each device adds the read of its true start state to its
outputs: y_t += 1[no reset before t] (q_t ⊙ e^{cum_t}) S_start — one matmul, no second pass.
``pass_state_across`` is that cross-device half alone, for any local implementation (the model's
sequence parallelism runs the XLA chunked path locally: miras_jax/layers/sequence_parallel.py).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from pallas_kernels.linear_memory.chunk import linear_chunk


def _compose(a, b):
  (m1, u1), (m2, u2) = a, b
  return m2 * m1, m2[..., :, None] * u1 + u2


def chunk_scan(q, k, vh, G, E, seg, h0, w0, *, c, channel, resets):
  """The associative-scan form of the kernels' core: flattened inputs [N, Tp, ·] (Tp a multiple
  of c), h0 / w0 [N, dk, dv] → (y [N, Tp, dv] f32, final state [N, dk, dv] f32)."""
  N, Tp, _ = q.shape
  nc = Tp // c
  chunks = [x.reshape(N, nc, c, x.shape[-1]) for x in (q, k, vh, G, E, seg)]
  fn = functools.partial(linear_chunk, channel=channel, resets=resets, dtype=q.dtype)
  over = lambda f: jax.vmap(jax.vmap(f, in_axes=(0, 0, None)), in_axes=(0, 0, 0))
  _, U = over(fn)(tuple(chunks), jnp.zeros((N, nc) + h0.shape[1:], jnp.float32), w0)
  E_end, seg_end = chunks[4][:, :, -1, :], chunks[5][:, :, -1, :]  # [N, nc, g], [N, nc, 1]
  m = jnp.where(seg_end == 0, jnp.exp(E_end), 0.0)
  m = jnp.broadcast_to(m, U.shape[:-1])  # [N, nc, dk]
  M, Up = jax.lax.associative_scan(_compose, (m, U), axis=1)
  ends = M[..., None] * h0[:, None] + Up  # state after chunk j
  starts = jnp.concatenate([h0[:, None], ends[:, :-1]], axis=1)
  y, _ = over(fn)(tuple(chunks), starts, w0)
  return y.reshape(N, Tp, -1), ends[:, -1]


def context_parallel(
  q, k, v, eta, log_alpha, reset, initial_state, reset_state, *, axis_name, **kernel_kw
):
  """Call inside ``shard_map`` with the time axis (axis 2) split over ``axis_name``.

  Inputs are the local slices ([B, H, T_local, ·]); ``reset`` [B, H, T_local] must be computed
  from the *global* segment ids (a document may start at a device boundary) or be None;
  ``initial_state`` [B, H, dk, dv] (the sequence's, replicated) and ``reset_state`` [H, dk, dv].
  Returns (local y, final state of the whole sequence, replicated)."""
  from pallas_kernels.linear_memory.api import linear_memory

  y0, U = linear_memory(q, k, v, eta, log_alpha, reset=reset, reset_state=reset_state, **kernel_kw)
  return pass_state_across(q, y0, U, log_alpha, reset, initial_state, axis_name=axis_name)


def pass_state_across(q, y0, U, log_alpha, reset, initial_state, *, axis_name):
  """The cross-device half of ``context_parallel``, for any local implementation.

  Inside ``shard_map`` (time split over ``axis_name``), given each device's run of its slice
  from a zero state (W_0 after a reset in the slice, including one at its first token):
  y0 [B, H, T_local, dv] and that run's final state U [B, H, dk, dv] (fp32). ``q``, ``log_alpha``
  and ``reset`` as in ``context_parallel``. Composes the slices' affine maps (m, U) across
  devices and adds to y0 the read of each device's true start state. Returns (y in y0's dtype,
  final state of the whole sequence [B, H, dk, dv] fp32, replicated)."""
  B, H, Tl, dk = q.shape
  dv = y0.shape[-1]
  f32 = jnp.float32
  la = jnp.zeros((B, H, Tl, 1), f32) if log_alpha is None else log_alpha.astype(f32)
  if la.ndim == 3:
    la = la[..., None]
  cum = jnp.cumsum(la, axis=2)  # decay from the slice start to t, [B, H, Tl, g]
  cont = (
    jnp.ones((B, H, Tl, 1), bool) if reset is None else (jnp.cumsum(reset, axis=2) == 0)[..., None]
  )
  m = jnp.where(cont[:, :, -1], jnp.exp(cum[:, :, -1]), 0.0)  # [B, H, g]
  m = jnp.broadcast_to(m, (B, H, dk))
  ms = jax.lax.all_gather(m, axis_name)  # [P, B, H, dk]
  Us = jax.lax.all_gather(U.astype(f32), axis_name)
  Mp, Upp = jax.lax.associative_scan(_compose, (ms, Us), axis=0)
  h0 = jnp.zeros((B, H, dk, dv), f32) if initial_state is None else initial_state.astype(f32)
  ends = Mp[..., None] * h0[None] + Upp  # state after each device's slice
  d = jax.lax.axis_index(axis_name)
  start = jnp.where(d == 0, h0, ends[jnp.maximum(d - 1, 0)])
  read = jnp.einsum('bhtk,bhkv->bhtv', q.astype(f32) * jnp.exp(cum), start)
  y = y0.astype(f32) + jnp.where(cont, read, 0.0)
  return y.astype(y0.dtype), ends[-1]
