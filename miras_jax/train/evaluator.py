"""The validation loss and the zero-shot ``eval.tasks`` at evaluation steps (a failure is logged
and the run goes on)."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import jax

from miras_jax.train import config as config_lib
from miras_jax.train import data as data_lib
from miras_jax.train import metrics as metrics_lib
from miras_jax.train.metrics import print0
from miras_jax.train.steps import global_batch

log = logging.getLogger('miras_jax.train.loop')


def has_val_split(data_dir: Path) -> bool:
  from miras_jax.data.pipeline import load_index  # pylint: disable=import-outside-toplevel

  split = (load_index(data_dir).get('splits') or {}).get('val') or {}
  return int(split.get('num_docs', 0) or 0) > 0


def _flatten(row: dict[str, float], prefix: str, tree: Any) -> None:
  """The numbers of a nested result dict as ``row['<prefix>/<key>/.../<key>']``."""
  for key, val in tree.items():
    name = f'{prefix}/{key}'
    if isinstance(val, dict):
      _flatten(row, name, val)
    elif isinstance(val, (int, float)) and not isinstance(val, bool):
      row[name] = float(val)


class Evaluator:
  """Validation loss and the zero-shot ``eval.tasks`` at evaluation steps; a failure is logged."""

  def __init__(self, plan: Any, data_dir: Path):  # plan: loop._Plan
    self.plan, self.config, self.data_dir = plan, plan.config, data_dir
    self.has_val = has_val_split(data_dir)
    if not self.has_val:
      print0(f'data: {data_dir} has no val split; the validation loss is not computed')
    self.tasks = [n.strip() for n in str(self.config.eval.tasks).split(',') if n.strip()]
    if self.tasks and jax.process_count() > 1:
      print0('eval.tasks: zero-shot evaluation during training runs on one host only; skipped')
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
        print0(f'step {step} | ' + ' | '.join(f'{k[5:]} {v:.4g}' for k, v in row.items()))
    return val_loss

  def validation_loss(self, params: Any) -> float | None:
    if not self.has_val:
      return None
    total, count = 0.0, 0.0
    batch_size = config_lib.eval_batch_size(self.config)
    for batch in data_lib.val_iterator(self.data_dir, self.config, batch_size):
      s, c = self.plan.eval_step(params, global_batch(batch, self.plan.batch_sharding))
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
      heldout_dir=self.data_dir,  # the run's own validation split (heldout, repeat)
    )
    # 'results' / 'synthetic' group tasks by kind; 'heldout' and 'repeat' are tasks of their own.
    row = {}
    for group in ('results', 'synthetic', 'heldout', 'repeat'):
      tree = res.get(group, {})
      _flatten(row, 'eval', {group: tree} if group in ('heldout', 'repeat') else tree)
    return row

  @staticmethod
  def _guarded(fn, what: str, step: int):
    """An evaluation failure is logged and the run goes on (to its checkpoint)."""
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:300]
      log.error('%s at step %d failed: %s', what, step, reason)
      print0(f'WARNING: {what} at step {step} failed ({reason}); training continues')
      return None
