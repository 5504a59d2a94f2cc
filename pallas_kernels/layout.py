"""XLA-side preparation shared by the kernels: padding, chunk-local log-decay sums, resets.

Everything that is a prefix sum over a chunk is computed here, outside the kernel, so that the
kernel only sees per-token vectors and its gradient reaches the gates through XLA's autodiff of
these few element-wise / cumulative ops:

  G[t] = Σ_{i ≤ t, i in t's chunk} log α_i     (decay from the chunk start to t; ≤ 0)
  E[t] = Σ_{i ≤ t, i in t's chunk and document} log α_i   (decay from t's base state to t)
  seg[t] = number of resets in t's chunk up to t (0: t continues the carried state)

Tokens i ≤ t of the same chunk and document interact with weight exp(G[t] − G[i]) (every exponent
a non-positive difference, so nothing can overflow; exp(E) likewise). Padding tokens have zero
write strength and zero log-decay, so they change nothing (the state after the last real token is
exact).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def resets_from_segments(segment_ids, B, H, T):
  """[B, H, T] float32: 1 where a new document starts (t > 0 and seg[t] ≠ seg[t−1])."""
  if segment_ids is None:
    return None
  seg = jnp.asarray(segment_ids)
  if seg.shape != (B, T):
    raise ValueError(f'segment_ids has shape {seg.shape}, expected {(B, T)}')
  r = jnp.concatenate([jnp.zeros((B, 1), bool), seg[:, 1:] != seg[:, :-1]], 1)
  return jnp.broadcast_to(r[:, None, :].astype(jnp.float32), (B, H, T))


def plan(T: int, chunk: int, seg_chunks: int) -> tuple[int, int, int]:
  """(c, R, padded length): the chunk shrinks to the (8-aligned) length for short inputs and a
  segment never has more chunks than the sequence."""
  c = min(int(chunk), max(8, -(-T // 8) * 8))
  n_chunks = -(-T // c)
  R = max(1, min(int(seg_chunks), n_chunks))
  Tp = -(-n_chunks // R) * R * c
  return c, R, Tp


def pad_time(x, Tp, value=0.0):
  """Pad axis 2 ([B, H, T, ...]) to Tp."""
  T = x.shape[2]
  if T == Tp:
    return x
  pad = [(0, 0)] * x.ndim
  pad[2] = (0, Tp - T)
  return jnp.pad(x, pad, constant_values=value)


def _segmented_cumsum(x, start):
  """Inclusive cumsum along axis −2 restarting where ``start`` (same leading shape, [..., c, 1])
  is 1: a first-order linear recurrence, as an associative scan (Blelloch 1990)."""

  def combine(a, b):
    (xa, sa), (xb, sb) = a, b
    return xb + (1.0 - sb) * xa, jnp.maximum(sa, sb)

  out, _ = jax.lax.associative_scan(combine, (x, jnp.broadcast_to(start, x.shape)), axis=-2)
  return out


def chunk_gates(log_alpha, reset, c):
  """log_alpha [B, H, Tp, g], reset [B, H, Tp] or None → (G, E, seg), each [B, H, Tp, ·] f32."""
  B, H, Tp, g = log_alpha.shape
  la = log_alpha.astype(jnp.float32).reshape(B, H, Tp // c, c, g)
  G = jnp.cumsum(la, axis=3)
  first = (jnp.arange(c) == 0).astype(jnp.float32)[:, None]  # every chunk starts a sum
  if reset is None:
    E = G
    seg = jnp.zeros((B, H, Tp // c, c, 1), jnp.float32)
  else:
    r = reset.astype(jnp.float32).reshape(B, H, Tp // c, c, 1)
    E = _segmented_cumsum(la, jnp.maximum(r, first))
    seg = jnp.cumsum(r, axis=3)
  shape = lambda x: x.reshape(B, H, Tp, x.shape[-1])
  return shape(G), shape(E), shape(seg)


def flat(x):
  """[B, H, ...] → [B·H, ...]."""
  return x.reshape((x.shape[0] * x.shape[1],) + x.shape[2:])
