"""The linear matrix memory on GPU (Pallas Triton lowering): the chunk of chunk.py driven by
chunkwise_gpu. NOT YET RUN ON A GPU (interpret mode only; see chunkwise_gpu.py)."""

from __future__ import annotations

import functools

from pallas_kernels.chunk_math import Operands
from pallas_kernels.chunkwise_gpu import chunkwise_gpu
from pallas_kernels.linear_memory.chunk import linear_chunk


@functools.lru_cache(maxsize=None)
def _chunk_fn(channel, resets, dtype):
  # Triton has no value slicing (the channel scores take their rows by a masked sum) and no
  # f32 × bf16 dot (chunk_math.Operands).
  ops = Operands(dtype, dtype)
  return functools.partial(linear_chunk, channel=channel, resets=resets, dtype=ops, slicing=False)


def linear_memory_gpu(q, k, vh, G, E, seg, h0, w0, *, c, R, channel, resets, interpret):
  """As linear_memory_tpu; R is ignored (the GPU driver saves every chunk-start state)."""
  del R
  fn = _chunk_fn(bool(channel), bool(resets), q.dtype)
  return chunkwise_gpu(fn, c, 5, interpret, (q, k, vh, G, E, seg), h0, w0)
