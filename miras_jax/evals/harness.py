"""Run tasks on a model and make the papers' table.

``evaluate(params, model_cfg, tokenizer, tasks, data_dir, limit, batch_size, max_len)``
is the one entry point (the CLI and the trainer call it). It returns::

    {"results": {task: {metric: value, ..., "num_docs": n}},   # lm-eval names
     "table": {"Wiki. ppl": .., "LMB. ppl": .., "LMB. acc": .., "PIQA acc": ..,
               "Hella. acc_n": .., "Wino. acc": .., "ARC-e acc": .., "ARC-c acc_n": ..,
               "SIQA acc": .., "BoolQ acc": .., "Avg.": ..},  # accuracies in %
     "synthetic": {"niah": {...}, "mqar": {...},              # when asked for
                   "copy": {..., "init": {...}},              # init: with init_params
                   "copy_fixed": {..., "init": {...}}},
     "heldout": {...}, "repeat": {"trained": {...}, "init": {...}},  # the run's own split
     "settings": {...}}

"Avg." is the mean of the accuracy columns present (the papers average the
eight accuracies, not the perplexities).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from miras_jax.evals import synthetic
from miras_jax.evals.scoring import Scorer, make_apply_fn
from miras_jax.evals.tasks import (
  ALIASES,
  PAPER_TASKS,
  TASKS,
  LoglikelihoodDoc,
  MultipleChoiceDoc,
  aggregate,
  load_task,
)
from miras_jax.models.config import LMConfig

__all__ = [
  'evaluate',
  'run_tasks',
  'paper_table',
  'format_table',
  'TABLE_COLUMNS',
  'SYNTHETIC_TASKS',
  'RUN_TASKS',
  'parse_tasks',
]

# (column, task, metric, is accuracy)
TABLE_COLUMNS = (
  ('Wiki. ppl', 'wikitext', 'word_perplexity', False),
  ('LMB. ppl', 'lambada', 'perplexity', False),
  ('LMB. acc', 'lambada', 'acc', True),
  ('PIQA acc', 'piqa', 'acc', True),
  ('Hella. acc_n', 'hellaswag', 'acc_norm', True),
  ('Wino. acc', 'winogrande', 'acc', True),
  ('ARC-e acc', 'arc_easy', 'acc', True),
  ('ARC-c acc_n', 'arc_challenge', 'acc_norm', True),
  ('SIQA acc', 'siqa', 'acc', True),
  ('BoolQ acc', 'boolq', 'acc', True),
)
SYNTHETIC_TASKS = ('niah', 'mqar', 'copy', 'copy_fixed')
# the run's own validation split: perplexity (evals/heldout.py), recall of a passage read twice
# (evals/repeat.py)
RUN_TASKS = ('heldout', 'repeat')


def parse_tasks(tasks: str | Sequence[str] | None) -> list[str]:
  """``'piqa,lambada'`` / a list / ``'all'`` / ``'paper'`` -> task names (aliases resolved)."""
  if tasks is None or tasks in ('all', 'paper') or tasks == ['all']:
    return list(PAPER_TASKS)
  if isinstance(tasks, str):
    tasks = [t.strip() for t in tasks.split(',') if t.strip()]
  out = []
  for t in tasks:
    t = ALIASES.get(t, t)
    if t in ('all', 'paper'):
      out += [x for x in PAPER_TASKS if x not in out]
    elif t not in TASKS and t not in SYNTHETIC_TASKS and t not in RUN_TASKS:
      known = ', '.join([*TASKS, *SYNTHETIC_TASKS, *RUN_TASKS])
      raise ValueError(f'unknown task {t!r}; known: {known}')
    elif t not in out:
      out.append(t)
  return out


def run_tasks(
  scorer: Scorer,
  tasks: Sequence[str],
  data_dir: Any = None,
  limit: int | None = None,
  verbose: bool = False,
) -> dict[str, dict[str, float]]:
  """lm-eval metrics of the zero-shot ``tasks`` with ``scorer``."""
  results = {}
  for name in tasks:
    t0 = time.time()
    docs = load_task(name, data_dir, limit)
    if TASKS[ALIASES.get(name, name)].kind == 'rolling':
      lls = scorer.loglikelihood_rolling([d.text for d in docs])
      per_doc = [d.metrics([ll]) for d, ll in zip(docs, lls)]
    else:
      flat = [req for d in docs for req in d.requests]
      res = scorer.loglikelihood(flat)
      per_doc, k = [], 0
      for d in docs:
        assert isinstance(d, (MultipleChoiceDoc, LoglikelihoodDoc))
        n = len(d.requests)
        per_doc.append(d.metrics(res[k : k + n]))
        k += n
    metrics = aggregate(per_doc)
    metrics['num_docs'] = len(docs)
    results[name] = metrics
    if verbose:
      shown = ', '.join(f'{k}={v:.4g}' for k, v in metrics.items() if k != 'num_docs')
      print(f'{name}: {shown} ({len(docs)} docs, {time.time() - t0:.1f}s)', flush=True)
  return results


def paper_table(results: dict[str, dict[str, float]]) -> dict[str, float]:
  """The papers' columns (accuracies in %) and their average, for the tasks present."""
  table, accs = {}, []
  for col, task, metric, is_acc in TABLE_COLUMNS:
    if task in results and metric in results[task]:
      v = results[task][metric]
      table[col] = 100.0 * v if is_acc else v
      if is_acc:
        accs.append(100.0 * v)
  if accs:
    table['Avg.'] = float(np.mean(accs))
  return table


def format_table(table: dict[str, float]) -> str:
  """A Markdown table of :func:`paper_table`'s columns."""
  if not table:
    return '(no zero-shot tasks)'
  cols = list(table)
  widths = [max(len(c), 6) for c in cols]
  head = '| ' + ' | '.join(c.rjust(w) for c, w in zip(cols, widths)) + ' |'
  sep = '|' + '|'.join('-' * (w + 1) + ':' for w in widths) + '|'
  vals = (
    '| '
    + ' | '.join(
      (f'{table[c]:.2f}' if math.isfinite(table[c]) else 'inf').rjust(w)
      for c, w in zip(cols, widths)
    )
    + ' |'
  )
  return '\n'.join([head, sep, vals])


def evaluate(
  params: Any,
  model_cfg: Any,
  tokenizer: Any,
  tasks: str | Sequence[str] | None = None,
  data_dir: Any = None,
  limit: int | None = None,
  batch_size: int = 8,
  max_len: int | None = None,
  *,
  pack: bool = False,
  apply_fn: Callable | None = None,
  prefix_token_id: int | None = None,
  niah_lengths: Sequence[int] = (1024, 2048, 4096, 8192, 16384),
  niah_samples: int = 10,
  niah_variants: Sequence[str] = synthetic.NIAH_VARIANTS,
  mqar_pairs: Sequence[int] = (8, 32, 128, 256),
  mqar_samples: int = 10,
  copy_words: Sequence[int] = (8, 16),
  copy_samples: int = 16,
  copy_fixed_length: int = 8,
  copy_fixed_samples: int = 32,
  heldout_dir: Any = None,
  heldout_tokens: int = 16384,
  repeat_passages: int = 64,
  repeat_length: int = 0,
  init_params: Any = None,
  seed: int = 0,
  verbose: bool = False,
) -> dict[str, Any]:
  """Evaluate ``params`` of the model ``model_cfg`` on ``tasks`` (see the module docstring).

  Args:
      params: the parameter tree (``model.init(...)['params']``).
      model_cfg: the model's config: an `LMConfig`, or anything `LMConfig.from_config` reads
          (a ConfigDict's model section, the mapping of a saved config.json); converted once
          here. The model is built from it unless ``apply_fn`` is given.
      tokenizer: a ``Tokenizer`` or the path of a SentencePiece ``.model``.
      tasks: names (or a comma-separated string); default: the papers' nine tasks.
      data_dir: where the task files are (default ``$MIRAS_SHARED_DATA`` or ../shared/data).
      limit: only the first ``limit`` documents of each task.
      batch_size: rows per forward pass.
      max_len: context length (truncation and rolling windows); default the model's
          ``max_len``.
      pack: several requests per row (segments) instead of one per row; same results.
      apply_fn: ``(params, tokens, segment_ids, positions) -> logits``, to bypass ``model_cfg``.
      heldout_dir: the run's prepared dataset, for the ``heldout`` and ``repeat`` tasks.
      repeat_passages, repeat_length: the ``repeat`` task's validation passages, each read
          twice (evals/repeat.py); length 0: half the context.
      copy_fixed_length, copy_fixed_samples: the ``copy_fixed`` task's blocks (the run's
          ``data.copy_length``; evals/synthetic.py).
      init_params: the same model at initialisation; the ``repeat``, ``copy`` and
          ``copy_fixed`` tasks score it too (the copy tasks' scores at initialisation go under
          their ``'init'`` key).
  """
  if isinstance(tokenizer, str) or hasattr(tokenizer, '__fspath__'):
    from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel

    tokenizer = Tokenizer(tokenizer)
  # The model's config enters here and is converted once (a ConfigDict's model section, a
  # mapping such as a checkpoint's JSON, or an LMConfig already).
  cfg = None if model_cfg is None else LMConfig.from_config(model_cfg)
  if apply_fn is None:
    from miras_jax.models import build_model  # pylint: disable=import-outside-toplevel

    apply_fn = make_apply_fn(build_model(cfg))
  if max_len is None:
    max_len = cfg.max_len
  names = parse_tasks(tasks)
  t0 = time.time()
  align = 1
  if pack and cfg is not None:
    align = cfg.chunk_size
    if 'mac' in cfg.pattern:  # MAC segments lie on the row grid too
      align = cfg.window  # a multiple of chunk_size (models/mac.py)
  scorer = Scorer(
    apply_fn,
    params,
    tokenizer,
    max_len=max_len,
    batch_size=batch_size,
    pack=pack,
    prefix_token_id=prefix_token_id,
    pad_id=getattr(tokenizer, 'pad_id', 0),
    pack_align=align,
    verbose=verbose,
  )
  zero_shot = [n for n in names if n not in SYNTHETIC_TASKS and n not in RUN_TASKS]
  results = run_tasks(scorer, zero_shot, data_dir, limit, verbose)
  out: dict[str, Any] = {'results': results, 'table': paper_table(results)}
  budget = batch_size * max_len  # tokens per forward pass for the long synthetic prompts

  def factory(length: int, weights: Any = params) -> Scorer:
    return Scorer(
      apply_fn,
      weights,
      tokenizer,
      max_len=length,
      batch_size=max(1, budget // length),
      pack=False,
      prefix_token_id=prefix_token_id,
      verbose=verbose,
    )

  if 'niah' in names:
    out.setdefault('synthetic', {})['niah'] = synthetic.run_niah(
      factory, tokenizer, niah_lengths, niah_variants, niah_samples, seed
    )
  if 'mqar' in names:
    out.setdefault('synthetic', {})['mqar'] = synthetic.run_mqar(
      factory, tokenizer, mqar_pairs, mqar_samples, seed
    )
  if 'copy' in names:
    copy = synthetic.run_copy(factory, tokenizer, copy_words, copy_samples, seed)
    if init_params is not None:  # what training added: the same model at step 0
      copy['init'] = synthetic.run_copy(
        lambda n: factory(n, init_params), tokenizer, copy_words, copy_samples, seed
      )
    out.setdefault('synthetic', {})['copy'] = copy
  if 'copy_fixed' in names:
    args = (tokenizer, copy_fixed_length, copy_fixed_samples, seed)
    blocks = factory(2 * copy_fixed_length + 1)
    fixed = synthetic.run_copy_fixed(blocks, *args)
    if init_params is not None:  # the same compiled scorer, the parameters at step 0
      fixed['init'] = synthetic.run_copy_fixed(blocks.with_params(init_params), *args)
    out.setdefault('synthetic', {})['copy_fixed'] = fixed
  if 'heldout' in names:
    if heldout_dir is None:
      raise ValueError("the heldout task needs the run's prepared dataset (heldout_dir)")
    from miras_jax.evals.heldout import heldout_perplexity  # pylint: disable=import-outside-toplevel

    vocab = int(getattr(tokenizer, 'vocab_size', 0) or 0)
    out['heldout'] = heldout_perplexity(scorer, heldout_dir, vocab, heldout_tokens)
  if 'repeat' in names:
    if heldout_dir is None:
      raise ValueError("the repeat task needs the run's prepared dataset (heldout_dir)")
    from miras_jax.evals import repeat as repeat_lib  # pylint: disable=import-outside-toplevel
    from miras_jax.evals.heldout import split_docs  # pylint: disable=import-outside-toplevel

    segments = repeat_lib.repeat_segments(
      split_docs(heldout_dir, 'val'), repeat_length or max_len // 2, repeat_passages
    )
    out['repeat'] = {'trained': repeat_lib.repeat_scores(scorer, segments)}
    if init_params is not None:
      at_init = Scorer(
        apply_fn,
        init_params,
        tokenizer,
        max_len=max_len,
        batch_size=batch_size,
        prefix_token_id=prefix_token_id,
        pad_id=getattr(tokenizer, 'pad_id', 0),
      )
      out['repeat']['init'] = repeat_lib.repeat_scores(at_init, segments)
  out['settings'] = {
    'tasks': names,
    'limit': limit,
    'batch_size': batch_size,
    'max_len': max_len,
    'pack': pack,
    'prefix_token_id': scorer.prefix_token_id,
    'seconds': time.time() - t0,
  }
  return out
