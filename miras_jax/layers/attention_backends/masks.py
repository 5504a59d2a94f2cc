"""The attention mask every backend computes (causal, sliding window, packed segments)."""

from __future__ import annotations

import jax
import numpy as np

# Large finite negative, as in the Pallas TPU kernels: exp() underflows to exactly 0 and, unlike
# -inf, it never produces NaN through (-inf) - (-inf).
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def attention_mask(
  q_pos: jax.Array,
  kv_pos: jax.Array,
  window_size: int | None = None,
  q_segment_ids: jax.Array | None = None,
  kv_segment_ids: jax.Array | None = None,
) -> jax.Array:
  """Boolean ``[B, T, S]`` (True = attend) for positions ``q_pos [B, T]``, ``kv_pos [B, S]``.

  Positions here are slot indices within a row (not RoPE positions, which may restart per
  document): causal is ``kv_pos <= q_pos``, the window is ``q_pos - kv_pos < window_size``.
  """
  diff = q_pos[:, :, None] - kv_pos[:, None, :]
  mask = diff >= 0
  if window_size is not None:
    mask = mask & (diff < window_size)
  if q_segment_ids is not None:
    mask = mask & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
  return mask
