"""The delta rule on TPU: the chunk of chunk.py driven by chunkwise_tpu."""

from __future__ import annotations

import functools

from pallas_kernels.chunkwise_tpu import chunkwise
from pallas_kernels.delta_rule.chunk import delta_chunk


@functools.lru_cache(maxsize=None)
def _chunk_fn(resets, dtype):
  return functools.partial(delta_chunk, resets=resets, dtype=dtype)


def delta_rule_tpu(q, k, v, beta, G, E, seg, h0, w0, *, c, R, resets, interpret):
  """Flattened inputs [N, Tp, ·], h0 / w0 [N, dk, dv] f32 → (y [N, Tp, dv], final state)."""
  fn = _chunk_fn(bool(resets), q.dtype)
  return chunkwise(fn, c, R, 6, interpret, (q, k, v, beta, G, E, seg), h0, w0)
