"""Command-line contract: locked config, one-line errors, config.json."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.train.conftest import REPO_ROOT, base_args, run_train, train_env


def _cli(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', 'miras_jax.train', *args],
    cwd=REPO_ROOT,
    env=train_env(),
    capture_output=True,
    text=True,
    timeout=120,
    check=False,
  )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
  assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
  lines = [l for l in proc.stderr.splitlines() if l.strip()]
  assert len(lines) == 1, proc.stderr
  assert lines[0].startswith('python -m miras_jax.train: error: ')
  return lines[0]


@pytest.mark.parametrize(
  'override, expect',
  [
    ('--config.train.stpes=10', 'stpes'),  # unknown key (locked config)
    ('--config.train.steps=ten', 'ten'),  # wrong type
    ('--config.checkpoint.every_steps=1.5', '1.5'),  # float for an int
  ],
)
def test_bad_override_is_a_one_line_error(tmp_path, override, expect):
  line = _one_line_error(
    _cli('--config=configs/base.py:transformer,tiny', f'--workdir={tmp_path}', override)
  )
  assert expect in line
  assert not (tmp_path / 'config.json').exists()


def test_missing_workdir_and_bad_model_name(tmp_path):
  assert '--workdir' in _one_line_error(_cli('--config=configs/base.py:transformer,tiny'))
  line = _one_line_error(
    _cli('--config=configs/base.py:nosuchfamily,tiny', f'--workdir={tmp_path}')
  )
  assert 'nosuchfamily' in line
  assert 'nope.py' in _one_line_error(_cli('--config=configs/nope.py', f'--workdir={tmp_path}'))
  line = _one_line_error(
    _cli(
      '--config=configs/base.py:transformer,tiny', f'--workdir={tmp_path}', '--config.train.stpes=3'
    )
  )
  assert line.endswith('unknown config key config.train.stpes (did you mean "steps"?)')


def test_mesh_must_match_devices(tmp_path, dataset):
  proc = run_train(tmp_path, base_args(dataset, train__mesh__data=2), check=False)
  line = _one_line_error(proc)
  assert 'needs 2 devices' in line and '1 are available' in line


def test_batch_must_split_over_mesh(tmp_path, dataset):
  proc = run_train(
    tmp_path, base_args(dataset, train__batch_size=6, train__mesh__data=4), devices=4, check=False
  )
  assert 'not divisible by data*fsdp=4' in _one_line_error(proc)


def test_config_json_is_the_resolved_config(tmp_path, dataset):
  run_train(tmp_path, base_args(dataset, train__steps=1, train__lr=0.002))
  cfg = json.loads((tmp_path / 'config.json').read_text())
  assert set(cfg) >= {'model', 'data', 'train', 'checkpoint', 'eval'}
  assert cfg['train']['steps'] == 1 and cfg['train']['lr'] == 0.002
  assert cfg['model']['name'] == 'lm' and cfg['model']['vocab_size'] == 512
  # the same config is stored in the checkpoint
  assert (
    json.loads((tmp_path / 'checkpoints' / '1' / 'config' / 'metadata').read_text())['train'][
      'steps'
    ]
    == 1
  )
