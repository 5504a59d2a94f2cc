"""TPU generations: HBM per chip, and the peak FLOP/s from miras_jax.train.metrics."""

from __future__ import annotations

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  generation: str
  device_kind: str  # jax Device.device_kind of the generation's TensorCore
  hbm_bytes: int  # per chip
  source: str  # where the figures come from


# HBM per chip (Cloud TPU system-architecture pages, read 2026-12). The peak bf16 FLOP/s per
# chip has one home, miras_jax.train.metrics.PEAK_FLOPS (the same pages): v4 275, v5e 197,
# v5p 459, v6e 918 TFLOP/s; see `Chip.peak_flops`.
CHIPS: tuple[Chip, ...] = (
  Chip('v4', 'TPU v4', 32 * GiB, 'https://cloud.google.com/tpu/docs/v4'),
  Chip('v5e', 'TPU v5 lite', 16 * GiB, 'https://cloud.google.com/tpu/docs/v5e'),
  Chip('v5p', 'TPU v5', 95 * GiB, 'https://cloud.google.com/tpu/docs/v5p'),
  Chip('v6e', 'TPU v6 lite', 32 * GiB, 'https://cloud.google.com/tpu/docs/v6e'),
)


def chip_for(device_kind: str) -> Chip:
  for chip in CHIPS:
    if chip.device_kind.lower() == device_kind.lower():
      return chip
  raise ValueError(f'no HBM figure for TPU device kind {device_kind!r} (add it to aot.CHIPS)')


def peak_flops(device) -> float:
  from miras_jax.train.metrics import device_peak_flops  # pylint: disable=import-outside-toplevel

  peak = device_peak_flops(device)
  if peak is None:
    raise ValueError(f'no peak FLOP/s for {device.device_kind!r} in train.metrics.PEAK_FLOPS')
  return peak
