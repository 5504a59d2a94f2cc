"""Shared plumbing of the memory implementations: inputs, resets, batching."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.memory.rules import MemoryRule, fresh_state, prepare_gates


def tree_where(c, a, b):
  return jax.tree.map(lambda x, y: jnp.where(c, x, y), a, b)


def take_row(x, t, keepdims: bool = False):
  """``x[t]`` along axis 0 (``x[t : t + 1]`` with ``keepdims``) as a masked reduction over the
  axis: exact (the other terms are zeros or False) and slice-free. The Pallas Triton lowering has
  no ``slice`` (nor ``pad``, its transpose), and this runs inside the GPU kernels
  (pallas_kernels/chunk_math.py, mlp_memory/chunk.py, and ``chunked.chunk_core`` through them).
  One pass over x; for a static t on a TPU-only path a slice is cheaper."""
  hit = jax.lax.broadcasted_iota(jnp.int32, x.shape, 0) == t
  if x.dtype == jnp.bool_:
    return jnp.any(hit & x, axis=0, keepdims=keepdims)
  return jnp.sum(jnp.where(hit, x, jnp.zeros((), x.dtype)), axis=0, keepdims=keepdims)


def semantic_chunk(rule: MemoryRule, chunk_size: int) -> int:
  """The chunk size that defines the rule's semantics: the WY form is exactly sequential."""
  return 1 if rule.form == 'wy' else int(chunk_size)


def resets_from_segments(segment_ids, shape):
  """reset[t] = 1 where a new document starts (t > 0 and seg[t] ≠ seg[t−1]).

  Position 0 never resets: it continues the state passed in (a fresh state when none).
  segment_ids [B, T] → float32 [B, H, T] (broadcast over heads).
  """
  if segment_ids is None:
    return jnp.zeros(shape, jnp.float32)
  seg = jnp.asarray(segment_ids)
  if seg.shape != (shape[0], shape[2]):
    raise ValueError(f'segment_ids has shape {seg.shape}, expected {(shape[0], shape[2])}')
  r = jnp.concatenate([jnp.zeros_like(seg[:, :1], dtype=bool), seg[:, 1:] != seg[:, :-1]], 1)
  return jnp.broadcast_to(r[:, None, :].astype(jnp.float32), shape)


def check_inputs(rule: MemoryRule, q, k, v, w0, outer):
  if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
    raise ValueError(
      f'q, k, v must be [B, H, T, d] with equal B, H, T (and q, k equal d); '
      f'got q {q.shape}, k {k.shape}, v {v.shape}'
    )
  H, dk, dv = q.shape[1], q.shape[-1], v.shape[-1]
  shapes = tuple(rule.arch.shapes(dk, dv))
  got = tuple(tuple(w.shape) for w in w0)
  want = tuple((H,) + s for s in shapes)
  if got != want:
    raise ValueError(f'rule {rule.name}: initial memory w0 has shapes {got}, expected {want}')
  if getattr(rule.arch, 'residual', False) and dk != dv:
    raise ValueError(
      f'rule {rule.name}: the residual MLP memory needs d_k == d_v, got {dk} and {dv}'
    )
  if outer is None:
    outer = jax.vmap(lambda _: rule.arch.init_outer(dv))(jnp.arange(H))
  return outer


def gradient_cuts(grad_horizon, chunk_size, state, shape):
  """Truncated back-propagation through time: 1.0 at the tokens ``t = n · grad_horizon``
  (n ≥ 1) before which the carried state's gradient is stopped, else 0; ``[B, H, T]`` float32,
  or None for exact gradients (``grad_horizon`` None or 0).

  The forward pass is unchanged; the outer gradient reaching the memory state flows back at most
  ``grad_horizon`` tokens (to the last cut). Cuts sit on chunk boundaries, so the horizon must be
  a multiple of the chunk size, and the call must start fresh (``state`` None): a carried state
  could start mid-chunk, where the chunked path cannot cut.
  """
  if not grad_horizon:
    return None
  h, b = int(grad_horizon), int(chunk_size)
  if h < 0 or h % b:
    raise ValueError(f'grad_horizon={h} must be a positive multiple of the chunk size {b}')
  if state is not None:
    raise ValueError(
      'grad_horizon needs a fresh call (state=None): truncation points are '
      'counted from the first token'
    )
  t = jnp.arange(shape[2])
  cut = ((t % h == 0) & (t > 0)).astype(jnp.float32)
  return jnp.broadcast_to(cut, shape)


def stop_gradient_where(cut, tree):
  """``tree`` with its gradient stopped where the scalar ``cut`` > 0 (values unchanged)."""
  return jax.tree.map(lambda a: jnp.where(cut > 0, jax.lax.stop_gradient(a), a), tree)


def prepare(rule, q, k, v, gates, w0, outer, state, segment_ids):
  """Common front end: validated fp32 inputs, gates, resets, fresh and initial state."""
  outer = check_inputs(rule, q, k, v, w0, outer)
  f32 = jnp.promote_types(q.dtype, jnp.float32)  # fp32 compute (fp64 if given)
  qf, kf, vf = q.astype(f32), k.astype(f32), v.astype(f32)
  eta, la, lm, delta = prepare_gates(rule, gates, qf, kf, vf)
  reset = resets_from_segments(segment_ids, q.shape[:3])
  fresh = jax.vmap(lambda w: fresh_state(rule, w))(tuple(w0))  # [H, ...]
  B = q.shape[0]
  if state is None:
    state = jax.tree.map(lambda x: jnp.broadcast_to(x, (B,) + x.shape), fresh)
  return dict(
    q=qf,
    k=kf,
    v=vf,
    eta=eta,
    la=la,
    lm=lm,
    delta=delta,
    reset=reset,
    fresh=fresh,
    outer=outer,
    state=state,
  )


def vmap_bh(fn):
  """vmap a single-(batch, head) function: per-token args [B, H, ...], per-head args
  [H, ...] (shared over batch), state [B, H, ...]."""

  def per_b(tok, head, st):
    return jax.vmap(fn, in_axes=(0, 0, 0))(tok, head, st)

  return jax.vmap(per_b, in_axes=(0, None, 0))
