"""From ``config.data`` to a prepared dataset directory and grain iterators.

``data.corpus`` is one of:

* a prepared directory (holding ``index.json`` from :mod:`miras_jax.data.prepare`):
  used as is;
* ``'default'``: the quickstart corpus (:func:`~miras_jax.data.default_corpus.ensure_default_corpus`);
* raw text (a file, directory or glob; ``data.format`` text/jsonl/parquet).

Raw corpora are tokenised once into a cache (:mod:`miras_jax.data.cache`, which
also trains the tokenizer): ``data.cache_dir`` or ``<workdir>/data``. Without
``data.tokenizer`` a SentencePiece BPE model of ``data.tokenizer_vocab_size``
(0: the model's ``vocab_size``) is trained on the corpus. This module only
resolves ``config.data`` to a prepared directory and builds the iterators.

With several processes, process 0 prepares while the others wait at a
barrier; the cache must then be on a filesystem all processes see (or point
``data.corpus`` at a dataset prepared beforehand).

Data shards (:class:`ShardedTrainIterator`). The training stream is defined by
a number of *data shards* S, fixed when a run starts (``data.shards``; 0: the
process count) and kept by its checkpoints: shard s is the grain pipeline of
:func:`~miras_jax.data.pipeline.build_train_dataset` with process slot s of S
and ``batch_size / S`` rows, and the global batch of a step is shard 0's rows,
then shard 1's, ... So the global batch sequence depends on S and the seed
only, never on how many processes read it. A run resumed on P processes reads:

* S divisible by P: shards ``[p*S/P, (p+1)*S/P)`` on process p, whole (each
  host still reads only its own documents);
* P divisible by S: shard ``p // (P/S)`` on process p, of which it keeps its
  ``1/(P/S)`` slice of rows (the P/S processes of one shard each read it whole:
  the cost of an exact position);
* otherwise the position cannot be split exactly and the resume is refused
  (:func:`shard_plan`).

Each shard's grain state is saved (every process saves the states of the
shards it reads) and restored into the same shard, so a resume on another
process count continues with exactly the batches the saved run would have
read next. This was chosen over re-deriving a position from the step: grain's
concat-and-split packing has no random access (a row's content depends on
every earlier document's length), so only its own saved state is exact.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
from ml_collections import ConfigDict

from miras_jax.data.cache import NotBuiltError, prepare_corpus
from miras_jax.data.copy_task import copy_alphabet
from miras_jax.data.errors import DataError
from miras_jax.data.pipeline import load_index, make_train_iterator, make_val_iterator
from miras_jax.data.prepare import INDEX_FILE
from miras_jax.train import config as config_lib

__all__ = [
  'cache_dir',
  'resolve_dataset',
  'train_iterator',
  'val_iterator',
  'shard_plan',
  'merge_saved_states',
  'ShardedTrainIterator',
]

log = logging.getLogger(__name__)


def cache_dir(data: ConfigDict, workdir: str | os.PathLike) -> Path:
  """Where raw corpora are prepared (and tokenizers trained): ``data.cache_dir`` or
  ``<workdir>/data``."""
  return Path(data.cache_dir).expanduser() if data.cache_dir else Path(workdir) / 'data'


def _not_shared(path: Path) -> DataError:
  return DataError(
    f'{path} (written by process 0) is not visible to process {jax.process_index()}; put '
    'data.cache_dir on a filesystem shared by all hosts or point data.corpus at a prepared dataset'
  )


def _prepare_raw(
  data: ConfigDict, workdir: str | os.PathLike, model_vocab: int | None, build: bool = True
) -> Path:
  try:
    return prepare_corpus(data, cache_dir(data, workdir), model_vocab, build)
  except NotBuiltError as e:
    raise _not_shared(e.path) from None


def _check_copy_tokenizer(data: ConfigDict, tokenizer: str | os.PathLike) -> None:
  """With ``data.copy_fraction`` > 0: the one-line ``DataError`` of a ``tokenizer`` without the
  copy task's alphabet (its byte-fallback pieces), now; the pipeline only looks at the first batch."""
  if float(data.get('copy_fraction', 0.0) or 0.0) > 0:
    copy_alphabet(tokenizer)


def _check_vocab(
  vocab: int,
  model_vocab: int | None,
  what: str = 'tokenizer vocabulary',
  fix: str = 'use a smaller tokenizer',
) -> None:
  """The one-line ``DataError`` of a tokenizer whose ids the model's embedding cannot look up."""
  if model_vocab is not None and int(vocab) > int(model_vocab):
    raise DataError(
      f"{what} ({vocab}) is larger than the model's vocab_size ({model_vocab}); "
      f'raise model.vocab_size or {fix}'
    )


def resolve_dataset(
  data: ConfigDict, workdir: str | os.PathLike, model_vocab: int | None = None
) -> Path:
  """The prepared dataset directory for ``config.data`` (preparing it on first use).

  A tokenizer the model cannot use (more pieces than ``model_vocab``) or the copy task cannot
  use (``data.copy_fraction`` > 0, no byte-fallback pieces) is refused before anything is
  prepared: a prepared directory's tokenizer from its index, a given ``data.tokenizer`` from its
  model file, a tokenizer still to be trained from ``data.tokenizer_vocab_size`` (SentencePiece
  makes exactly that many pieces, or fails). The cache may be ``<workdir>/data``, so a refused
  run must not have written it.
  """
  corpus = str(data.corpus)
  if corpus != 'default' and (Path(corpus).expanduser() / INDEX_FILE).is_file():
    path = Path(corpus).expanduser()
    tokenizer = load_index(path)['tokenizer']
    _check_vocab(tokenizer['vocab_size'], model_vocab)
    _check_copy_tokenizer(data, tokenizer['path'])
    return path
  if data.get('tokenizer'):
    from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel

    given = Path(str(data.tokenizer)).expanduser()
    _check_vocab(Tokenizer(given).vocab_size, model_vocab)  # (a one-line error if it is missing)
    _check_copy_tokenizer(data, given)
  else:  # trained into the cache with byte fallback (data/cache.py), so the copy task can use it
    vocab = int(data.tokenizer_vocab_size or 0)
    _check_vocab(vocab, model_vocab, 'data.tokenizer_vocab_size', "lower it (0: the model's)")
  if jax.process_count() == 1:
    return _prepare_raw(data, workdir, model_vocab)
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  path = None
  if jax.process_index() == 0:
    path = _prepare_raw(data, workdir, model_vocab)
  multihost_utils.sync_global_devices('miras_jax.train.data: prepared')
  return path or _prepare_raw(data, workdir, model_vocab, build=False)


def shard_plan(
  num_shards: int, process_index: int, process_count: int
) -> tuple[list[int], int, int]:
  """(shards process ``process_index`` reads, its slice j of each shard batch, slices per shard m).

  Raises :class:`DataError` (one line) when neither of S and P divides the other.
  """
  if num_shards % process_count == 0:
    per = num_shards // process_count
    return list(range(process_index * per, (process_index + 1) * per)), 0, 1
  if process_count % num_shards == 0:
    m = process_count // num_shards
    return [process_index // m], process_index % m, m
  raise DataError(
    f'the data position was saved for {num_shards} data shard(s), which cannot be split exactly '
    f'over {process_count} processes (one of the two must divide the other)'
  )


def merge_saved_states(states: list[dict[str, Any]]) -> dict[str, Any]:
  """The saved per-process data states of one step as ``{'num_shards': S, 'shards': {s: state}}``.

  Accepts :meth:`ShardedTrainIterator.get_state` dicts and, from checkpoints written before data
  shards existed, a bare pipeline state (its process slot is its shard).
  """
  num_shards, shards = None, {}
  for state in states:
    if isinstance(state, dict) and 'shards' in state and 'num_shards' in state:
      n, items = int(state['num_shards']), {int(k): v for k, v in state['shards'].items()}
    elif isinstance(state, dict) and isinstance(state.get('pipeline'), dict):
      n = int(state['pipeline']['process_count'])
      items = {int(state['pipeline']['process_index']): state}
    else:
      raise DataError('not a miras_jax data-iterator state')
    if num_shards not in (None, n):
      raise DataError(f'data states of {num_shards} and of {n} shards in one checkpoint')
    num_shards = n
    shards.update(items)
  if num_shards is None:
    raise DataError('no data-iterator state')
  return {'num_shards': num_shards, 'shards': shards}


class ShardedTrainIterator:
  """This process's batches of the S-shard training stream (see the module docstring).

  ``next()`` gives ``{key: [batch_size / P, T]}``; :meth:`get_state` / :meth:`set_state`
  save and restore the position of every shard read here. The grain pipelines are built on
  the first ``next`` or ``set_state`` (a restored state brings its own S). The process slot
  defaults to JAX's (``process_index`` / ``process_count`` are for tests).
  """

  def __init__(
    self,
    path: Path,
    config: ConfigDict,
    process_index: int | None = None,
    process_count: int | None = None,
  ):
    self.path, self.config = path, config
    self.process_index = jax.process_index() if process_index is None else int(process_index)
    self.process_count = jax.process_count() if process_count is None else int(process_count)
    self.num_shards = int(config.data.get('shards', 0) or 0) or self.process_count
    self._iters: dict[int, Any] | None = None

  def _build(self, num_shards: int) -> None:
    t = self.config.train
    rows = int(t.batch_size) // num_shards
    self.num_shards = num_shards
    self.shards, self.slice, self.slices = shard_plan(
      num_shards, self.process_index, self.process_count
    )
    self._iters = {
      s: make_train_iterator(
        self.path,
        seq_len=int(t.seq_len),
        batch_size=rows,
        seed=int(self.config.data.seed),
        process_index=s,
        process_count=num_shards,
        num_threads=int(self.config.data.num_threads),
        prefetch_buffer_size=max(8, 2 * int(t.batch_size)),
        copy_rows=config_lib.copy_rows(self.config.data, rows),
        copy_length=int(self.config.data.get('copy_length', 8)),
      )
      for s in self.shards
    }

  def build(self) -> None:
    """Build the pipelines of a fresh run now (a no-op once built): their one-line
    ``DataError`` (e.g. fewer records than data shards) then come before the run writes
    anything, not at its first batch."""
    if self._iters is None:
      self._build(self.num_shards)

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    self.build()
    parts = [next(self._iters[s]) for s in self.shards]
    batch = {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}
    if self.slices > 1:
      rows = batch['inputs'].shape[0] // self.slices
      batch = {k: v[self.slice * rows : (self.slice + 1) * rows] for k, v in batch.items()}
    return batch

  def get_state(self) -> dict[str, Any]:
    self.build()
    return {
      'num_shards': self.num_shards,
      'shards': {str(s): it.get_state() for s, it in self._iters.items()},
    }

  def set_state(self, state: dict[str, Any]) -> None:
    """Resume from :func:`merge_saved_states` of a checkpoint's files (or one ``get_state``)."""
    state = merge_saved_states([state])
    asked = int(self.config.data.get('shards', 0) or 0)
    if asked and asked != state['num_shards'] and self.process_index == 0:
      print(
        f"data: data.shards={asked} ignored: the checkpoint's data position has "
        f'{state["num_shards"]} shards, which this run keeps',
        flush=True,
      )
    self._build(state['num_shards'])
    missing = [s for s in self.shards if s not in state['shards']]
    if missing:
      raise DataError(
        f'the checkpoint has no data position for shard(s) {missing} of {state["num_shards"]}'
      )
    for s, it in self._iters.items():
      it.set_state(state['shards'][s])


def train_iterator(path: Path, config: ConfigDict) -> ShardedTrainIterator:
  """This process's checkpointable training iterator (``batch_size / processes`` rows a step)."""
  return ShardedTrainIterator(path, config)


def val_iterator(path: Path, config: ConfigDict, batch_size: int):
  """A fresh pass over the val split: ``eval.num_batches`` batches of ``batch_size / processes`` rows."""
  return make_val_iterator(
    path,
    seq_len=int(config.train.seq_len),
    batch_size=batch_size // jax.process_count(),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_batches=int(config.eval.num_batches) or None,
    num_threads=int(config.data.num_threads),
  )
