"""The delta rule on GPU (Pallas Triton lowering): the chunk of chunk.py driven by chunkwise_gpu.
NOT YET RUN ON A GPU (interpret mode only; see chunkwise_gpu.py)."""

from __future__ import annotations

import functools

from pallas_kernels.chunk_math import Operands
from pallas_kernels.chunkwise_gpu import chunkwise_gpu
from pallas_kernels.delta_rule.chunk import delta_chunk


@functools.lru_cache(maxsize=None)
def _chunk_fn(resets, dtype):
  # Triton has no f32 × bf16 dot: the backward's products run in the input dtype (chunk_math).
  return functools.partial(delta_chunk, resets=resets, dtype=Operands(dtype, dtype))


def delta_rule_gpu(q, k, v, beta, G, E, seg, h0, w0, *, c, R, resets, interpret):
  """As delta_rule_tpu; R is ignored (the GPU driver saves every chunk-start state)."""
  del R
  fn = _chunk_fn(bool(resets), q.dtype)
  return chunkwise_gpu(fn, c, 6, interpret, (q, k, v, beta, G, E, seg), h0, w0)
