"""Chunks per segment R for the deep-memory kernel, per chip (the chunk size is the rule's
semantic chunk, the model's ``chunk_size``, not a tuning knob here).

R: chunks per grid step / per saved residual (the residuals are T/(c·R) copies of the state per
head; the forward keeps only the running state in VMEM; the backward kernel holds R chunk-start
state tuples in VMEM, so R bounds its scratch: R · the state size).
NOT YET MEASURED on hardware: starting points for scripts/bench_kernels.py's sweep.
"""

from __future__ import annotations

from pallas_kernels import platform

TABLE = {
  'tpu v5 lite': 4,  # v5e
  'tpu v5': 4,  # v5p
  'tpu v6 lite': 4,  # v6e
  'gpu': 1,
  'cpu': 2,  # interpret mode (tests): several segments per test sequence
}


def seg_chunks(lowering: str, interpret: bool) -> int:
  return TABLE[platform.table_key(TABLE, lowering, interpret)]
