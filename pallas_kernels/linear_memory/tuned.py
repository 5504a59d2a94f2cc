"""Block sizes per chip generation: (chunk c, chunks per segment R).

c: tokens per chunk (the MXU tile of the intra-chunk matmuls; for channel decay the
[c, c, dk] decay tensor bounds it). R: chunks per grid step / per saved state (the backward keeps
R states in VMEM; memory of the residuals is T/(c·R) states per head).
NOT YET MEASURED on hardware: these are starting points from the public kernels' choices
(fla chunk_gla: 64-token chunks with 16-token sub-chunks; fla chunk_simple_gla: 64) for the
GPU session's scripts/bench_kernels.py sweep to replace.
"""

from __future__ import annotations

from pallas_kernels import platform

# (scalar-decay chunk, channel-decay chunk, chunks per segment)
TABLE = {
  'tpu v5 lite': (128, 16, 4),  # v5e
  'tpu v5': (128, 16, 4),  # v5p
  'tpu v6 lite': (128, 16, 4),  # v6e
  'gpu': (64, 16, 4),
  'cpu': (16, 8, 2),  # interpret mode (tests): small chunks, several per test sequence
}


def block_sizes(channel: bool, lowering: str, interpret: bool) -> tuple[int, int]:
  """(chunk, chunks per segment) for a call (platform.resolve's lowering / interpret)."""
  key = platform.table_key(TABLE, lowering, interpret)
  scalar_c, channel_c, R = TABLE[key]
  return (channel_c if channel else scalar_c), R
