"""The training loop: state, sharded jitted step, evaluation, checkpoints, metrics.

``train(config, workdir)`` runs (or resumes) one run directory:

1. checks that touch no file: every config value (``config.validate``), the
   mesh ``(data, fsdp, tensor)`` from ``train.mesh`` (a mismatch with the device
   count fails here), the model from ``miras_jax.models.build_model(config.model)``
   and its abstract init (so e.g. an unknown ``model.rule`` fails here);
2. the run directory: refused when it is a file or not writable, created,
   and locked for the whole run (``train/lock.py``); a directory created by a
   command that then fails before training is removed again when empty;
3. a resume check: the config stored with the newest checkpoint must agree on
   the model and the optimiser's structure (``config.resume_mismatch``), else a
   one-line refusal that changes nothing;
4. the dataset resolved / prepared from ``config.data``;
5. the train state (step, float32 params, AdamW state) created directly in its
   shardings (``jax.jit(init, out_shardings=...)``), or restored from the
   newest readable checkpoint together with the data position (a readable
   checkpoint of another structure is refused, never moved aside); only now is
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

Mixed precision: parameters and optimiser state stay float32. The compute
dtype (``train.compute_dtype``) is handed to the model through its ``dtype``
key when the model config has one, otherwise the float parameters are cast
for the forward/backward pass (gradients come back in float32).

Memory health: the model's ``'intermediates'`` collection (the Miras layers sow
``inner_loss_before`` / ``inner_loss_after``) is averaged per name and logged
as ``inner/<name>`` (and ``inner/<name>/layer_<i>`` for stacked, scanned layers).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from ml_collections import ConfigDict

from miras_jax import workdir as workdir_lib
from miras_jax.models.config import LMConfig
from miras_jax.models.lm import count_params
from miras_jax.train import checkpoint as ckpt_lib
from miras_jax.train import config as config_lib
from miras_jax.train import data as data_lib
from miras_jax.train import lock as lock_lib
from miras_jax.train import metrics as metrics_lib
from miras_jax.train import optimizer as optimizer_lib
from miras_jax.train import sharding as sharding_lib
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


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


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


def _cast_params(params: Any, dtype: Any) -> Any:
  if dtype == jnp.float32:
    return params
  return jax.tree.map(
    lambda p: p.astype(dtype) if jnp.issubdtype(p.dtype, jnp.floating) else p, params
  )


def _intermediate_stats(inter: Any) -> dict[str, jax.Array]:
  """Mean of every sown value per leaf name (and per layer for stacked [L] scalars)."""
  groups: dict[str, list[jax.Array]] = {}
  per_layer: dict[str, jax.Array] = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(inter)[0]:
    names = [str(getattr(k, 'key', getattr(k, 'name', ''))) for k in path]
    names = [n for n in names if n and not n.isdigit()]
    name = names[-1] if names else 'value'
    leaf = jnp.asarray(leaf, jnp.float32)
    groups.setdefault(name, []).append(jnp.mean(leaf))
    if leaf.ndim == 1 and 1 < leaf.shape[0] <= 128:
      per_layer[name] = leaf
  out = {f'inner/{k}': jnp.mean(jnp.stack(v)) for k, v in groups.items()}
  for k, v in per_layer.items():
    if len(groups[k]) == 1:
      for i in range(v.shape[0]):
        out[f'inner/{k}/layer_{i}'] = v[i]
  return out


# ---------------------------------------------------------------- the steps
def make_loss_fn(model: nn.Module, dtype: Any, cast: bool):
  def loss_fn(params, batch):
    p = _cast_params(params, dtype) if cast else params
    logits, mutated = model.apply(
      {'params': p},
      batch['inputs'],
      segment_ids=batch['segment_ids'],
      positions=batch['positions'],
      mutable=['intermediates'],
    )
    logits = logits.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch['targets'])
    mask = batch['loss_mask'].astype(jnp.float32)
    return jnp.sum(ce * mask), (
      jnp.sum(mask),
      _intermediate_stats(mutated.get('intermediates', {})),
    )

  return loss_fn


def make_train_step(
  loss_fn, tx: optax.GradientTransformation, schedule, accum: int, micro_sharding
):
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    if accum == 1:
      (loss_sum, (count, inner)), grads = grad_fn(state.params, batch)
    else:

      def split(
        x,
      ):  # [B, T] -> [A, B/A, T]; micro-batch a takes rows a, a+A, ... (spread over devices)
        x = x.reshape(x.shape[0] // accum, accum, *x.shape[1:]).swapaxes(0, 1)
        return jax.lax.with_sharding_constraint(x, micro_sharding)

      micro = jax.tree.map(split, batch)
      zeros = jax.tree.map(jnp.zeros_like, state.params)
      _, (_, inner0) = jax.eval_shape(loss_fn, state.params, jax.tree.map(lambda x: x[0], micro))
      inner0 = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), inner0)

      def body(carry, mb):
        g_acc, s_acc, c_acc, i_acc = carry
        (s, (c, inner)), g = grad_fn(state.params, mb)
        return (
          jax.tree.map(jnp.add, g_acc, g),
          s_acc + s,
          c_acc + c,
          jax.tree.map(lambda a, b: a + b / accum, i_acc, inner),
        ), None

      init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32), inner0)
      (grads, loss_sum, count, inner), _ = jax.lax.scan(body, init, micro)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {
      'loss': loss_sum / denom,
      'grad_norm': optax.global_norm(grads),
      'lr': schedule(state.step),
      'tokens_in_loss': count,
      **inner,
    }
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return train_step


def make_eval_step(loss_fn):
  def eval_step(params, batch):
    loss_sum, (count, _) = loss_fn(params, batch)
    return loss_sum, count

  return eval_step


# ------------------------------------------------------------------ helpers
def _global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def _print(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


class DivergenceError(RuntimeError):
  """Training produced a non-finite (or spiking) loss / gradient norm; nothing of it was saved."""


class DivergenceMonitor:
  """Stops a run whose loss or gradient norm is non-finite, or whose loss spikes.

  The step's scalars stay on the device until :meth:`check` (at every logged step and before
  every save), so dispatch stays asynchronous; a check then looks at every step since the last
  one, in order, and names the first bad one. ``spike_factor`` > 1 also stops when a loss exceeds
  that factor times the mean of the previous (up to) ``window`` finite losses, once ``window``
  of them were seen in this process.
  """

  def __init__(self, spike_factor: float = 0.0, window: int = 50):
    self.spike_factor = float(spike_factor)
    self.window = int(window)
    self._pending: list[tuple[int, Any, Any]] = []
    self._recent: list[float] = []

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    self._pending.append((step, metrics['loss'], metrics['grad_norm']))

  def check(self) -> None:
    pending, self._pending = self._pending, []
    for step, loss, gnorm in jax.device_get(pending):
      loss, gnorm = float(loss), float(gnorm)
      if not (math.isfinite(loss) and math.isfinite(gnorm)):
        raise DivergenceError(
          f'training diverged at step {step}: loss {loss}, grad_norm {gnorm} (non-finite)'
        )
      if self.spike_factor > 1 and len(self._recent) >= self.window:
        mean = sum(self._recent) / len(self._recent)
        if loss > self.spike_factor * mean:
          raise DivergenceError(
            f'training diverged at step {step}: loss {loss:.4g} > train.loss_spike_factor '
            f'{self.spike_factor:g} x recent mean {mean:.4g}'
          )
      self._recent = (self._recent + [loss])[-self.window :]


def _all_finite(tree: Any) -> jax.Array:
  """One boolean: every floating leaf of ``tree`` is finite (jitted in the run, replicated)."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class _RunDirectory:
  """The run directory, checked, created and locked before anything is written into it.

  On a failure before the run starts (``started`` still False), a directory this invocation
  created is removed again when nothing but empty folders / the lock are in it, so a rejected
  command leaves no trace.
  """

  def __init__(self, workdir: Path):
    self.path = workdir
    self.created: Path | None = None
    self.lock = lock_lib.WorkdirLock(workdir)
    self.started = False

  def __enter__(self) -> _RunDirectory:
    path = self.path
    if path.exists() and not path.is_dir():
      raise config_lib.ConfigError(f'--workdir {str(path)!r} is not a directory')
    if not path.exists():
      top = path
      while not top.parent.exists():
        top = top.parent
      try:
        path.mkdir(parents=True, exist_ok=True)  # exist_ok: other processes of the run
      except OSError as e:
        raise config_lib.ConfigError(
          f'cannot create --workdir {str(path)!r}: {e.strerror or e}'
        ) from None
      self.created = top
    if not os.access(path, os.W_OK | os.X_OK):
      raise config_lib.ConfigError(f'--workdir {str(path)!r} is not writable')
    if jax.process_index() == 0:
      self.lock.acquire()
      if self.lock.took_over:
        _print(
          f'lock: the previous run ({self.lock.took_over}) ended without releasing '
          f'{self.lock.path.name}; taking it over'
        )
    return self

  def __exit__(self, exc_type, *_) -> None:
    self.lock.release()
    if exc_type is not None and not self.started and self.created is not None:
      if jax.process_index() == 0 and not any(p.is_file() for p in self.created.rglob('*')):
        shutil.rmtree(self.created, ignore_errors=True)


def _check_resume_config(checkpoints: Path, config_dict: dict[str, Any]) -> None:
  """Refuse (one line, nothing touched) when the newest checkpoint was made by another model."""
  for step in reversed(workdir_lib.committed_steps(checkpoints)):
    stored = workdir_lib.read_stored_config(workdir_lib.step_dir(checkpoints, step))
    if stored is None:
      continue
    diffs = config_lib.resume_mismatch(stored, config_dict)
    if diffs:
      raise ckpt_lib.CheckpointMismatchError(
        f'the checkpoints in {checkpoints} (newest step {step}) were trained with another '
        f'config: {"; ".join(diffs)}; resume with the stored values or use a new --workdir '
        '(no checkpoint was changed)'
      )
    return


def _has_val_split(data_dir: Path) -> bool:
  from miras_jax.data.pipeline import load_index  # pylint: disable=import-outside-toplevel

  split = (load_index(data_dir).get('splits') or {}).get('val') or {}
  return int(split.get('num_docs', 0) or 0) > 0


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
    _print(f'WARNING: {warning}')
  _print(
    f'devices: {jax.device_count()} x {jax.devices()[0].device_kind} on {jax.process_count()} process(es); '
    f'mesh {dict(mesh.shape)}'
  )
  model = build_model(config)
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
    all_finite=jax.jit(_all_finite, in_shardings=(param_shardings,), out_shardings=repl),
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
    with jax.set_mesh(plan.mesh), nn.logical_axis_rules(plan.rules):
      state = plan.init_state(jax.random.key(int(config.seed)))
    _print('init: fresh parameters')
    return 0, state
  start, state, data_state = restored
  data_iter.set_state(data_state)
  _print(f'resume: restored step {start} from {ckpt.directory}')
  return start, state


class _Evaluator:
  """Validation loss and the zero-shot ``eval.tasks`` at evaluation steps; a failure is logged."""

  def __init__(self, plan: _Plan, data_dir: Path):
    self.plan, self.config, self.data_dir = plan, plan.config, data_dir
    self.has_val = _has_val_split(data_dir)
    if not self.has_val:
      _print(f'data: {data_dir} has no val split; the validation loss is not computed')
    self.tasks = [n.strip() for n in str(self.config.eval.tasks).split(',') if n.strip()]
    if self.tasks and jax.process_count() > 1:
      _print('eval.tasks: zero-shot evaluation during training runs on one host only; skipped')
      self.tasks = []
    self.tokenizer = None
    if self.tasks:  # the tokenizer the data was prepared with, loaded once
      from miras_jax.data.pipeline import load_index  # pylint: disable=import-outside-toplevel
      from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel

      self.tokenizer = Tokenizer(load_index(data_dir)['tokenizer']['path'])

  def due(self, step: int, last: bool) -> bool:
    every = int(self.config.eval.every_steps)
    return bool(every and step % every == 0) or last

  def run(self, step: int, params: Any, writer: metrics_lib.MetricsWriter) -> float | None:
    val_loss = self._guarded(lambda: self.validation_loss(params), 'validation', step)
    if val_loss is not None:
      row = {'val_loss': val_loss, 'val_perplexity': math.exp(min(val_loss, 50.0))}
      writer.write(step, row)
      writer.console(step, row)
    if self.tasks:
      row = self._guarded(lambda: self.zero_shot(params), 'zero-shot evaluation (eval.tasks)', step)
      if row:
        writer.write(step, row)
        _print(f'step {step} | ' + ' | '.join(f'{k[5:]} {v:.4g}' for k, v in row.items()))
    return val_loss

  def validation_loss(self, params: Any) -> float | None:
    if not self.has_val:
      return None
    total, count = 0.0, 0.0
    batch_size = config_lib.eval_batch_size(self.config)
    for batch in data_lib.val_iterator(self.data_dir, self.config, batch_size):
      s, c = self.plan.eval_step(params, _global_batch(batch, self.plan.batch_sharding))
      total, count = total + float(s), count + float(c)
    return total / count if count else None

  def zero_shot(self, params: Any) -> dict[str, float]:
    """The zero-shot tasks on ``params`` (one host; miras_jax.evals) with the trainer's model
    and tokenizer, flattened to ``eval/<task>/<metric>`` numbers."""
    from miras_jax.evals import evaluate as zs_evaluate  # pylint: disable=import-outside-toplevel
    from miras_jax.evals.scoring import make_apply_fn  # pylint: disable=import-outside-toplevel

    e = self.config.eval
    res = zs_evaluate(
      params,
      self.plan.model.cfg,
      self.tokenizer,
      self.tasks,
      data_dir=str(e.data_dir) or None,
      limit=int(e.limit) or None,
      max_len=int(self.config.train.seq_len),
      apply_fn=make_apply_fn(self.plan.model),
    )
    row = {}
    for group in ('results', 'synthetic'):
      for task, metrics in res.get(group, {}).items():
        for name, val in metrics.items():
          if isinstance(val, (int, float)):
            row[f'eval/{task}/{name}'] = float(val)
          elif isinstance(val, dict):  # per-length accuracies (niah, mqar)
            for sub, x in val.items():
              if isinstance(x, (int, float)):
                row[f'eval/{task}/{name}/{sub}'] = float(x)
    return row

  @staticmethod
  def _guarded(fn, what: str, step: int):
    """An evaluation failure is logged and the run goes on (to its checkpoint)."""
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:300]
      log.error('%s at step %d failed: %s', what, step, reason)
      _print(f'WARNING: {what} at step {step} failed ({reason}); training continues')
      return None


class _StepTimer:
  """Per-window step time, tokens/s, MFU and ETA; evaluation time is kept out of tokens/s."""

  def __init__(self, plan: _Plan, start: int):
    t = plan.config.train
    self.start, self.total = start, int(t.steps)
    self.tokens_per_step = int(t.batch_size) * int(t.seq_len)
    self.flops_tok, self.peak = plan.flops[0], plan.peak
    self.window_t0, self.window_steps, self.run_t0, self.timed_steps = (
      time.perf_counter(),
      0,
      None,
      0,
    )

  def tick(self) -> None:
    self.window_steps += 1

  def row(self, step: int, metrics: dict[str, Any]) -> tuple[dict[str, float], float | None]:
    """The logged row of ``step`` and the ETA in seconds (None until a timed window exists)."""
    now = time.perf_counter()
    dt = (now - self.window_t0) / self.window_steps
    row = {k: float(v) for k, v in metrics.items()}
    row['perplexity'] = math.exp(min(row['loss'], 50.0))
    row['step_time_s'] = dt
    row['tokens_per_sec'] = self.tokens_per_step / dt
    if self.peak:
      row['mfu'] = self.flops_tok * row['tokens_per_sec'] / (self.peak * jax.device_count())
    if step == self.start + 1:
      row['compile_and_step_time_s'] = dt
      self.run_t0 = now
    else:
      self.timed_steps += self.window_steps
    eta = (now - self.run_t0) / self.timed_steps * (self.total - step) if self.timed_steps else None
    self.window_t0, self.window_steps = time.perf_counter(), 0
    return row, eta

  def exclude(self, seconds: float) -> None:
    self.window_t0 += seconds


def train(config: ConfigDict, workdir: str | os.PathLike) -> TrainResult:
  """Train (or resume) the run in ``workdir``; see the module docstring."""
  workdir = Path(workdir).expanduser()
  plan = _plan(config)  # nothing written yet
  with _RunDirectory(workdir) as run_dir:  # checked, created, locked
    checkpoints = workdir / workdir_lib.CHECKPOINT_DIR
    _check_resume_config(checkpoints, plan.config_dict)
    data_dir = data_lib.resolve_dataset(config.data, workdir, plan.model.cfg.vocab_size)
    _print(f'data: {data_dir}')
    evaluator = _Evaluator(plan, data_dir)
    flops_tok, flops_src = plan.flops
    _print(
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
      data_iter = data_lib.train_iterator(data_dir, config)
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
  evaluator: _Evaluator,
  data_iter: Any,
  start: int,
  state: TrainState,
) -> TrainResult:
  """The training steps from ``start``, with logging, evaluation, checkpoints and stops."""
  config, t = plan.config, plan.config.train
  total, every_save = int(t.steps), int(config.checkpoint.every_steps)
  wandb_run = init_wandb(config, plan.config_dict, workdir) if jax.process_index() == 0 else None
  writer = metrics_lib.MetricsWriter(workdir, total_steps=total, wandb_run=wandb_run)
  watcher = ckpt_lib.PreemptionWatcher()
  monitor = DivergenceMonitor(float(t.get('loss_spike_factor', 0.0) or 0.0))
  timer = _StepTimer(plan, start)
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
        batch = _global_batch(next(data_iter), plan.batch_sharding)
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
          _print(f'preempted (SIGTERM): saved checkpoint at step {step}; exiting cleanly')
          break
        if delay:
          time.sleep(delay)
    if not preempted and start >= total:
      _print(f'nothing to do: checkpoint step {start} >= train.steps={t.steps}')
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
      _print(f'wrote {png}')
  if val_loss is not None:
    _print(
      f'final: step {step} val_loss {val_loss:.4f} val_perplexity {math.exp(min(val_loss, 50.0)):.2f}'
    )
  return TrainResult(step=step, preempted=preempted, val_loss=val_loss, history=history)
