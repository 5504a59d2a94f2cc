"""The train state and the jitted step functions: loss, train step (gradient accumulation,
AdamW), eval step, the finiteness check (train/loop.py jits them with explicit shardings;
miras_jax/aot compiles the same functions for a TPU topology).

Mixed precision: parameters and optimiser state stay float32; the compute dtype goes to the
model through its ``dtype`` key, and the float parameters are cast for the forward/backward
pass only when the model config has no such key (gradients come back in float32). The
model's ``'intermediates'`` (the Miras layers sow ``inner_loss_before`` / ``inner_loss_after``)
are averaged per name as ``inner/<name>`` (and ``inner/<name>/layer_<i>`` for stacked layers).
"""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding

__all__ = [
  'TrainState',
  'make_loss_fn',
  'make_train_step',
  'make_eval_step',
  'all_finite',
  'global_batch',
]


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  opt_state: Any


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


def all_finite(tree: Any) -> jax.Array:
  """One boolean: every floating leaf of ``tree`` is finite (jitted in the run, replicated)."""
  leaves = [
    jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.floating)
  ]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def global_batch(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }
