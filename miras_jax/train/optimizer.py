"""AdamW with linear warmup + cosine decay, global-norm clipping and a weight-decay mask.

The optimiser state (Adam moments) is kept in float32, like the master
weights; the compute dtype only affects the forward/backward pass (see
:mod:`miras_jax.train.loop`).

Weight decay applies to matrices (kernels, embeddings) only: leaves with fewer
than two dimensions (norm scales, biases, per-head scalars), leaves whose own
or module name contains ``norm``, ``scale`` or ``bias``, and the Miras layer's
data-dependent gate parameters (names starting ``gate_``: ``gate_bias_*``,
``gate_down*``, ``gate_up*``) are not decayed. The SwiGLU ``gate`` projection
is an ordinary matrix and is decayed.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import optax
from ml_collections import ConfigDict

__all__ = ['learning_rate_schedule', 'decay_mask', 'make_optimizer']

_NO_DECAY = re.compile(r'(norm|scale|bias|^gate_)', re.IGNORECASE)


def learning_rate_schedule(train: ConfigDict) -> optax.Schedule:
  """Linear warmup to ``train.lr`` over ``warmup_steps``, then cosine to ``lr * min_lr_ratio``.

  The first step uses ``lr / (warmup_steps + 1)`` rather than 0, so no step is wasted.
  """
  steps = int(train.steps)
  warmup = min(int(train.warmup_steps), steps)
  decay_steps = max(steps, warmup + 1)
  return optax.warmup_cosine_decay_schedule(
    init_value=float(train.lr) / (warmup + 1),
    peak_value=float(train.lr),
    warmup_steps=warmup,
    decay_steps=decay_steps,
    end_value=float(train.lr) * float(train.min_lr_ratio),
  )


def _decays(path: tuple[Any, ...], leaf: Any) -> bool:
  if getattr(leaf, 'ndim', 0) < 2:
    return False
  names = [str(getattr(k, 'key', getattr(k, 'name', k))) for k in path]
  # Test the parameter's own name and its module's name ("ln_1/scale", "out_gate/kernel").
  return not any(_NO_DECAY.search(n) for n in names[-2:])


def decay_mask(params: Any) -> Any:
  """``True`` for leaves that get weight decay (see module docstring)."""
  return jax.tree_util.tree_map_with_path(_decays, params)


def make_optimizer(train: ConfigDict) -> optax.GradientTransformation:
  """``clip_by_global_norm(grad_clip) -> adamw(schedule, mask=decay_mask)``."""
  chain = []
  if float(train.grad_clip) > 0:
    chain.append(optax.clip_by_global_norm(float(train.grad_clip)))
  chain.append(
    optax.adamw(
      learning_rate=learning_rate_schedule(train),
      b1=float(train.b1),
      b2=float(train.b2),
      eps=float(train.eps),
      weight_decay=float(train.weight_decay),
      mask=decay_mask,
    )
  )
  return optax.chain(*chain)
