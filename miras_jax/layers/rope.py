"""Rotary position embeddings (RoPE).

Su et al., "RoFormer: Enhanced Transformer with Rotary Position Embedding" (2021), in the
"half-rotation" layout used by GPT-NeoX and Llama (Hugging Face ``rotate_half``): the head
dimension is split into two halves ``[x1, x2]`` and pair ``(x1[i], x2[i])`` is rotated by angle
``position * theta ** (-2i / D)``. Because a rotation by ``a`` followed by the inverse rotation by
``b`` is a rotation by ``a - b``, ``<rope(q, m), rope(k, n)>`` depends only on ``m - n``; the tests
check exactly this.

Positions are explicit integers ``[B, T]`` so that decoding with an offset (KV cache) and packed
rows (positions restarting per document) need no special case.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rope_inverse_frequencies(head_dim: int, theta: float = 10_000.0) -> jax.Array:
  """``theta ** (-2i / D)`` for ``i = 0 .. D/2 - 1``; float32 ``[head_dim // 2]``."""
  if head_dim % 2:
    raise ValueError(f'RoPE needs an even head_dim, got {head_dim}')
  exponents = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  return 1.0 / (theta**exponents)


def rope_angles(positions: jax.Array, head_dim: int, theta: float = 10_000.0):
  """Cos and sin tables for integer positions.

  Args:
      positions: integer ``[B, T]`` (any leading shape works).
      head_dim: D, even.
      theta: the RoPE base.

  Returns:
      ``(cos, sin)``, each float32 ``[B, T, D // 2]``.
  """
  # Angles in float32: position * inv_freq. (For very long contexts a float64 table would be
  # more exact; at 4K-32K tokens float32 is what Llama-style implementations use.)
  angles = positions.astype(jnp.float32)[..., None] * rope_inverse_frequencies(head_dim, theta)
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float = 10_000.0) -> jax.Array:
  """Rotate ``x`` by its positions (half-rotation layout).

  Args:
      x: ``[B, T, H, D]`` queries or keys, D even.
      positions: integer ``[B, T]``, the absolute position of each token.
      theta: the RoPE base (10 000 in Llama 2; 500 000 in Llama 3).

  Returns:
      ``[B, T, H, D]`` in ``x.dtype`` (computed in float32).
  """
  head_dim = x.shape[-1]
  cos, sin = rope_angles(positions, head_dim, theta)
  cos, sin = cos[..., None, :], sin[..., None, :]  # broadcast over heads: [B, T, 1, D/2]
  x32 = x.astype(jnp.float32)
  x1, x2 = jnp.split(x32, 2, axis=-1)
  # [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin]  (== x * cos + rotate_half(x) * sin)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)
