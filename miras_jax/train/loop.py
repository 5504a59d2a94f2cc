"""The training loop: state, sharded jitted step, evaluation, checkpoints, metrics.

``train(config, workdir)`` runs (or resumes) one run directory:

1. mesh ``(data, fsdp, tensor)`` from ``train.mesh`` (a mismatch with the
   device count fails here), the model from ``miras_jax.models.build_model(config.model)``
   (which looks ``model.name`` up in its registry);
2. the dataset resolved / prepared from ``config.data``;
3. the train state (step, float32 params, AdamW state) created directly in its
   shardings (``jax.jit(init, out_shardings=...)``), or restored from the
   newest readable checkpoint together with the data position;
4. ``steps`` iterations of a ``jax.jit`` step with explicit in/out shardings
   and the state donated: ``grad_accum_steps`` micro-batches under
   ``lax.scan``, loss = masked token mean over the whole batch, AdamW update;
5. metrics every ``log_every_steps``, validation every ``eval.every_steps`` and
   at the end, checkpoints every ``checkpoint.every_steps``, at the end and on
   SIGTERM; finally the loss-curve PNG.

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

from miras_jax.train import checkpoint as ckpt_lib
from miras_jax.train import config as config_lib
from miras_jax.train import data as data_lib
from miras_jax.train import metrics as metrics_lib
from miras_jax.train import optimizer as optimizer_lib
from miras_jax.train import sharding as sharding_lib
from miras_jax.train.wandb_logger import init_wandb

__all__ = ['TrainState', 'TrainResult', 'build_model', 'prepare_model_config', 'train']

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
    for key in ('remat_policy', 'remat'):
      if key in model:
        model[key] = config.train.remat
        break
    else:
      raise config_lib.ConfigError(
        "train.remat is set but config.model has no 'remat_policy'/'remat' key"
      )


def build_model(config: ConfigDict) -> nn.Module:
  from miras_jax.models import build_model as build  # pylint: disable=import-outside-toplevel

  try:
    return build(config.model)
  except ValueError as e:  # unknown model name / bad model keys
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


def _model_vocab(model_cfg: ConfigDict) -> int | None:
  for key in ('vocab_size', 'vocab'):
    if key in model_cfg:
      return int(model_cfg[key])
  return None


def _print(msg: str) -> None:
  if jax.process_index() == 0:
    print(msg, flush=True)


# --------------------------------------------------------------------- train
def train(config: ConfigDict, workdir: str | os.PathLike) -> TrainResult:
  """Train (or resume) the run in ``workdir``; see the module docstring."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  config_lib.validate(config)
  prepare_model_config(config)
  t = config.train

  mesh_cfg = t.mesh
  mesh = sharding_lib.make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor)
  config_lib.check_mesh_batch(config, dict(mesh.shape))
  if jax.process_index() == 0:
    config_lib.write_json(config, workdir)
  config_dict = config_lib.to_dict(config)
  _print(
    f'devices: {jax.device_count()} x {jax.devices()[0].device_kind} on {jax.process_count()} process(es); '
    f'mesh {dict(mesh.shape)}'
  )

  data_dir = data_lib.resolve_dataset(config.data, workdir, _model_vocab(config.model))
  _print(f'data: {data_dir}')

  model = build_model(config)
  dtype = config_lib.compute_dtype(config)
  cast = 'dtype' not in config.model
  tx = optimizer_lib.make_optimizer(t)
  schedule = optimizer_lib.learning_rate_schedule(t)
  rules = sharding_lib.LOGICAL_AXIS_RULES
  accum = int(t.grad_accum_steps)
  global_batch, seq_len = int(t.batch_size), int(t.seq_len)
  micro_batch = global_batch // accum

  batch_shard = sharding_lib.batch_sharding(mesh)
  micro_shard = NamedSharding(mesh, P(None, sharding_lib.BATCH_AXES, None))
  repl = sharding_lib.replicated(mesh)

  # The mesh is set globally while tracing the jitted init and steps, so the models' logical
  # activation constraints (nn.with_logical_constraint) take effect; state, batch and output
  # shardings are also explicit. (Abstract shapes and shardings are computed without it:
  # unboxing an abstract tree under a set mesh would apply constraints outside jit.) (Multi-axis projections use layers/dense.py, whose kernels are boxed in their
  # real shape — nn.DenseGeneral's flat-then-reshape kernels fail under a set mesh.)
  with nn.logical_axis_rules(rules):
    # ------------------------------------------------- state and shardings
    dummy = jnp.zeros((micro_batch, seq_len), jnp.int32)

    def init_params(rng):
      return model.init(rng, dummy)['params']

    boxed = jax.eval_shape(init_params, jax.random.key(int(config.seed)))
    param_shardings = sharding_lib.logical_shardings(boxed, mesh, rules)
    abstract_params = nn.meta.unbox(boxed)
    abstract_opt = jax.eval_shape(tx.init, abstract_params)
    opt_shardings = optax.tree_map_params(
      tx,
      lambda _, s: s,
      abstract_opt,
      param_shardings,
      transform_non_params=lambda _: repl,
      is_leaf=lambda x: isinstance(x, optax.MaskedNode),
    )
    state_shardings = TrainState(step=repl, params=param_shardings, opt_state=opt_shardings)

    def init_state(rng):
      params = nn.meta.unbox(model.init(rng, dummy)['params'])
      return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))

    abstract_state = jax.eval_shape(init_state, jax.random.key(0))
    abstract_state = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
      abstract_state,
      state_shardings,
    )
    num_params = metrics_lib.param_count(abstract_params)
    flops_tok, flops_src = metrics_lib.flops_per_token(config.model, seq_len, num_params)
    peak = metrics_lib.device_peak_flops()
    _print(
      f'model: {num_params:,} parameters; {flops_tok:.3g} training FLOPs/token ({flops_src})'
      + ('' if peak else '; MFU not reported (device peak FLOP/s unknown)')
    )

    # ---------------------------------------------------- restore or init
    ckpt = ckpt_lib.Checkpointer(
      workdir / ckpt_lib.CHECKPOINT_DIR,
      every_steps=config.checkpoint.every_steps,
      keep_last=config.checkpoint.keep_last,
      keep_every=config.checkpoint.keep_every,
      async_save=config.checkpoint.async_save,
    )
    data_iter = data_lib.train_iterator(data_dir, config)
    restored = ckpt.restore_latest(abstract_state)
    if restored is None:
      with jax.set_mesh(mesh):
        state = jax.jit(init_state, out_shardings=state_shardings)(jax.random.key(int(config.seed)))
      start = 0
      _print('init: fresh parameters')
    else:
      start, state, data_state = restored
      data_iter.set_state(data_state)
      _print(f'resume: restored step {start} from {ckpt.directory}')

  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    # ------------------------------------------------------------ steps
    loss_fn = make_loss_fn(model, dtype, cast)
    train_step = jax.jit(
      make_train_step(loss_fn, tx, schedule, accum, micro_shard),
      in_shardings=(state_shardings, batch_shard),
      out_shardings=(state_shardings, repl),
      donate_argnums=(0,),
    )
    eval_step = jax.jit(
      make_eval_step(loss_fn),
      in_shardings=(param_shardings, batch_shard),
      out_shardings=(repl, repl),
    )
    eval_batch = config_lib.eval_batch_size(config)
    eval_shard = batch_shard

    def evaluate() -> float | None:
      total, count = 0.0, 0.0
      for batch in data_lib.val_iterator(data_dir, config, eval_batch):
        s, c = eval_step(state.params, _global_batch(batch, eval_shard))
        total, count = total + float(s), count + float(c)
      return total / count if count else None

    zs_tasks = [n.strip() for n in str(config.eval.tasks).split(',') if n.strip()]

    def zero_shot() -> dict[str, float]:
      """The configured zero-shot tasks on the current parameters (one host, one device;
      miras_jax.evals), flattened to ``eval/<task>/<metric>`` numbers."""
      from miras_jax.data.pipeline import load_index  # pylint: disable=import-outside-toplevel
      from miras_jax.evals import evaluate as zs_evaluate  # pylint: disable=import-outside-toplevel

      res = zs_evaluate(
        jax.device_get(state.params),
        config.model,
        load_index(data_dir)['tokenizer']['path'],
        zs_tasks,
        data_dir=str(config.eval.data_dir) or None,
        limit=int(config.eval.limit) or None,
        max_len=seq_len,
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

    if zs_tasks and jax.process_count() > 1:
      _print('eval.tasks: zero-shot evaluation during training runs on one host only; skipped')
      zs_tasks = []

    wandb_run = init_wandb(config, config_dict, workdir) if jax.process_index() == 0 else None
    writer = metrics_lib.MetricsWriter(workdir, total_steps=int(t.steps), wandb_run=wandb_run)
    watcher = ckpt_lib.PreemptionWatcher()
    delay = float(os.environ.get(_STEP_DELAY_ENV, '0') or 0)
    history: list[dict[str, Any]] = []
    tokens_per_step = global_batch * seq_len
    step, preempted, val_loss, saved_step = start, False, None, start
    window_t0, window_steps, run_t0, timed_steps = time.perf_counter(), 0, None, 0
    try:
      while step < int(t.steps):
        batch = _global_batch(next(data_iter), batch_shard)
        state, metrics = train_step(state, batch)
        step += 1
        window_steps += 1
        last = step == int(t.steps)
        if step % int(t.log_every_steps) == 0 or last or step == start + 1:
          metrics = jax.device_get(metrics)
          now = time.perf_counter()
          dt = (now - window_t0) / window_steps
          row = {k: float(v) for k, v in metrics.items()}
          row['perplexity'] = math.exp(min(row['loss'], 50.0))
          row['step_time_s'] = dt
          row['tokens_per_sec'] = tokens_per_step / dt
          if peak:
            row['mfu'] = flops_tok * row['tokens_per_sec'] / (peak * jax.device_count())
          if step == start + 1:
            row['compile_and_step_time_s'] = dt
            run_t0 = now
          else:
            timed_steps += window_steps
          history.append({'step': step, **row})
          writer.write(step, row)
          eta = (now - run_t0) / timed_steps * (int(t.steps) - step) if timed_steps else None
          writer.console(step, row, eta_s=eta)
          window_t0, window_steps = time.perf_counter(), 0
        every = int(config.eval.every_steps)
        if (every and step % every == 0) or last:
          eval_t0 = time.perf_counter()
          val_loss = evaluate()
          if val_loss is not None:
            row = {'val_loss': val_loss, 'val_perplexity': math.exp(min(val_loss, 50.0))}
            writer.write(step, row)
            writer.console(step, row)
          if zs_tasks:
            row = zero_shot()
            writer.write(step, row)
            _print(f'step {step} | ' + ' | '.join(f'{k[5:]} {v:.4g}' for k, v in row.items()))
          window_t0 += time.perf_counter() - eval_t0  # keep evaluation out of tokens/s
        if (
          config.checkpoint.every_steps and step % int(config.checkpoint.every_steps) == 0
        ) or last:
          ckpt.save(step, state, data_iter.get_state(), config_dict, force=True)
          saved_step = step
        if watcher.reached(step):
          if saved_step != step:
            ckpt.save(step, state, data_iter.get_state(), config_dict, force=True)
          preempted = True
          _print(f'preempted (SIGTERM): saved checkpoint at step {step}; exiting cleanly')
          break
        if delay:
          time.sleep(delay)
      if not preempted and start >= int(t.steps):
        _print(f'nothing to do: checkpoint step {start} >= train.steps={t.steps}')
      ckpt.wait()
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
