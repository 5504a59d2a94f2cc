"""Attention with an explicit mask on the dense-mask backends (the persistent prefix, Titans MAC)."""

from __future__ import annotations

from miras_jax.layers.attention_backends.cudnn import masked_attention_cudnn
from miras_jax.layers.attention_backends.reference import masked_attention


def dense_masked_attention(q, k, v, mask, backend='xla'):
  """Attention with an explicit boolean ``mask [B, T, S]`` (``q [B, T, H, D]``, ``k, v
  [B, S, Hkv, D]``) on a dense-mask backend: 'xla' (`masked_attention`) or 'cudnn'
  (``jax.nn.dot_product_attention``, cuDNN on GPU). Every row must have a True."""
  if backend == 'xla':
    return masked_attention(q, k, v, mask)
  if backend != 'cudnn':
    raise NotImplementedError(
      f'an explicit attention mask needs backend xla or cudnn, not {backend!r}'
    )
  return masked_attention_cudnn(q, k, v, mask)
