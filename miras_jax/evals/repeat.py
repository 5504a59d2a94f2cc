"""In-context recall of a passage just read (the ``repeat`` eval task).

Held-out passages of ``L`` tokens are read twice in a row, ``[prefix ; s ; s]``, and the model's
loss (and greedy next-token accuracy) on the second reading is compared with the first. The
first reading is ordinary language modelling; on the second every token is in the context
already, so what the loss drops by is what the model recalls from its context — the memories'
job. This is the repeated-sequence test of Olsson et al. 2022 ("In-context Learning and
Induction Heads", §2: the in-context learning score compares the loss late in a context with
the loss early in it; a repeated random sequence isolates copying). Run on the model at
initialisation too (``model.init`` with the run's seed: the trainer's step 0), it shows the
drop was learnt: an untrained model predicts both readings equally badly.

Passages come from the run's own validation split (documents the trainer never saw): the first
``count`` disjoint windows of ``L`` tokens, documents in order. Position 0 of each reading is
not scored (it follows the prefix / the end of the first reading, which the text does not
imply), so each reading contributes positions ``1 .. L-1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
  'repeat_segments',
  'reading_positions',
  'repeat_scores',
  'initial_params',
  'format_repeat',
]


def repeat_segments(docs: Sequence[Sequence[int]], length: int, count: int) -> list[list[int]]:
  """The first ``count`` disjoint ``length``-token windows of ``docs`` (in order; a document's
  tail shorter than ``length`` is skipped)."""
  if length < 2:
    raise ValueError(f'the repeat task needs passages of at least 2 tokens, got {length}')
  out: list[list[int]] = []
  for doc in docs:
    doc = list(doc)
    for start in range(0, len(doc) - length + 1, length):
      out.append([int(t) for t in doc[start : start + length]])
      if len(out) == count:
        return out
  return out


def reading_positions(length: int) -> tuple[np.ndarray, np.ndarray]:
  """Indices into the scored continuation ``s + s`` (``2 * length`` tokens) of the first and
  the second reading, each without its position 0."""
  first = np.arange(1, length)
  return first, first + length


def repeat_scores(scorer: Any, segments: Sequence[Sequence[int]]) -> dict[str, float]:
  """Mean loss (nats per token) and greedy accuracy on each reading of ``segments``.

  ``scorer`` is a :class:`miras_jax.evals.scoring.Scorer` (``token_scores``); each request is
  ``([prefix], s + s)``, so ``2 * len(s) + 1`` tokens must fit its ``max_len + 1``.
  Returns ``{first_loss, second_loss, first_acc, second_acc, passages, length}``.
  """
  if not segments:
    raise ValueError('the repeat task found no passage (the validation split is too short)')
  lengths = {len(s) for s in segments}
  if len(lengths) != 1:
    raise ValueError(f'repeat passages must have one length, got {sorted(lengths)}')
  (length,) = lengths
  if 2 * length > scorer.max_len:
    raise ValueError(
      f'a passage read twice ({2 * length} tokens) does not fit the context of {scorer.max_len}'
    )
  first, second = reading_positions(length)
  res = scorer.token_scores([([], list(s) + list(s)) for s in segments])
  ll = np.stack([r[0] for r in res])  # [passages, 2L]
  hit = np.stack([r[1] for r in res]).astype(np.float64)
  return {
    'first_loss': float(-ll[:, first].mean()),
    'second_loss': float(-ll[:, second].mean()),
    'first_acc': float(hit[:, first].mean()),
    'second_acc': float(hit[:, second].mean()),
    'passages': len(segments),
    'length': int(length),
  }


def initial_params(model_cfg: Any, seed: int) -> Any:
  """The parameters ``model.init`` gives with ``jax.random.key(seed)``: the trainer's step 0
  (train/loop.py initialises with the config's ``seed`` the same way; the values do not depend
  on the dummy batch's shape)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import linen as nn  # pylint: disable=import-outside-toplevel

  from miras_jax.models import build_model  # pylint: disable=import-outside-toplevel

  model = build_model(model_cfg)
  dummy = jnp.zeros((1, int(model.cfg.chunk_size or 1)), jnp.int32)
  return nn.meta.unbox(jax.jit(model.init)(jax.random.key(int(seed)), dummy)['params'])


def format_repeat(res: dict[str, Any]) -> str:
  """Console lines of the ``repeat`` task: ``{'trained': scores, 'init': scores (optional)}``."""
  t = res['trained']

  def drop(r: dict[str, float]) -> str:
    return (
      f'loss {r["first_loss"]:.2f} -> {r["second_loss"]:.2f}, '
      f'accuracy {100 * r["first_acc"]:.0f}% -> {100 * r["second_acc"]:.0f}%'
    )

  line = (
    f'in-context recall ({t["passages"]} held-out passages of {t["length"]} tokens, each read '
    f'twice; first reading -> second): {drop(t)}'
  )
  if 'init' in res:
    line += f'\n  the same model at initialisation: {drop(res["init"])}'
  return line
