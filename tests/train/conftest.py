"""Fixtures for the trainer tests: a small prepared dataset and a CLI runner.

Real text comes from the shared data directory (``$MIRAS_SHARED_DATA``, else
``<repo root>/../shared/data``); tests that need it skip, saying why, when it
is absent. Training runs go through the real command line
(``python -m miras_jax.train``) in subprocesses, so device counts
(``--xla_force_host_platform_device_count``), signals and hard kills are real.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
VOCAB = 512


def shared_data_dir() -> Path:
  return Path(os.environ.get('MIRAS_SHARED_DATA') or REPO_ROOT.parent / 'shared' / 'data')


@pytest.fixture(scope='session')
def tinyshakespeare() -> Path:
  path = shared_data_dir() / 'tinyshakespeare' / 'input.txt'
  if not path.is_file():
    pytest.skip(
      f'shared data file {path} not found (set MIRAS_SHARED_DATA to the shared/data directory)'
    )
  return path


@pytest.fixture(scope='session')
def dataset(tmp_path_factory, tinyshakespeare) -> Path:
  """The first ~300 KB of tinyshakespeare, one document per paragraph, 512-piece tokenizer."""
  from miras_jax.data.prepare import prepare
  from miras_jax.data.train_tokenizer import train_tokenizer

  root = tmp_path_factory.mktemp('train_data')
  text = root / 'shakespeare.txt'
  text.write_text(tinyshakespeare.read_text()[:300_000])
  model = train_tokenizer(str(text), root / 'tok', VOCAB, num_threads=1)
  out = root / 'prepared'
  prepare(
    str(text),
    format='text',
    text_unit='paragraph',
    tokenizer=model,
    output_dir=out,
    val_fraction=0.05,
    log_every_docs=0,
  )
  return out


@pytest.fixture(scope='session')
def straight_run(tmp_path_factory, dataset) -> Path:
  """6 steps of a tiny transformer in one go, checkpoints at steps 3 and 6 (copy before changing)."""
  workdir = tmp_path_factory.mktemp('straight')
  run_train(workdir, base_args(dataset, train__steps=6, checkpoint__every_steps=3))
  return workdir


def base_args(dataset: Path, family: str = 'transformer', **overrides) -> list[str]:
  """CLI arguments of a tiny, fast run on ``dataset``; ``overrides`` are config keys with '.'→'__'."""
  values = {
    'data.corpus': str(dataset),
    'model.vocab_size': VOCAB,
    'train.steps': 4,
    'train.batch_size': 8,
    'train.seq_len': 32,
    'train.lr': 3e-3,
    'train.warmup_steps': 2,
    'train.log_every_steps': 1,
    'train.compute_dtype': 'float32',
    'checkpoint.every_steps': 2,
    'eval.every_steps': 0,
    'eval.num_batches': 1,
  }
  values.update({k.replace('__', '.'): v for k, v in overrides.items()})
  return [f'--config=configs/base.py:{family},tiny'] + [
    f'--config.{k}={v}' for k, v in values.items()
  ]


def train_env(devices: int = 1, **extra: str) -> dict[str, str]:
  env = dict(os.environ)
  env.pop('XLA_FLAGS', None)
  env.update(
    {
      'JAX_PLATFORMS': 'cpu',
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'PYTHONUNBUFFERED': '1',
      **extra,
    }
  )
  return env


def train_cmd(workdir: Path, args: list[str]) -> list[str]:
  return [sys.executable, '-m', 'miras_jax.train', f'--workdir={workdir}', *args]


def run_train(
  workdir: Path,
  args: list[str],
  *,
  devices: int = 1,
  timeout: float = 240,
  check: bool = True,
  **env,
) -> subprocess.CompletedProcess:
  proc = subprocess.run(
    train_cmd(workdir, args),
    cwd=REPO_ROOT,
    env=train_env(devices, **env),
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )
  if check and proc.returncode != 0:
    raise AssertionError(
      f'training failed (rc={proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'
    )
  return proc


def losses(workdir: Path) -> dict[int, float]:
  from miras_jax.train.metrics import read_metrics

  return {r['step']: r['loss'] for r in read_metrics(workdir) if 'loss' in r}


def two_processes(
  workdir: Path, args: list[str], devices: int = 1, **env
) -> list[subprocess.Popen]:
  """Two training processes joined by ``jax.distributed`` on a free 127.0.0.1 port."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
  flags = [f'--coordinator_address=127.0.0.1:{port}', '--num_processes=2']
  return [
    subprocess.Popen(
      train_cmd(workdir, [*args, *flags, f'--process_id={i}']),
      cwd=REPO_ROOT,
      env=train_env(devices, **env),
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
    )
    for i in range(2)
  ]
