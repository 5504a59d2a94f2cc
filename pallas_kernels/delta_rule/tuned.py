"""Block sizes per chip generation for the delta rule: (chunk c, chunks per segment R).

The chunk bounds the c×c triangular inverse (⌈log₂ c⌉ levels of c×c matmuls). NOT YET
MEASURED on hardware: starting points from the public kernels (fla chunk_gated_delta_rule and the
Levanter GDN Pallas kernel use 64-token chunks) for scripts/bench_kernels.py to replace.
"""

from __future__ import annotations

from pallas_kernels import platform

TABLE = {
  'tpu v5 lite': (64, 4),
  'tpu v5': (64, 4),
  'tpu v6 lite': (64, 4),
  'gpu': (64, 4),
  'cpu': (16, 2),  # interpret mode (tests): small chunks, several per test sequence
}


def block_sizes(lowering: str, interpret: bool) -> tuple[int, int]:
  """(chunk, chunks per segment) for a call (platform.resolve's lowering / interpret)."""
  key = platform.table_key(TABLE, lowering, interpret)
  return TABLE[key]
