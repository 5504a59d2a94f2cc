"""Causal self-attention cores, one module per backend, one dispatcher (`causal_attention`).

All take ``q [B, T, H, D]``, ``k, v [B, T, Hkv, D]`` (``Hkv`` divides ``H``; query head ``h``
reads kv head ``h // (H // Hkv)``, the grouping of GQA, Ainslie et al. 2023, and of
``jax.nn.dot_product_attention`` and splash attention), already rotated by RoPE, and return
``[B, T, H, D]`` in ``q.dtype``. Scores are scaled by ``1 / sqrt(D)``. Every backend computes the
same mask (`masks.attention_mask`): token ``t`` sees token ``s`` iff

    s <= t                                  (causal)
    and t - s < window_size                 (sliding window, if set: s in t-w+1 .. t)
    and segment_ids[t] == segment_ids[s]    (packed documents, if given)

Backends (``backend=``), one module each:
  ``'xla'``               `reference`: einsum + float32 softmax; the reference the others are
                          tested against.
  ``'cudnn'``             `cudnn`: ``jax.nn.dot_product_attention``, ``implementation='cudnn'``
                          on GPU (needs bf16/fp16 inputs), ``None`` (its XLA path) elsewhere.
  ``'pallas_tpu_flash'``  `pallas_tpu.flash`: the Pallas TPU flash-attention kernel.
  ``'pallas_tpu_splash'`` `pallas_tpu.splash`: the Pallas TPU splash-attention kernel.

Also here: `mesh` (the Pallas kernels per device under ``shard_map`` on a multi-device mesh),
`prefix` (Titans' persistent tokens as extra key slots) and `dense` (attention with an explicit
mask on the dense-mask backends, used by the prefix path and Titans MAC, models/mac.py).
"""

from miras_jax.layers.attention_backends.dense import dense_masked_attention
from miras_jax.layers.attention_backends.dispatch import BACKENDS, causal_attention
from miras_jax.layers.attention_backends.masks import MASK_VALUE, attention_mask
from miras_jax.layers.attention_backends.pallas_tpu.interpret import compile_pallas_for_tpu
from miras_jax.layers.attention_backends.prefix import prefix_visibility, prepend_prefix
from miras_jax.layers.attention_backends.reference import attention_xla, masked_attention

__all__ = [
  'BACKENDS',
  'MASK_VALUE',
  'attention_mask',
  'attention_xla',
  'causal_attention',
  'compile_pallas_for_tpu',
  'dense_masked_attention',
  'masked_attention',
  'prefix_visibility',
  'prepend_prefix',
]
