"""Backend 'xla': einsum attention with float32 logits and softmax, the reference the other
backends are tested against."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.layers.attention_backends.masks import MASK_VALUE, attention_mask


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention with an explicit mask, float32 logits and softmax.

  Args:
      q: ``[B, T, H, D]``.
      k, v: ``[B, S, Hkv, D]``.
      mask: boolean ``[B, T, S]`` (shared by all heads); every row must have a True.

  Returns:
      ``[B, T, H, D]`` in ``q.dtype``.
  """
  b, t, h, d = q.shape
  hkv = k.shape[2]
  qg = q.reshape(b, t, hkv, h // hkv, d)  # head h = kv_head * G + g
  logits = jnp.einsum('btkgd,bskd->bkgts', qg, k, preferred_element_type=jnp.float32)
  logits = logits * (d**-0.5)
  logits = jnp.where(mask[:, None, None], logits, MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum(
    'bkgts,bskd->btkgd', probs.astype(v.dtype), v, preferred_element_type=jnp.float32
  )
  return out.reshape(b, t, h, d).astype(q.dtype)


def attention_xla(q, k, v, segment_ids=None, window_size=None):
  """Reference causal attention (see the package docstring for shapes and mask)."""
  b, t = q.shape[:2]
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  mask = attention_mask(pos, pos, window_size, segment_ids, segment_ids)
  return masked_attention(q, k, v, mask)
