"""The training loop: state, sharded jitted step, evaluation, checkpoints, metrics.

``train(config, workdir)`` runs (or resumes) one run directory:

1. checks that touch no file: every config value (``config.validate``), the
   mesh ``(data, fsdp, sequence, tensor)`` from ``train.mesh`` (a mismatch with the device
   count fails here), the model from ``miras_jax.models.build_model(config.model)``
   and its abstract init (so e.g. an unknown ``model.rule`` fails here);
2. the run directory (train/run_directory.py): refused when it is a file or not
   writable, created, and locked for the whole run (``train/lock.py``; process 0
   takes the lock and broadcasts a refusal, so on several hosts every process
   stops at once with the same line); a directory created by a command that then
   fails before training is removed again when empty;
3. a resume check: the config stored with the newest checkpoint must agree on
   the model and the optimiser's structure (``config.resume_mismatch``), else a
   one-line refusal that changes nothing;
4. the dataset resolved / prepared from ``config.data``, and for a fresh run its data pipelines
   built, so that their one-line errors (a tokenizer the copy task cannot use, fewer records
   than data shards) come before anything is written, not at the first batch; a tokenizer
   larger than the model's vocabulary is refused before any preparing, and what a refused
   command prepared into ``<workdir>/data`` is removed again;
5. the train state (step, float32 params, AdamW state) created directly in its
   shardings (``jax.jit(init, out_shardings=...)``), or restored from the
   newest readable checkpoint together with the data position of every data
   shard (train/data.py: exact on another process count whose count divides or
   is divided by the shards'; a readable checkpoint of another structure or
   shard layout is refused, never moved aside); only now is
   ``<workdir>/config.json`` written;
6. ``steps`` iterations of a ``jax.jit`` step with explicit in/out shardings
   and the state donated: ``grad_accum_steps`` micro-batches under
   ``lax.scan``, loss = masked token mean over the whole batch, AdamW update;
7. metrics every ``log_every_steps``, validation every ``eval.every_steps`` and
   at the end, checkpoints every ``checkpoint.every_steps``, at the end and on
   SIGTERM; finally the loss-curve PNG. An evaluation that fails is logged and
   the run goes on to its checkpoint.

Divergence: :class:`DivergenceMonitor` checks every step's loss and gradient
norm (at each logged step and before each save, so dispatch stays
asynchronous) and stops the run with :class:`DivergenceError`, naming the
first non-finite (or, with ``train.loss_spike_factor``, spiking) step. A save
happens only when every step up to it passed and the parameters are finite, so
no non-finite state is ever written and the retention policy (which only
drops steps when a newer one is saved) never deletes the last finite
checkpoint. Not caught: a finite update that is already wrong (e.g. a huge
learning rate whose first step still has a finite loss) is saved if a save
falls on it; ``checkpoint.keep_last`` > 1 keeps the step before.

Mixed precision and the memories' logged inner losses: train/steps.py.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from miras_jax import workdir as workdir_lib
from miras_jax.evals.run_data import dataset_record
from miras_jax.layers import sequence_parallel
from miras_jax.models.config import LMConfig
from miras_jax.models.lm import count_params
from miras_jax.train import checkpoint as ckpt_lib
from miras_jax.train import config as config_lib
from miras_jax.train import data as data_lib
from miras_jax.train import metrics as metrics_lib
from miras_jax.train import optimizer as optimizer_lib
from miras_jax.train import sharding as sharding_lib
from miras_jax.train.divergence import DivergenceError, DivergenceMonitor
from miras_jax.train.evaluator import Evaluator
from miras_jax.train.metrics import print0
from miras_jax.train.run_directory import RunDirectory, check_resume_config
from miras_jax.train.step_timer import StepTimer
from miras_jax.train.steps import (  # noqa: F401 (re-exported: aot, tests)
  TrainState,
  all_finite,
  global_batch,
  make_eval_step,
  make_loss_fn,
  make_train_step,
)
from miras_jax.train.wandb_logger import init_wandb

__all__ = [
  'TrainState',
  'TrainResult',
  'DivergenceError',
  'DivergenceMonitor',
  'build_model',
  'prepare_model_config',
  'train',
]

log = logging.getLogger(__name__)

# Testing hook: seconds to sleep after every step, so tests can signal / kill a run mid-way.
_STEP_DELAY_ENV = 'MIRAS_TRAIN_STEP_DELAY_S'


@dataclasses.dataclass
class TrainResult:
  step: int
  preempted: bool
  val_loss: float | None
  history: list[dict[str, Any]]


# ---------------------------------------------------------------- the model
def prepare_model_config(config: ConfigDict) -> None:
  """Push trainer-level settings (compute dtype, remat policy) into ``config.model`` in place."""
  dtype = config_lib.compute_dtype(config)
  model = config.model
  if 'dtype' in model:
    model.dtype = jnp.dtype(dtype).name
  if config.train.remat:
    model.remat = config.train.remat


def model_config(config: ConfigDict) -> LMConfig:
  """``config.model`` as the model's `LMConfig`: the one conversion, where it enters the
  trainer (after `prepare_model_config`)."""
  try:
    return LMConfig.from_config(config.model)
  except ValueError as e:  # bad model keys or values
    raise config_lib.ConfigError(f'config.model: {e}') from None


def build_model(config: ConfigDict) -> nn.Module:
  from miras_jax.models import build_model as build  # pylint: disable=import-outside-toplevel

  try:
    return build(model_config(config))
  except ValueError as e:  # unknown model name
    raise config_lib.ConfigError(f'config.model: {e}') from None


# --------------------------------------------------------------------- train
@dataclasses.dataclass
class _Plan:
  """Everything the file-free checks produced: the model, its jitted steps, shapes, shardings."""

  config: ConfigDict
  config_dict: dict[str, Any]
  mesh: Any
  rules: Any
  init_state: Any  # rng -> TrainState, jitted into state_shardings
  abstract_state: Any
  state_shardings: Any
  batch_sharding: Any
  model: nn.Module  # the LM; its `cfg` is the run's LMConfig
  train_step: Any  # jitted (state, batch) -> (state, metrics), the state donated
  eval_step: Any  # jitted (params, batch) -> (loss sum, token count)
  all_finite: Any  # jitted params -> bool
  num_params: int
  flops: tuple[float, str]
  peak: float | None


def _plan(config: ConfigDict) -> _Plan:
  """Validate the config, build the mesh, the model and its jitted steps; no file is touched."""
  config_lib.validate(config)
  prepare_model_config(config)
  t = config.train
  mesh_cfg = t.mesh
  mesh = sharding_lib.mesh_from_config(mesh_cfg)
  config_lib.check_mesh_batch(config, dict(mesh.shape))
  for warning in config_lib.warnings(config):
    print0(f'WARNING: {warning}')
  print0(
    f'devices: {jax.device_count()} x {jax.devices()[0].device_kind} on {jax.process_count()} process(es); '
    f'mesh {dict(mesh.shape)}'
  )
  model = build_model(config)
  sharding_lib.check_rows_per_process(mesh)  # each host feeds whole model replicas
  try:  # a split sequence needs every layer's context-parallel form
    sequence_parallel.check_model(model.cfg, mesh.shape['sequence'], int(t.seq_len))
  except sequence_parallel.SequenceParallelError as e:
    raise sharding_lib.MeshError(str(e)) from None
  tx = optimizer_lib.make_optimizer(t)
  rules = sharding_lib.LOGICAL_AXIS_RULES
  accum = int(t.grad_accum_steps)
  batch_shard = sharding_lib.batch_sharding(mesh)
  micro_shard = NamedSharding(mesh, P(None, sharding_lib.BATCH_AXES, None))
  repl = sharding_lib.replicated(mesh)

  # The mesh is set globally while tracing the jitted init and steps, so the models' logical
  # activation constraints (nn.with_logical_constraint) take effect; state, batch and output
  # shardings are also explicit. (Abstract shapes and shardings are computed without it:
  # unboxing an abstract tree under a set mesh would apply constraints outside jit.)
  # (Multi-axis projections use layers/dense.py, whose kernels are boxed in their real shape:
  # nn.DenseGeneral's flat-then-reshape kernels fail under a set mesh.)
  with nn.logical_axis_rules(rules):
    dummy = jnp.zeros((int(t.batch_size) // accum, int(t.seq_len)), jnp.int32)

    def init_params(rng):
      return model.init(rng, dummy)['params']

    try:  # the model's own checks (e.g. an unknown model.rule) run while tracing its init
      boxed = jax.eval_shape(init_params, jax.random.key(int(config.seed)))
    except ValueError as e:
      raise config_lib.ConfigError(f'config.model: {" ".join(str(e).split())}') from None
    param_shardings = sharding_lib.logical_shardings(boxed, mesh, rules)
    abstract_params = nn.meta.unbox(boxed)
    sharding_lib.check_param_layout(
      abstract_params, boxed, mesh, float(mesh_cfg.max_replicated_fraction), rules
    )
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = sharding_lib.optimizer_shardings(tx, abstract_opt, param_shardings, mesh)
    state_shardings = TrainState(step=repl, params=param_shardings, opt_state=opt_shardings)

    def init_state(rng):
      params = nn.meta.unbox(model.init(rng, dummy)['params'])
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      jax.eval_shape(init_state, jax.random.key(0)),
      state_shardings,
    )
  num_params = count_params(abstract_params)
  loss_fn = make_loss_fn(model, config_lib.compute_dtype(config), 'dtype' not in config.model)
  schedule = optimizer_lib.learning_rate_schedule(t)
  return _Plan(
    config=config,
    config_dict=config_lib.to_dict(config),
    mesh=mesh,
    rules=rules,
    init_state=jax.jit(init_state, out_shardings=state_shardings),
    abstract_state=abstract_state,
    state_shardings=state_shardings,
    batch_sharding=batch_shard,
    model=model,
    train_step=jax.jit(
      make_train_step(loss_fn, tx, schedule, accum, micro_shard),
      in_shardings=(state_shardings, batch_shard),
      out_shardings=(state_shardings, repl),
      donate_argnums=(0,),
    ),
    eval_step=jax.jit(
      make_eval_step(loss_fn),
      in_shardings=(param_shardings, batch_shard),
      out_shardings=(repl, repl),
    ),
    all_finite=jax.jit(all_finite, in_shardings=(param_shardings,), out_shardings=repl),
    num_params=num_params,
    flops=metrics_lib.flops_per_token(model.cfg, int(t.seq_len)),
    peak=metrics_lib.device_peak_flops(),
  )


def _init_or_restore(plan: _Plan, ckpt: ckpt_lib.Checkpointer, data_iter: Any) -> tuple[int, Any]:
  """(start step, state): the newest readable checkpoint (and its data position), else fresh."""
  config = plan.config
  with nn.logical_axis_rules(plan.rules):
    restored = ckpt.restore_latest(plan.abstract_state)
  if restored is None:
    data_iter.build()  # (done already unless every checkpoint was unreadable)
    with jax.set_mesh(plan.mesh), nn.logical_axis_rules(plan.rules):
      state = plan.init_state(jax.random.key(int(config.seed)))
    print0('init: fresh parameters')
    return 0, state
  start, state, data_state = restored
  data_iter.set_state(data_state)
  print0(f'resume: restored step {start} from {ckpt.directory}')
  return start, state


def train(config: ConfigDict, workdir: str | os.PathLike) -> TrainResult:
  """Train (or resume) the run in ``workdir``; see the module docstring."""
  workdir = Path(workdir).expanduser()
  plan = _plan(config)  # nothing written yet
  with RunDirectory(workdir) as run_dir:  # checked, created, locked
    checkpoints = workdir / workdir_lib.CHECKPOINT_DIR
    check_resume_config(checkpoints, plan.config_dict)
    run_dir.track_cache(data_lib.cache_dir(config.data, workdir))  # (undone on a refusal)
    data_dir = data_lib.resolve_dataset(config.data, workdir, plan.model.cfg.vocab_size)
    print0(f'data: {data_dir}')
    data_iter = data_lib.train_iterator(data_dir, config)
    if not workdir_lib.committed_steps(checkpoints):  # a fresh run: its data errors before any
      data_iter.build()  # file is written (the pipelines would raise them at the first batch)
    # stored with every checkpoint: evals and sampling read what the run trained on
    # (miras_jax/evals/run_data.py), never a re-resolved config.data
    plan.config_dict['dataset'] = dataset_record(data_dir)
    evaluator = Evaluator(plan, data_dir)
    flops_tok, flops_src = plan.flops
    print0(
      f'model: {plan.num_params:,} parameters; {flops_tok:.3g} training FLOPs/token ({flops_src})'
      + ('' if plan.peak else '; MFU not reported (device peak FLOP/s unknown)')
    )
    k = config.checkpoint
    ckpt = ckpt_lib.Checkpointer(
      checkpoints,
      every_steps=k.every_steps,
      keep_last=k.keep_last,
      keep_every=k.keep_every,
      async_save=k.async_save,
    )
    try:
      start, state = _init_or_restore(plan, ckpt, data_iter)
      if jax.process_index() == 0:  # the run is known to start: now the config is the run's
        config_lib.write_json(config, workdir)
      run_dir.started = True
    except BaseException:
      ckpt.close()
      raise
    return _steps(plan, workdir, ckpt, evaluator, data_iter, start, state)


def _steps(
  plan: _Plan,
  workdir: Path,
  ckpt: ckpt_lib.Checkpointer,
  evaluator: Evaluator,
  data_iter: Any,
  start: int,
  state: TrainState,
) -> TrainResult:
  """The training steps from ``start``, with logging, evaluation, checkpoints and stops."""
  config, t = plan.config, plan.config.train
  total, every_save = int(t.steps), int(config.checkpoint.every_steps)
  writer = None
  try:  # set-up that can fail (wandb.init, opening metrics.jsonl, the SIGTERM handler)
    wandb_run = init_wandb(config, plan.config_dict, workdir) if jax.process_index() == 0 else None
    writer = metrics_lib.MetricsWriter(workdir, total_steps=total, wandb_run=wandb_run)
    watcher = ckpt_lib.PreemptionWatcher()
  except BaseException:
    ckpt.close()  # a run that fails still waits for and closes its checkpoint manager
    if writer is not None:
      writer.close()
    raise
  monitor = DivergenceMonitor(float(t.get('loss_spike_factor', 0.0) or 0.0))
  timer = StepTimer(plan, start)
  delay = float(os.environ.get(_STEP_DELAY_ENV, '0') or 0)
  history: list[dict[str, Any]] = []
  step, preempted, val_loss, saved_step = start, False, None, start

  def save(step: int) -> None:
    """Save ``step`` unless anything since the last check diverged (then raise, saving nothing)."""
    monitor.check()
    if not bool(plan.all_finite(state.params)):
      raise DivergenceError(f'training diverged at step {step}: non-finite parameters')
    ckpt.save(step, state, data_iter.get_state(), plan.config_dict, force=True)

  try:
    with jax.set_mesh(plan.mesh), nn.logical_axis_rules(plan.rules):
      while step < total:
        batch = global_batch(next(data_iter), plan.batch_sharding)
        state, metrics = plan.train_step(state, batch)
        step += 1
        timer.tick()
        monitor.add(step, metrics)
        last = step == total
        if step % int(t.log_every_steps) == 0 or last or step == start + 1:
          monitor.check()
          row, eta = timer.row(step, jax.device_get(metrics))
          history.append({'step': step, **row})
          writer.write(step, row)
          writer.console(step, row, eta_s=eta)
        if evaluator.due(step, last):
          eval_t0 = time.perf_counter()
          val_loss = evaluator.run(step, state.params, writer)
          timer.exclude(time.perf_counter() - eval_t0)
        if (every_save and step % every_save == 0) or last:
          save(step)
          saved_step = step
        if watcher.reached(step):
          if saved_step != step:
            save(step)
          preempted = True
          print0(f'preempted (SIGTERM): saved checkpoint at step {step}; exiting cleanly')
          break
        if delay:
          time.sleep(delay)
    if not preempted and start >= total:
      print0(f'nothing to do: checkpoint step {start} >= train.steps={t.steps}')
    ckpt.wait()
  except DivergenceError as e:
    ckpt.wait()
    kept = ckpt.all_steps()
    raise DivergenceError(
      f'{e}; nothing from that step on was saved'
      + (f', the newest checkpoint is step {kept[-1]}' if kept else '')
      + ' (lower train.lr, or resume with other settings)'
    ) from None
  finally:
    ckpt.close()
    watcher.close()
    writer.close()
  if jax.process_index() == 0 and not preempted:
    png = metrics_lib.plot_loss_curve(workdir)
    if png is not None:
      print0(f'wrote {png}')
  if val_loss is not None:
    print0(
      f'final: step {step} val_loss {val_loss:.4f} val_perplexity {math.exp(min(val_loss, 50.0)):.2f}'
    )
  return TrainResult(step=step, preempted=preempted, val_loss=val_loss, history=history)
