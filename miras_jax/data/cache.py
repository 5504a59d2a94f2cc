"""Raw corpus -> tokenizer and prepared dataset, built once into a cache directory.

A raw corpus (a file, directory or glob; ``fmt`` text/jsonl/parquet) is tokenised once into
``<cache>/prepared/<key>/`` (:mod:`miras_jax.data.prepare`), where the key hashes the corpus
(paths, sizes, modification times), the preparation options and the tokenizer's sha256; later
runs (and resumes) reuse it. Without a tokenizer, a SentencePiece BPE model of ``vocab`` pieces
is trained on the corpus into ``<cache>/tokenizers/spm<vocab>-<key>/``
(:mod:`miras_jax.data.train_tokenizer`). The trainer (miras_jax/train/data.py) and the
quickstart's data recipe (data/quickstart/prepare.py) both build through here.

``corpus_source`` names the built-in corpora: in a comma-separated list, ``default`` is the
quickstart corpus (:mod:`miras_jax.data.default_corpus`, fetched once) and ``recall`` the
synthetic recall corpus (:mod:`miras_jax.data.recall_corpus`, written once).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from miras_jax.data.errors import DataError
from miras_jax.data.prepare import INDEX_FILE, prepare
from miras_jax.data.sources import DEFAULT_EXTENSIONS, list_files

__all__ = ['NotBuiltError', 'corpus_source', 'cached_tokenizer', 'cached_dataset', 'prepare_corpus']


class NotBuiltError(DataError):
  """``build=False`` and the cache does not hold ``path`` (another process should have built it)."""

  def __init__(self, path: Path):
    super().__init__(f'{path} is not built')
    self.path = path


def _hash(obj: Any) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:16]


def corpus_source(corpus: str) -> str:
  """The raw-corpus path(s) behind a ``data.corpus`` string: a comma-separated list in which
  ``default`` names the default corpus (downloaded once) and ``recall`` the synthetic recall
  corpus (miras_jax/data/recall_corpus.py, written once)."""
  parts = [p.strip() for p in str(corpus).split(',')]
  if 'default' not in parts and 'recall' not in parts:
    return corpus
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


def _atomic_build(final: Path, build) -> None:
  """Run ``build(tmp_dir)`` and move the result to ``final`` (first writer wins).

  A failed build (an empty corpus, SentencePiece refusing its settings, ...) leaves nothing:
  besides its temporary directory, the folders made for it are removed again (those still
  empty: another process may be building next to it), so a refused run keeps its workdir as
  it was (the cache may be ``<workdir>/data``).
  """
  made = [d for d in (final.parent, *final.parent.parents) if not d.exists()]
  final.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=f'.{final.name}.', dir=final.parent))
  try:
    build(tmp)
    try:
      os.replace(tmp, final)
    except OSError:
      if not final.exists():
        raise
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for d in made:  # deepest first
      try:
        d.rmdir()
      except OSError:
        break
    raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def cached_tokenizer(source: str, fmt: str, vocab: int, cache: Path, build: bool = True) -> str:
  """``<cache>/tokenizers/spm<vocab>-<key>/tokenizer.model``, trained on ``source`` if absent."""
  key = _hash({'corpus': _fingerprint(source, fmt), 'format': fmt, 'vocab': vocab})
  final = cache / 'tokenizers' / f'spm{vocab}-{key}'
  model = final / 'tokenizer.model'
  if not model.is_file():
    if not build:
      raise NotBuiltError(model)
    from miras_jax.data.train_tokenizer import train_tokenizer  # pylint: disable=import-outside-toplevel

    print(
      f'data: training a {vocab}-piece SentencePiece tokenizer on {source} -> {model}', flush=True
    )
    _atomic_build(final, lambda tmp: train_tokenizer(source, tmp / 'tokenizer', vocab, format=fmt))
  return str(model)


def cached_dataset(
  source: str, tokenizer: str, cache: Path, options: dict[str, Any], build: bool = True
) -> Path:
  """``<cache>/prepared/<key>/``: ``source`` tokenised with ``tokenizer`` by
  :func:`miras_jax.data.prepare.prepare` with ``options`` (format, text_unit, val_fraction,
  max_record_tokens), prepared if absent."""
  from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel

  tok = Tokenizer(tokenizer)
  key = _hash(
    {'corpus': _fingerprint(source, options['format']), 'tokenizer': tok.sha256, **options}
  )
  final = cache / 'prepared' / key
  if not (final / INDEX_FILE).is_file():
    if not build:
      raise NotBuiltError(final)
    print(f'data: preparing {source} with {tokenizer} -> {final}', flush=True)
    _atomic_build(
      final,
      lambda tmp: prepare(source, tokenizer=tok, output_dir=tmp, log_every_docs=0, **options),
    )
  return final


def prepare_corpus(data: Any, cache: Path, model_vocab: int | None, build: bool = True) -> Path:
  """The prepared dataset for the raw corpus of a config's ``data`` section (``corpus``,
  ``format``, ``text_unit``, ``val_fraction``, ``max_record_tokens``, ``tokenizer``,
  ``tokenizer_vocab_size``): its tokenizer is ``data.tokenizer``, else one of
  ``data.tokenizer_vocab_size`` (0: ``model_vocab``) pieces trained into the cache."""
  source = corpus_source(data.corpus)
  if data.tokenizer:
    tokenizer = str(Path(data.tokenizer).expanduser())
  else:
    vocab = int(data.tokenizer_vocab_size) or int(model_vocab or 0)
    if vocab <= 0:
      raise DataError(
        'data.tokenizer is empty and no vocabulary size is known (set data.tokenizer_vocab_size)'
      )
    tokenizer = cached_tokenizer(source, data.format, vocab, cache, build)
  options = {
    'format': data.format,
    'text_unit': data.text_unit,
    'val_fraction': float(data.val_fraction),
    'max_record_tokens': int(data.max_record_tokens),
  }
  return cached_dataset(source, tokenizer, cache, options, build)
