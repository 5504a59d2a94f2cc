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
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import jax
from ml_collections import ConfigDict

from miras_jax.data.cache import NotBuiltError, prepare_corpus
from miras_jax.data.errors import DataError
from miras_jax.data.pipeline import load_index, make_train_iterator, make_val_iterator
from miras_jax.data.prepare import INDEX_FILE

__all__ = ['resolve_dataset', 'train_iterator', 'val_iterator']

log = logging.getLogger(__name__)


def _cache_dir(data: ConfigDict, workdir: str | os.PathLike) -> Path:
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
    return prepare_corpus(data, _cache_dir(data, workdir), model_vocab, build)
  except NotBuiltError as e:
    raise _not_shared(e.path) from None


def resolve_dataset(
  data: ConfigDict, workdir: str | os.PathLike, model_vocab: int | None = None
) -> Path:
  """The prepared dataset directory for ``config.data`` (preparing it on first use)."""
  corpus = str(data.corpus)
  if corpus != 'default' and (Path(corpus).expanduser() / INDEX_FILE).is_file():
    path = Path(corpus).expanduser()
  elif jax.process_count() == 1:
    path = _prepare_raw(data, workdir, model_vocab)
  else:
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

    path = None
    if jax.process_index() == 0:
      path = _prepare_raw(data, workdir, model_vocab)
    multihost_utils.sync_global_devices('miras_jax.train.data: prepared')
    if path is None:
      path = _prepare_raw(data, workdir, model_vocab, build=False)
  index = load_index(path)
  vocab = int(index['tokenizer']['vocab_size'])
  if model_vocab is not None and vocab > int(model_vocab):
    raise DataError(
      f"tokenizer vocabulary ({vocab}) is larger than the model's vocab_size ({model_vocab}); "
      'raise model.vocab_size or use a smaller tokenizer'
    )
  return path


def train_iterator(path: Path, config: ConfigDict):
  """This process's checkpointable training iterator (per-process batch)."""
  t = config.train
  return make_train_iterator(
    path,
    seq_len=int(t.seq_len),
    batch_size=int(t.batch_size) // jax.process_count(),
    seed=int(config.data.seed),
    process_index=jax.process_index(),
    process_count=jax.process_count(),
    num_threads=int(config.data.num_threads),
    prefetch_buffer_size=max(8, 2 * int(t.batch_size)),
  )


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
