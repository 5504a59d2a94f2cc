"""What a compiled step costs per device, and the report ``python -m miras_jax.aot`` prints."""

from __future__ import annotations

import dataclasses
from typing import Any

from miras_jax.aot.chips import GiB


@dataclasses.dataclass
class StepCost:
  """One compiled program, per device (bytes, FLOPs); ``error`` when the compiler refused it."""

  state_bytes: int  # parameters + optimiser state (or parameters only, for eval)
  other_arg_bytes: int  # the batch
  output_bytes: int  # outputs not aliased to donated inputs
  temp_bytes: int
  code_bytes: int
  total_bytes: int
  xla_flops: float | None  # XLA's count for one device (loop bodies once)
  matmul_flops: float  # all devices, loops in full (`matmul_flops`)
  uncounted_kernels: int  # Pallas kernels without a cost estimate (not in matmul_flops)
  compile_s: float
  error: str = ''


@dataclasses.dataclass
class AotReport:
  topology: str
  chip: str
  device_kind: str
  num_devices: int
  devices_per_chip: int
  mesh: dict[str, int]
  model: str
  num_params: int
  batch_size: int
  seq_len: int
  grad_accum_steps: int
  compute_dtype: str
  hbm_bytes_per_device: int
  peak_flops_per_device: float
  params_bytes: int
  opt_bytes: int
  replicated_fraction: float
  model_flops_per_step: float
  model_flops_source: str
  train: StepCost
  eval: StepCost | None

  @property
  def fits(self) -> bool:
    steps = [self.train] + ([self.eval] if self.eval else [])
    return all(not s.error and s.total_bytes <= self.hbm_bytes_per_device for s in steps)

  @property
  def peak_bytes(self) -> int:
    return max(s.total_bytes for s in (self.train, self.eval) if s is not None)

  @property
  def headroom_bytes(self) -> int:
    return self.hbm_bytes_per_device - self.peak_bytes

  @property
  def mfu_bound(self) -> float | None:
    """Model FLOPs / compiled FLOPs: the MFU at 100% hardware utilisation (remat, the
    memories' inner updates and XLA's extra work all lower it)."""
    if not self.train.matmul_flops:
      return None
    return self.model_flops_per_step / self.train.matmul_flops

  def to_json(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(
      fits=self.fits,
      peak_bytes=self.peak_bytes,
      headroom_bytes=self.headroom_bytes,
      mfu_bound=self.mfu_bound,
    )
    return out


def _gib(n: float) -> str:
  return f'{n / GiB:.2f} GiB'


def format_report(r: AotReport) -> str:
  per = 'chip' if r.devices_per_chip == 1 else f'device (1/{r.devices_per_chip} chip)'
  lines = [
    f'target: {r.topology}: {r.num_devices} x {r.device_kind} ({r.chip}, '
    f'{_gib(r.hbm_bytes_per_device)} HBM and {r.peak_flops_per_device / 1e12:.0f} TFLOP/s bf16 per {per})',
    f'mesh {r.mesh}; model {r.model}: {r.num_params:,} parameters; batch {r.batch_size} x '
    f'{r.seq_len} tokens ({r.grad_accum_steps} micro-batch(es)); compute {r.compute_dtype}; '
    f'{r.replicated_fraction:.1%} of parameter bytes replicated over the model axes',
  ]
  for name, s in (('train step', r.train), ('eval step', r.eval)):
    if s is None:
      continue
    if s.error:
      lines.append(
        f'{name}: the TPU compiler ran out of HBM (needs about {_gib(s.total_bytes)} per {per}): '
        f'{s.error[:240]}'
      )
      continue
    lines.append(
      f'{name} per {per}: params+optimizer {_gib(s.state_bytes)} | batch {_gib(s.other_arg_bytes)} | '
      f'outputs {_gib(s.output_bytes)} | temporaries {_gib(s.temp_bytes)} | code '
      f'{_gib(s.code_bytes)} | total {_gib(s.total_bytes)} (compiled in {s.compile_s:.0f}s)'
    )
  if r.train.matmul_flops:
    step_s = r.train.matmul_flops / (r.peak_flops_per_device * r.num_devices)
    xla = f'{r.train.xla_flops:.3g}' if r.train.xla_flops is not None else '-'
    lines.append(
      f'FLOPs per step: {r.train.matmul_flops:.3g} matmul FLOPs traced (all {r.num_devices} '
      f'devices, with recomputation); model FLOPs {r.model_flops_per_step:.3g} '
      f'({r.model_flops_source}); MFU bound {r.mfu_bound:.0%}; at peak a step takes '
      f'>= {step_s:.3g}s (XLA cost analysis: {xla} per device, loop bodies counted once)'
      + (
        f'; {r.train.uncounted_kernels} Pallas kernels have no cost estimate and count 0, so '
        'the traced FLOPs are low and the bound high'
        if r.train.uncounted_kernels
        else ''
      )
    )
  if r.fits:
    lines.append(
      f'FITS: peak {_gib(r.peak_bytes)} of {_gib(r.hbm_bytes_per_device)} per {per} '
      f'(headroom {_gib(r.headroom_bytes)}, {r.headroom_bytes / r.hbm_bytes_per_device:.0%})'
    )
  else:
    lines.append(
      f'DOES NOT FIT: needs {_gib(r.peak_bytes)} of {_gib(r.hbm_bytes_per_device)} per {per} '
      f'(over by {_gib(-r.headroom_bytes)})'
      if r.headroom_bytes < 0
      else f'DOES NOT FIT: the TPU compiler refused the program for lack of HBM per {per}'
    )
  return '\n'.join(lines)
