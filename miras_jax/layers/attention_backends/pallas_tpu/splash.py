"""Backend 'pallas_tpu_splash': ``jax.experimental.pallas.ops.tpu.splash_attention``.

CausalMask or LocalMask, native GQA, segment ids; vmapped over the batch. Off TPU it runs with
the kernel's own ``interpret=True`` flag.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from miras_jax.layers.attention_backends.pallas_tpu.interpret import resolve_interpret
from miras_jax.layers.attention_backends.pallas_tpu.padding import pad_for_pallas, pick_block


@functools.lru_cache(maxsize=64)
def splash_kernel(
  seq_len: int, num_heads: int, window_size: int | None, block: int, interpret: bool
):
  """Build (once per shape) the splash kernel: the mask is preprocessed on the host."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  if window_size is None:
    head_mask = sa.CausalMask((seq_len, seq_len))
  else:  # s in t-(w-1) .. t
    head_mask = sa.LocalMask((seq_len, seq_len), window_size=(window_size - 1, 0), offset=0)
  mask = sa.MultiHeadMask([head_mask] * num_heads)
  block_sizes = sa.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    use_fused_bwd_kernel=True,
  )
  # The kernel holds the preprocessed mask as arrays; keep them concrete even when it is first
  # built inside a jit trace, since the kernel is cached across traces.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mha(
      mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def attention_pallas_splash(q, k, v, segment_ids=None, window_size=None, interpret=None):
  """Pallas TPU splash attention (sparse-mask flash attention; causal or local, GQA native)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  h, d = q.shape[2], q.shape[3]
  q, k, v, segment_ids, t = pad_for_pallas(q, k, v, segment_ids)
  interpret = resolve_interpret(interpret)
  # Off TPU: Pallas' generic (HLO) interpreter, via the kernel's own `interpret` flag. The
  # TPU interpret mode (`force_tpu_interpret_mode`) fails here because the batch vmap adds a
  # grid axis that the kernel's dimension_semantics do not cover (jax 0.10.2).
  kernel = splash_kernel(q.shape[1], h, window_size, pick_block(q.shape[1]), bool(interpret))
  q = q * jnp.asarray(d**-0.5, q.dtype)  # splash has no softmax scale argument
  to_htd = lambda x: jnp.swapaxes(x, 1, 2)  # per batch row: [H, T, D]

  def one_row(q_r, k_r, v_r, seg_r):
    seg = None if seg_r is None else sa.SegmentIds(q=seg_r, kv=seg_r)
    return kernel(q_r, k_r, v_r, segment_ids=seg)

  seg = None if segment_ids is None else segment_ids.astype(jnp.int32)
  out = jax.vmap(one_row)(to_htd(q), to_htd(k), to_htd(v), seg)
  return jnp.swapaxes(out, 1, 2)[:, :t]
