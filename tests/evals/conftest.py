"""Eval tests: the shared data dir and tokenizer."""

import os
from pathlib import Path

import pytest

from miras_jax.evals.tasks import default_data_dir

DATA = default_data_dir()


@pytest.fixture(scope='session')
def data_dir() -> Path:
  if not (DATA / 'piqa' / 'valid.jsonl').is_file():
    pytest.skip(f'shared eval data not found at {DATA} (set MIRAS_SHARED_DATA)')
  return DATA


@pytest.fixture(scope='session')
def llama_tokenizer():
  path = DATA / 'tokenizer_llama2' / 'tokenizer.model'
  if not path.is_file():
    pytest.skip(f'Llama-2 tokenizer not found at {path} (set MIRAS_SHARED_DATA)')
  from miras_jax.data.tokenizer import Tokenizer

  return Tokenizer(path)


class CharTokenizer:
  """A toy tokenizer: one id per character (ord % 250 + 4); BOS 1, EOS 2."""

  bos_id, eos_id, pad_id = 1, 2, 0
  vocab_size = 256

  def encode(self, text: str, **_):
    return [ord(c) % 250 + 4 for c in text]

  def encode_batch(self, texts, **_):
    return [self.encode(t) for t in texts]

  def decode(self, ids):
    return ''.join(chr(i - 4) for i in ids)


@pytest.fixture
def char_tokenizer():
  return CharTokenizer()


os.environ.setdefault('HF_DATASETS_OFFLINE', '1')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
