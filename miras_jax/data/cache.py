"""From ``config.data`` to a prepared dataset directory and grain iterators.

``data.corpus`` is one of:

* a prepared directory (holding ``index.json`` from :mod:`miras_jax.data.prepare`):
  used as is;
* ``'default'``: the quickstart corpus (:func:`~miras_jax.data.default_corpus.ensure_default_corpus`);
* raw text (a file, directory or glob; ``data.format`` text/jsonl/parquet).

Raw corpora are tokenised once into ``<cache>/prepared/<key>/`` where the key
hashes the corpus (paths, sizes, modification times), the preparation options
and the tokenizer's sha256; later runs (and resumes) reuse it. The cache is
``data.cache_dir`` or ``<workdir>/data``. Without ``data.tokenizer`` a
SentencePiece BPE model of ``data.tokenizer_vocab_size`` (0: the model's
``vocab_size``) is trained on the corpus into ``<cache>/tokenizers/<key>/``.

With several processes, process 0 prepares while the others wait at a
barrier; the cache must then be on a filesystem all processes see (or point
``data.corpus`` at a dataset prepared beforehand).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
from ml_collections import ConfigDict

from miras_jax.data.errors import DataError
from miras_jax.data.pipeline import load_index, make_train_iterator, make_val_iterator
from miras_jax.data.prepare import INDEX_FILE, prepare
from miras_jax.data.sources import DEFAULT_EXTENSIONS, list_files

__all__ = ['resolve_dataset', 'train_iterator', 'val_iterator', 'corpus_source']

log = logging.getLogger(__name__)


def _hash(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def corpus_source(data: ConfigDict) -> str:
  """The raw-corpus path(s) behind ``data.corpus``: a comma-separated list in which ``default``
  names the default corpus (downloaded once) and ``recall`` the synthetic recall corpus
  (miras_jax/data/recall_corpus.py, written once)."""
  parts = [p.strip() for p in str(data.corpus).split(',')]
  if 'default' not in parts and 'recall' not in parts:
    return data.corpus
  from miras_jax.data.default_corpus import ensure_default_corpus  # pylint: disable=import-outside-toplevel
  from miras_jax.data.recall_corpus import ensure_recall_corpus  # pylint: disable=import-outside-toplevel

  named = {'default': ensure_default_corpus, 'recall': ensure_recall_corpus}
  return ','.join(named[p]() if p in named else p for p in parts)


def _fingerprint(source: str, fmt: str) -> list[Any]:
  files = list_files(source, DEFAULT_EXTENSIONS.get(fmt, ('.txt',)))
  out = []
  for f in files:
    st = os.stat(f)
    out.append([str(Path(f).resolve()), st.st_size, int(st.st_mtime)])
  return out


def _cache_dir(data: ConfigDict, workdir: str | os.PathLike) -> Path:
  return Path(data.cache_dir).expanduser() if data.cache_dir else Path(workdir) / 'data'


def _atomic_build(final: Path, build) -> None:
  """Run ``build(tmp_dir)`` and move the result to ``final`` (first writer wins)."""
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{final.name}.', dir=final.parent))
  try:
    build(tmp)
    try:
      os.replace(tmp, final)
    except OSError:
      if not final.exists():
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def _not_shared(path: Path) -> DataError:
  return DataError(
    f'{path} (written by process 0) is not visible to process {jax.process_index()}; put '
    'data.cache_dir on a filesystem shared by all hosts or point data.corpus at a prepared dataset'
  )


def _tokenizer(
  data: ConfigDict, source: str, cache: Path, model_vocab: int | None, build: bool
) -> str:
  if data.tokenizer:
    return str(Path(data.tokenizer).expanduser())
  vocab = int(data.tokenizer_vocab_size) or int(model_vocab or 0)
  if vocab <= 0:
    raise DataError(
      'data.tokenizer is empty and no vocabulary size is known (set data.tokenizer_vocab_size)'
    )
  key = _hash({'corpus': _fingerprint(source, data.format), 'format': data.format, 'vocab': vocab})
  final = cache / 'tokenizers' / f'spm{vocab}-{key}'
  model = final / 'tokenizer.model'
  if not model.is_file():
    if not build:
      raise _not_shared(model)
    from miras_jax.data.train_tokenizer import train_tokenizer  # pylint: disable=import-outside-toplevel

    print(
      f'data: training a {vocab}-piece SentencePiece tokenizer on {source} -> {model}', flush=True
    )
    _atomic_build(
      final, lambda tmp: train_tokenizer(source, tmp / 'tokenizer', vocab, format=data.format)
    )
  return str(model)


def _prepare_raw(
  data: ConfigDict, workdir: str | os.PathLike, model_vocab: int | None, build: bool = True
) -> Path:
  source = corpus_source(data)
  cache = _cache_dir(data, workdir)
  tokenizer = _tokenizer(data, source, cache, model_vocab, build)
  from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel

  tok = Tokenizer(tokenizer)
  options = {
    'format': data.format,
    'text_unit': data.text_unit,
    'val_fraction': float(data.val_fraction),
    'max_record_tokens': int(data.max_record_tokens),
  }
  key = _hash({'corpus': _fingerprint(source, data.format), 'tokenizer': tok.sha256, **options})
  final = cache / 'prepared' / key
  if not (final / INDEX_FILE).is_file():
    if not build:
      raise _not_shared(final)
    print(f'data: preparing {source} with {tokenizer} -> {final}', flush=True)
    _atomic_build(
      final,
      lambda tmp: prepare(source, tokenizer=tok, output_dir=tmp, log_every_docs=0, **options),
    )
  return final


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
