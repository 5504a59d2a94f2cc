"""The trainer's train and eval steps compiled ahead of time for a TPU topology (see the
package docstring)."""

from __future__ import annotations

import math
import re
import time
from typing import Any

from miras_jax.aot.chips import chip_for, peak_flops
from miras_jax.aot.report import AotReport, StepCost

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
  from miras_jax.layers import sequence_parallel  # pylint: disable=import-outside-toplevel
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
  sequence_parallel.check_model(model.cfg, mesh.shape['sequence'], int(t.seq_len))
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
