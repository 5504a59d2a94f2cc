"""Will this config fit on that TPU slice? Compile the trainer's step for it, on a CPU machine.

    pip install 'miras-jax[tpu]'          # libtpu: the TPU compiler (no TPU needed)
    python -m miras_jax.aot --config=configs/moneta.py:340m --topology=v5e:4x4 \\
        [--config.train.mesh.fsdp=-1 --config.train.mesh.data=1 ...] [--save=aot.json]
    python -m miras_jax.aot --config=configs/moneta.py:1.3b --topology=v5p:4x4x4 --num_slices=2 \
        --config.train.mesh.dcn_data=2 --config.train.mesh.data=1 --config.train.mesh.fsdp=-1

Builds the sharded train step (and eval step) exactly as ``python -m miras_jax.train`` does
— the model from ``train.loop.build_model``, the step from ``make_loss_fn`` /
``make_train_step`` / ``make_eval_step``, shardings from ``train.sharding`` and the mesh
from ``train.mesh`` — on abstract (shape-only) state, and compiles it ahead of time with
XLA:TPU for the chips of ``--topology`` (``jax.experimental.topologies``; JAX's AOT guide,
https://docs.jax.dev/en/latest/aot.html). Pallas kernels are compiled with Mosaic, not
interpreted. ``jax.distributed`` is never initialised. Prints, per chip: parameter and
optimiser bytes, the rest of the arguments (the batch), XLA temporaries, the total against
the chip's HBM, a ``FITS`` / ``DOES NOT FIT`` verdict with the headroom, the compiled FLOPs
of one step and the MFU bound they imply. ``--save`` writes the same numbers as JSON.
Exit status: 0 when it fits, 1 when it does not, 2 for bad input (one line).

A program that the TPU compiler itself rejects for lack of HBM is reported as
``DOES NOT FIT`` with the compiler's own figures. ``train.compute_dtype=auto`` means
bfloat16 here (the trainer's choice on TPU).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ['CHIPS', 'Chip', 'AotReport', 'compile_for_topology', 'format_report', 'main']

GiB = 2**30
PROG = 'python -m miras_jax.aot'


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


# ------------------------------------------------------------------ compile
_OOM = re.compile(r'RESOURCE_EXHAUSTED|[Rr]an out of memory|exceeds? (the )?available', re.S)
_SIZE = re.compile(r'([0-9.]+)\s*([KMGT])(?:i?B)?\b')


def _oom_required_bytes(message: str) -> int:
  """The first size the TPU compiler names in its out-of-memory message (what it needed)."""
  m = _SIZE.search(message.split('exceeds')[0]) or _SIZE.search(message)
  if not m:
    return 0
  return int(float(m.group(1)) * 1024 ** ('KMGT'.index(m.group(2)) + 1))


def _compile(jitted, args, state_bytes: int) -> StepCost:
  import jax  # pylint: disable=import-outside-toplevel

  t0 = time.perf_counter()
  traced = jitted.trace(*args)
  flops, unknown_kernels = matmul_flops(traced.jaxpr.jaxpr)
  try:
    compiled = traced.lower().compile()
  except jax.errors.JaxRuntimeError as e:
    msg = ' '.join(str(e).split())
    if not _OOM.search(msg):
      raise
    need = _oom_required_bytes(msg)
    return StepCost(
      state_bytes,
      0,
      0,
      0,
      0,
      need,
      None,
      flops,
      unknown_kernels,
      time.perf_counter() - t0,
      error=msg[:400],
    )
  ma = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  out = ma.output_size_in_bytes - ma.alias_size_in_bytes
  total = ma.argument_size_in_bytes + out + ma.temp_size_in_bytes + ma.generated_code_size_in_bytes
  return StepCost(
    state_bytes=state_bytes,
    other_arg_bytes=ma.argument_size_in_bytes - state_bytes,
    output_bytes=out,
    temp_bytes=ma.temp_size_in_bytes,
    code_bytes=ma.generated_code_size_in_bytes,
    total_bytes=total,
    xla_flops=float(cost['flops']) if cost and 'flops' in cost else None,
    matmul_flops=flops,
    uncounted_kernels=unknown_kernels,
    compile_s=time.perf_counter() - t0,
  )


def _subjaxprs(eqn):
  """(jaxpr, multiplicity) of every sub-computation an equation runs."""
  import jax.extend  # pylint: disable=import-outside-toplevel

  mult = int(eqn.params.get('length', 1)) if eqn.primitive.name == 'scan' else 1
  for v in eqn.params.values():
    for j in v if isinstance(v, (list, tuple)) else (v,):
      j = j.jaxpr if isinstance(j, jax.extend.core.ClosedJaxpr) else j
      if not isinstance(j, jax.extend.core.Jaxpr):
        continue
      if eqn.primitive.name == 'shard_map' and j.outvars:
        # The body sees one device's block: scale by global / local size of its first output.
        local = math.prod(j.outvars[0].aval.shape)
        mult = math.prod(eqn.outvars[0].aval.shape) / max(local, 1)
      yield j, mult


def matmul_flops(jaxpr) -> tuple[float, int]:
  """Matrix-multiply FLOPs (2 per multiply-add) of a traced program, loops counted in full,
  and the number of Pallas kernels whose FLOPs are unknown (counted as 0).

  XLA's compiled cost analysis counts a loop body once, so scanned layers and the memories'
  chunk scans are under-counted there; this walks the jaxpr instead: ``scan`` bodies times
  their length, ``cond`` by its most expensive branch, ``while`` bodies once (their trip
  count is not static; the train step has none). Only ``dot_general`` counts (the MXU work
  MFU is defined by); a ``pallas_call`` counts by its ``cost_estimate`` (the flash-attention
  forward has one, its backward kernels do not).
  """
  total, unknown = 0.0, 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'dot_general':
      (contract_dims, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += 2.0 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[i] for i in contract_dims)
    elif name == 'pallas_call':
      est = eqn.params.get('cost_estimate')
      if est is None:
        unknown += 1
      else:
        total += float(est.flops)
    elif name == 'cond':
      counts = [matmul_flops(br.jaxpr) for br in eqn.params['branches']]
      total += max(c[0] for c in counts)
      unknown += max(c[1] for c in counts)
    else:
      for sub, mult in _subjaxprs(eqn):
        f, u = matmul_flops(sub)
        total, unknown = total + mult * f, unknown + u
  return total, unknown


def _prebuild_splash(model_cfg, mesh, seq_len: int) -> None:
  """Build the splash-attention kernel before entering a mesh of topology-only devices.

  The kernel's mask tables are host arrays placed on a device when built; under such a mesh
  that placement fails, so they are built here (heads per device as ``attention_backends.mesh.on_mesh`` splits
  them) and the kernel cache serves the traced call.
  """
  if model_cfg.get('attention_backend') != 'pallas_tpu_splash':
    return
  from miras_jax.layers.attention_backends.pallas_tpu.padding import (  # pylint: disable=import-outside-toplevel
    PALLAS_BLOCK,
    pick_block,
  )
  from miras_jax.layers.attention_backends.pallas_tpu.splash import splash_kernel  # pylint: disable=import-outside-toplevel

  t_pad = -(-seq_len // PALLAS_BLOCK) * PALLAS_BLOCK
  heads, tensor = int(model_cfg.n_heads), mesh.shape['tensor']
  per_device = heads // tensor if heads % tensor == 0 else heads
  splash_kernel(t_pad, per_device, model_cfg.get('window'), pick_block(t_pad), False)


def compile_for_topology(
  config, topology: str, *, num_slices: int = 1, with_eval: bool = True
) -> AotReport:
  """Compile ``config``'s train (and eval) step for ``topology`` (e.g. ``'v5p:4x4x4'``),
  ``num_slices`` copies of it joined by DCN (``train.mesh.dcn_*`` lay the mesh over them)."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding  # pylint: disable=import-outside-toplevel
  from jax.sharding import PartitionSpec as P  # pylint: disable=import-outside-toplevel

  from miras_jax.data.pipeline import BATCH_KEYS  # pylint: disable=import-outside-toplevel
  from miras_jax.layers.attention_backends import compile_pallas_for_tpu  # pylint: disable=import-outside-toplevel
  from miras_jax.models.lm import count_params  # pylint: disable=import-outside-toplevel
  from miras_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.train import loop  # pylint: disable=import-outside-toplevel
  from miras_jax.train import metrics as metrics_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.train import optimizer as optimizer_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.train import sharding as sharding_lib  # pylint: disable=import-outside-toplevel

  try:
    devices = list(topologies.get_topology_desc(topology, 'tpu', num_slices=num_slices).devices)
  except Exception as e:  # pylint: disable=broad-except  # libtpu's message names the problem
    raise ValueError(f'--topology={topology}: {" ".join(str(e).split())[:300]}') from None
  chip = chip_for(devices[0].device_kind)
  devices_per_chip = len(devices) // len({tuple(d.coords) for d in devices})

  if config.train.compute_dtype == 'auto':
    config.train.compute_dtype = 'bfloat16'  # what the trainer picks on a TPU
  config_lib.validate(config, process_count=1)
  loop.prepare_model_config(config)
  t = config.train
  mesh = sharding_lib.mesh_from_config(t.mesh, devices)
  config_lib.check_mesh_batch(config, dict(mesh.shape))
  rules = sharding_lib.LOGICAL_AXIS_RULES
  model = loop.build_model(config)
  dtype = config_lib.compute_dtype(config)
  tx = optimizer_lib.make_optimizer(t)
  schedule = optimizer_lib.learning_rate_schedule(t)
  accum, batch, seq_len = int(t.grad_accum_steps), int(t.batch_size), int(t.seq_len)
  repl = sharding_lib.replicated(mesh)
  batch_shard = sharding_lib.batch_sharding(mesh)
  micro_shard = NamedSharding(mesh, P(None, sharding_lib.BATCH_AXES, None))

  # Abstract state in its shardings, as train/loop.py `train` builds it (outside the mesh:
  # unboxing under a set mesh would apply sharding constraints outside jit).
  with nn.logical_axis_rules(rules), compile_pallas_for_tpu():
    dummy = jax.ShapeDtypeStruct((batch // accum, seq_len), jnp.int32)
    boxed = jax.eval_shape(lambda k, x: model.init(k, x)['params'], jax.random.key(0), dummy)
  param_sh = sharding_lib.logical_shardings(boxed, mesh, rules)
  params = nn.meta.unbox(boxed)
  frac = sharding_lib.check_param_layout(
    params, boxed, mesh, float(t.mesh.max_replicated_fraction), rules
  )
  opt = jax.eval_shape(tx.init, params)
  opt_sh = sharding_lib.optimizer_shardings(tx, opt, param_sh, mesh)
  state_sh = loop.TrainState(step=repl, params=param_sh, opt_state=opt_sh)
  state = loop.TrainState(step=jax.ShapeDtypeStruct((), jnp.int32), params=params, opt_state=opt)
  state = jax.tree.map(
    lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), state, state_sh
  )
  params_bytes = sharding_lib.shard_bytes(params, param_sh)
  opt_bytes = sharding_lib.shard_bytes(opt, opt_sh)

  def abstract_batch(rows: int) -> dict[str, Any]:
    return {
      k: jax.ShapeDtypeStruct(
        (rows, seq_len), jnp.float32 if k == 'loss_mask' else jnp.int32, sharding=batch_shard
      )
      for k in BATCH_KEYS
    }

  num_params = count_params(params)
  flops_tok, flops_src = metrics_lib.flops_per_token(config.model, seq_len)
  _prebuild_splash(config.model, mesh, seq_len)
  cast = 'dtype' not in config.model
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules), compile_pallas_for_tpu():
    loss_fn = loop.make_loss_fn(model, dtype, cast)
    # The same jit arguments as train/loop.py `train` (state donated).
    train_step = jax.jit(
      loop.make_train_step(loss_fn, tx, schedule, accum, micro_shard),
      in_shardings=(state_sh, batch_shard),
      out_shardings=(state_sh, repl),
      donate_argnums=(0,),
    )
    train_cost = _compile(train_step, (state, abstract_batch(batch)), params_bytes + opt_bytes)
    eval_cost = None
    if with_eval:
      eval_step = jax.jit(
        loop.make_eval_step(loss_fn),
        in_shardings=(param_sh, batch_shard),
        out_shardings=(repl, repl),
      )
      eval_rows = config_lib.eval_batch_size(config)
      eval_cost = _compile(eval_step, (state.params, abstract_batch(eval_rows)), params_bytes)

  return AotReport(
    topology=topology if num_slices == 1 else f'{num_slices} x {topology}',
    chip=chip.generation,
    device_kind=devices[0].device_kind,
    num_devices=len(devices),
    devices_per_chip=devices_per_chip,
    mesh={k: int(v) for k, v in mesh.shape.items()},
    model=str(config.model.get('name', '?')),
    num_params=int(num_params),
    batch_size=batch,
    seq_len=seq_len,
    grad_accum_steps=accum,
    compute_dtype=jnp.dtype(dtype).name,
    hbm_bytes_per_device=chip.hbm_bytes // devices_per_chip,
    peak_flops_per_device=peak_flops(devices[0]) / devices_per_chip,
    params_bytes=params_bytes,
    opt_bytes=opt_bytes,
    replicated_fraction=frac,
    model_flops_per_step=flops_tok * batch * seq_len,
    model_flops_source=flops_src,
    train=train_cost,
    eval=eval_cost,
  )


# ------------------------------------------------------------------- report
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


# --------------------------------------------------------------------- CLI
def _fail(message: object) -> int:
  print(f'{PROG}: error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  return 2


def main(argv: list[str] | None = None) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  fv = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file(
    'config', None, 'configs/<file>.py[:<arg>]', flag_values=fv, lock_config=True
  )
  topology = flags.DEFINE_string(
    'topology', None, 'TPU topology, e.g. v5e:4x4, v5p:4x4x4', flag_values=fv
  )
  save = flags.DEFINE_string('save', None, 'write the report as JSON here', flag_values=fv)
  num_slices = flags.DEFINE_integer(
    'num_slices', 1, 'multi-slice: this many copies of --topology over DCN', flag_values=fv
  )
  with_eval = flags.DEFINE_bool('eval', True, 'also compile the eval step', flag_values=fv)
  argv = list(sys.argv if argv is None else [PROG, *argv])
  try:
    fv(argv)
    config = config_flag.value
  except flags.Error as e:
    return _fail(e)
  except (AttributeError, KeyError, OSError, ImportError, ValueError, TypeError, SyntaxError) as e:
    return _fail(f'cannot load config: {e}')
  if config is None:
    return _fail('--config is required (e.g. --config=configs/moneta.py:340m)')
  if not topology.value:
    return _fail('--topology is required (e.g. --topology=v5p:4x4x4)')
  if importlib.util.find_spec('libtpu') is None:
    return _fail(
      "libtpu is not installed (pip install 'miras-jax[tpu]'); it holds the TPU compiler"
    )

  # The host's own devices are never used: no TPU is claimed even on a TPU VM, and libtpu
  # (loaded here only as a compiler) skips its one-process-per-host lock file, so several
  # compiles (and a training run) can share a machine.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  import logging  # pylint: disable=import-outside-toplevel

  logging.getLogger('miras_jax').setLevel(logging.WARNING)
  from miras_jax.train.config import ConfigError  # pylint: disable=import-outside-toplevel
  from miras_jax.train.sharding import MeshError  # pylint: disable=import-outside-toplevel

  try:
    report = compile_for_topology(
      config, topology.value, num_slices=num_slices.value, with_eval=with_eval.value
    )
  except (ConfigError, MeshError, ValueError) as e:
    return _fail(e)
  print(format_report(report), flush=True)
  if save.value:
    path = Path(save.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1, sort_keys=True) + '\n')
    print(f'wrote {path}', flush=True)
  return 0 if report.fits else 1


if __name__ == '__main__':
  sys.exit(main())
