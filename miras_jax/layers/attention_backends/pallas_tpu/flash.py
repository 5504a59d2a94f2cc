"""Backend 'pallas_tpu_flash': ``jax.experimental.pallas.ops.tpu.flash_attention``.

No sliding window (the kernel has no local mask; raises NotImplementedError). KV heads are
repeated to ``H`` (the kernel has no GQA). Off TPU it runs under
``pltpu.force_tpu_interpret_mode()`` (`interpret.in_tpu_interpret_mode`).
"""

from __future__ import annotations

import jax.numpy as jnp

from miras_jax.layers.attention_backends.pallas_tpu.interpret import in_tpu_interpret_mode
from miras_jax.layers.attention_backends.pallas_tpu.padding import pad_for_pallas, pick_block


def attention_pallas_flash(q, k, v, segment_ids=None, window_size=None, interpret=None):
  """Pallas TPU flash attention (``flash_attention(q, k, v, segment_ids=..., causal=True)``)."""
  if window_size is not None:
    raise NotImplementedError(
      "backend 'pallas_tpu_flash' has no sliding window (the kernel supports only causal / "
      "segment masks); use 'pallas_tpu_splash' for sliding-window attention."
    )
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  h, d = q.shape[2], q.shape[3]
  groups = h // k.shape[2]
  if groups > 1:  # the kernel has one kv head per query head
    k = jnp.repeat(k, groups, axis=2)
    v = jnp.repeat(v, groups, axis=2)
  q, k, v, segment_ids, t = pad_for_pallas(q, k, v, segment_ids)
  block = pick_block(q.shape[1])
  block_sizes = fa.BlockSizes(
    block_q=block,
    block_k_major=block,
    block_k=block,
    block_b=1,
    block_q_major_dkv=block,
    block_k_major_dkv=block,
    block_k_dkv=block,
    block_q_dkv=block,
    block_k_major_dq=block,
    block_k_dq=block,
    block_q_dq=block,
  )

  def flash(q, k, v, segment_ids):  # [B, H, T, D] layout
    seg = None if segment_ids is None else fa.SegmentIds(q=segment_ids, kv=segment_ids)
    return fa.flash_attention(
      q, k, v, segment_ids=seg, causal=True, sm_scale=d**-0.5, block_sizes=block_sizes
    )

  if segment_ids is not None:
    segment_ids = segment_ids.astype(jnp.int32)
  to_bhtd = lambda x: jnp.swapaxes(x, 1, 2)
  out = in_tpu_interpret_mode(flash, interpret)(to_bhtd(q), to_bhtd(k), to_bhtd(v), segment_ids)
  return jnp.swapaxes(out, 1, 2)[:, :t]
