"""The linear matrix memory on TPU: the chunk of chunk.py driven by chunkwise_tpu (state in VMEM
across the chunks of a sequence, custom VJP with segment-start residuals)."""

from __future__ import annotations

import functools

from pallas_kernels.chunkwise_tpu import chunkwise
from pallas_kernels.linear_memory.chunk import linear_chunk


@functools.lru_cache(maxsize=None)
def _chunk_fn(channel, resets, dtype):
  return functools.partial(linear_chunk, channel=channel, resets=resets, dtype=dtype)


def linear_memory_tpu(q, k, vh, G, E, seg, h0, w0, *, c, R, channel, resets, interpret):
  """Flattened inputs [N, Tp, ·] (Tp a multiple of c·R), h0 / w0 [N, dk, dv] f32
  → (y [N, Tp, dv], final state [N, dk, dv] f32)."""
  fn = _chunk_fn(bool(channel), bool(resets), q.dtype)
  return chunkwise(fn, c, R, 5, interpret, (q, k, vh, G, E, seg), h0, w0)
