"""The checkpoint's dataset record decides the eval's tokenizer and dataset (evals/run_data.py)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from miras_jax.data.tokenizer import file_sha256
from miras_jax.evals.run_data import dataset_record, find_tokenizer, run_dataset_dir


def _tokenizer(cache: Path, name: str, payload: bytes, mtime: float) -> Path:
  path = cache / 'tokenizers' / name / 'tokenizer.model'
  path.parent.mkdir(parents=True)
  path.write_bytes(payload)
  os.utime(path, (mtime, mtime))
  return path


def _prepared(cache: Path, name: str, tok: Path) -> Path:
  d = cache / 'prepared' / name
  d.mkdir(parents=True)
  index = {'tokenizer': {'path': str(tok), 'sha256': file_sha256(tok), 'vocab_size': 64}}
  (d / 'index.json').write_text(json.dumps(index))
  return d


@pytest.fixture
def run(tmp_path) -> tuple[Path, dict]:
  """A run whose cache holds its tokenizer and, newer and of the same vocabulary, a decoy."""
  run_dir = tmp_path / 'run'
  cache = run_dir / 'data'
  ours = _tokenizer(cache, 'spm64-aaaa', b'the run tokenizer', 1_000)
  decoy = _tokenizer(cache, 'spm64-bbbb', b'another tokenizer', 2_000)
  data = _prepared(cache, 'k1', ours)
  _prepared(cache, 'k2', decoy)
  config = {
    'model': {'vocab_size': 64},
    'data': {'corpus': 'default'},
    'dataset': dataset_record(data),
  }
  return run_dir, config


def test_the_record_wins_over_the_newest_tokenizer(run):
  run_dir, config = run
  assert find_tokenizer(config, run_dir).endswith('spm64-aaaa/tokenizer.model')
  assert run_dataset_dir(config, run_dir) == run_dir / 'data' / 'prepared' / 'k1'
  # a checkpoint from before the record: the former lookup, the newest of the vocabulary
  old = {k: v for k, v in config.items() if k != 'dataset'}
  assert find_tokenizer(old, run_dir).endswith('spm64-bbbb/tokenizer.model')


def test_a_moved_run_finds_its_own_files_by_sha256(run, tmp_path):
  run_dir, config = run
  moved = tmp_path / 'moved'
  shutil.move(run_dir, moved)  # the recorded absolute paths are gone
  assert find_tokenizer(config, moved) == str(moved / 'data/tokenizers/spm64-aaaa/tokenizer.model')
  assert run_dataset_dir(config, moved) == moved / 'data' / 'prepared' / 'k1'
  # without the run's tokenizer and dataset: an error naming them, never the decoy
  shutil.rmtree(moved / 'data' / 'tokenizers' / 'spm64-aaaa')
  with pytest.raises(FileNotFoundError, match="the run's tokenizer .* is gone"):
    find_tokenizer(config, moved)
  (moved / 'data' / 'prepared' / 'k1' / 'index.json').write_text(
    (moved / 'data' / 'prepared' / 'k2' / 'index.json').read_text()
  )  # same name, another tokenizer
  with pytest.raises(FileNotFoundError, match='prepared dataset .* is gone'):
    run_dataset_dir(config, moved)
