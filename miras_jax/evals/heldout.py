"""Held-out perplexity of a run against a unigram baseline (the ``heldout`` eval task).

The run's own validation split (the prepared dataset of ``config.data``, the documents the
trainer held out) is scored with disjoint rolling windows of the context length, as WikiText
is (`Scorer.loglikelihood_rolling_tokens`), over its first ``max_tokens`` tokens. The
baseline is the unigram model of the training split: ``p(t) = (count(t) + 1) / (N + V)``
(add-one smoothed), the perplexity a model reaches by learning token frequencies alone — the
first thing an LM learns, so a trained model that does not beat it clearly has not learnt
context.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ['heldout_perplexity', 'unigram_log_probs', 'split_docs']


def unigram_log_probs(train_tokens: np.ndarray, vocab_size: int) -> np.ndarray:
  """Add-one smoothed unigram log-probabilities ``[vocab_size]`` of the token ids given."""
  counts = np.bincount(np.asarray(train_tokens, np.int64), minlength=vocab_size)[:vocab_size]
  return np.log((counts + 1.0) / (counts.sum() + vocab_size))


def split_docs(data_dir: str | os.PathLike, split: str) -> Iterator[np.ndarray]:
  """The token ids of each record of a prepared dataset's ``split``, in order (read lazily)."""
  from miras_jax.data.pipeline import split_dataset  # pylint: disable=import-outside-toplevel

  ds = split_dataset(Path(data_dir), split)
  for i in range(len(ds)):
    yield ds[i]['tokens']


def _split_tokens(data_dir: Path, split: str, max_tokens: int | None) -> list[np.ndarray]:
  docs, total = [], 0
  for toks in split_docs(data_dir, split):
    if max_tokens is not None:
      toks = toks[: max_tokens - total]
    docs.append(toks)
    total += len(toks)
    if max_tokens is not None and total >= max_tokens:
      break
  return docs


def heldout_perplexity(
  scorer: Any, data_dir: str | os.PathLike, vocab_size: int, max_tokens: int = 16384
) -> dict[str, Any]:
  """``{'perplexity', 'unigram_perplexity', 'tokens'}`` on the first ``max_tokens`` validation
  tokens of the prepared dataset ``data_dir``."""
  data_dir = Path(data_dir)
  val = _split_tokens(data_dir, 'val', max_tokens)
  logp = unigram_log_probs(np.concatenate(_split_tokens(data_dir, 'train', None)), vocab_size)
  n = int(sum(len(d) for d in val))
  model_ll = float(sum(scorer.loglikelihood_rolling_tokens([d.tolist() for d in val])))
  base_ll = float(sum(logp[d].sum() for d in val))
  return {
    'perplexity': math.exp(-model_ll / n),
    'unigram_perplexity': math.exp(-base_ll / n),
    'tokens': n,
  }
