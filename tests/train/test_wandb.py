"""Optional W&B logging (miras_jax/train/wandb_logger.py) with a stand-in ``wandb`` module:
off by default, a one-line error when the package is missing, metrics forwarded, the run id
kept across a resume."""

import sys
import types

import pytest

from miras_jax.train.config import ConfigError
from miras_jax.train.defaults import defaults
from miras_jax.train.metrics import MetricsWriter
from miras_jax.train.wandb_logger import init_wandb


class _Run:
  def __init__(self, **kw):
    self.kw, self.logged, self.finished = kw, [], False

  def log(self, row, step):
    self.logged.append((step, row))

  def finish(self):
    self.finished = True


def _config(**logging):
  c = defaults()
  c.logging.update(logging)
  return c


def test_off_by_default_and_missing_package_is_one_line(tmp_path, monkeypatch):
  assert init_wandb(_config(), {}, tmp_path) is None
  monkeypatch.setitem(sys.modules, 'wandb', None)  # import wandb -> ImportError
  with pytest.raises(ConfigError, match=r"^logging.wandb_project='p' needs the wandb package"):
    init_wandb(_config(wandb_project='p'), {}, tmp_path)


def test_metrics_forwarded_offline_and_resume_keeps_the_run_id(tmp_path, monkeypatch):
  runs = []
  fake = types.SimpleNamespace(init=lambda **kw: runs.append(_Run(**kw)) or runs[-1])
  monkeypatch.setitem(sys.modules, 'wandb', fake)
  cfg = _config(wandb_project='p', wandb_mode='offline')
  run = init_wandb(cfg, {'train': {'steps': 3}}, tmp_path)
  assert run.kw['mode'] == 'offline' and run.kw['project'] == 'p' and run.kw['dir'] == str(tmp_path)
  assert run.kw['config'] == {'train': {'steps': 3}} and run.kw['entity'] is None
  writer = MetricsWriter(tmp_path, total_steps=3, enabled=True, wandb_run=run)
  writer.write(2, {'loss': 1.5, 'lr': 0.1})
  writer.close()
  assert run.logged == [(2, {'loss': 1.5, 'lr': 0.1})] and run.finished
  assert init_wandb(cfg, {}, tmp_path).kw['id'] == run.kw['id']  # a resumed run continues it
