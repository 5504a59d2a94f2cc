"""Backend 'cudnn': ``jax.nn.dot_product_attention``; cuDNN flash attention on GPU (needs
bf16/fp16 inputs), its XLA path elsewhere."""

from __future__ import annotations

import jax


def _implementation() -> str | None:
  return 'cudnn' if jax.default_backend() == 'gpu' else None


def attention_cudnn(q, k, v, segment_ids=None, window_size=None):
  """Causal attention (package docstring). Segment ids become a dense ``[B, 1, T, T]`` boolean
  mask (cuDNN adds it as a bias)."""
  mask = None
  if segment_ids is not None:
    mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # [B, 1, T, T]
  # jax.nn's (left, right) window: s in t-left .. t+right; with is_causal cuDNN uses left+1.
  local = None if window_size is None else (window_size - 1, 0)
  return jax.nn.dot_product_attention(
    q, k, v, mask=mask, is_causal=True, local_window_size=local, implementation=_implementation()
  )


def masked_attention_cudnn(q, k, v, mask):
  """Attention with an explicit boolean ``mask [B, T, S]``; every row must have a True."""
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=_implementation())
