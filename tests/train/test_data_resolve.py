"""config.data -> prepared dataset: raw text is tokenised once (cached), prepared dirs are used as is."""

from __future__ import annotations

import os

import pytest

from miras_jax.data.errors import DataError
from miras_jax.train import data as data_lib
from miras_jax.train import defaults as base


def _data_cfg(corpus, **kw):
  d = base.defaults().data
  d.corpus = str(corpus)
  for k, v in kw.items():
    d[k] = v
  return d


def test_raw_text_is_prepared_once_and_cached(tmp_path, tinyshakespeare):
  corpus = tmp_path / 'corpus'
  corpus.mkdir()
  text = tinyshakespeare.read_text()[:60_000]
  for i in range(4):
    (corpus / f'part{i}.txt').write_text(text[i * 15_000 : (i + 1) * 15_000])
  cfg = _data_cfg(corpus, text_unit='paragraph', tokenizer_vocab_size=400, val_fraction=0.1)
  path = data_lib.resolve_dataset(cfg, tmp_path / 'work', model_vocab=512)
  assert (path / 'index.json').is_file()
  assert path.parent == tmp_path / 'work' / 'data' / 'prepared'
  tokenizers = list((tmp_path / 'work' / 'data' / 'tokenizers').glob('*/tokenizer.model'))
  assert len(tokenizers) == 1
  mtime = (path / 'index.json').stat().st_mtime_ns
  assert data_lib.resolve_dataset(cfg, tmp_path / 'work', model_vocab=512) == path  # cache hit
  assert (path / 'index.json').stat().st_mtime_ns == mtime
  # a prepared directory is used directly
  assert data_lib.resolve_dataset(_data_cfg(path), tmp_path / 'other', model_vocab=512) == path
  # a changed corpus is a different cache entry
  (corpus / 'part0.txt').write_text(text[:14_000])
  assert data_lib.resolve_dataset(cfg, tmp_path / 'work', model_vocab=512) != path
  # a tokenizer larger than the model's vocabulary is refused
  with pytest.raises(DataError, match="larger than the model's vocab_size"):
    data_lib.resolve_dataset(_data_cfg(path), tmp_path / 'other', model_vocab=256)


def test_missing_corpus_is_a_data_error(tmp_path):
  with pytest.raises(DataError):
    data_lib.resolve_dataset(
      _data_cfg(tmp_path / 'nope.txt', tokenizer_vocab_size=300), tmp_path, 512
    )


def test_named_corpora_in_a_list(tmp_path, monkeypatch):
  """``data.corpus='default,recall,PATH'``: the named corpora become their directories (the
  recall corpus written once, deterministically), other entries pass through."""

  from miras_jax.data import default_corpus
  from miras_jax.data.cache import corpus_source
  from miras_jax.data.recall_corpus import ensure_recall_corpus

  monkeypatch.setattr(default_corpus, 'ensure_default_corpus', lambda: '/fake/default')
  monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path))
  got = corpus_source('default,recall,/my/texts').split(',')
  recall = ensure_recall_corpus(docs=96, lines_per_doc=256)
  assert got == ['/fake/default', recall, '/my/texts']
  files = sorted(os.listdir(recall))
  assert len(files) == 96
  line = open(os.path.join(recall, files[0])).readline().strip()
  first, second = line[: len(line) // 2], line[len(line) // 2 + 1 :]
  assert first == second and first.endswith('.')  # one sequence read twice
  assert corpus_source('/only/mine') == '/only/mine'
