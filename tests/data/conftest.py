"""Shared fixtures for the data tests.

Real data comes from the shared data directory: ``$MIRAS_SHARED_DATA``, else
``<repo root>/../shared/data``. Tests that need it skip with the reason when it
is absent.
"""

import json
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
  return Path(os.environ.get('MIRAS_SHARED_DATA') or REPO_ROOT.parent / 'shared' / 'data')


def _shared_file(rel: str) -> Path:
  path = shared_data_dir() / rel
  if not path.is_file():
    pytest.skip(
      f'shared data file {path} not found (set MIRAS_SHARED_DATA to the shared/data directory)'
    )
  return path


@pytest.fixture(scope='session')
def llama_model_path() -> Path:
  return _shared_file('tokenizer_llama2/tokenizer.model')


@pytest.fixture(scope='session')
def tinyshakespeare_path() -> Path:
  return _shared_file('tinyshakespeare/input.txt')


@pytest.fixture(scope='session')
def llama_tokenizer(llama_model_path):
  from miras_jax.data.tokenizer import Tokenizer

  return Tokenizer(llama_model_path)


@pytest.fixture(scope='session')
def corpus_docs(tinyshakespeare_path) -> list[str]:
  """150 distinct real-text documents of very different lengths (a few to ~300 tokens)."""
  paragraphs = [p.strip() for p in tinyshakespeare_path.read_text().split('\n\n') if p.strip()]
  docs = []
  for i in range(150):
    body = paragraphs[i] if i % 10 else '\n\n'.join(paragraphs[i : i + 8])  # every 10th doc is long
    docs.append(f'Document {i}.\n{body}')
  return docs


@pytest.fixture(scope='session')
def prepared(tmp_path_factory, corpus_docs, llama_model_path):
  """``corpus_docs`` written as jsonl and prepared with the Llama-2 tokenizer.

  Returns (data_dir, index, records) where records[split] lists each stored
  record as a list of ids, in stored order.
  """
  from miras_jax.data.pipeline import split_dataset
  from miras_jax.data.prepare import prepare

  src = tmp_path_factory.mktemp('corpus') / 'docs.jsonl'
  src.write_text(
    ''.join(json.dumps({'meta': {'id': i}, 'text': d}) + '\n' for i, d in enumerate(corpus_docs))
  )
  out = tmp_path_factory.mktemp('prepared')
  index = prepare(
    str(src),
    format='jsonl',
    tokenizer=llama_model_path,
    output_dir=out,
    val_fraction=0.1,
    docs_per_shard=16,
    seed=0,
    log_every_docs=0,
  )
  records = {s: [r['tokens'].tolist() for r in split_dataset(out, s)] for s in ('train', 'val')}
  return out, index, records
