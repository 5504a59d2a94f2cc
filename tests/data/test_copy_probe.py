"""scripts/copy_probe.py: its rows are sequences read twice, and its masks pick the readings."""

import numpy as np
import pytest

from tests._scripts import load_file


def _probe():
  return load_file('scripts/copy_probe.py')


def test_second_reading_targets_repeat_the_first():
  x, y, first, second = _probe().copy_rows(np.random.default_rng(0), 3, 5, 24, 50)
  assert x.shape == y.shape == first.shape == second.shape == (3, 24)
  np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # next-token targets
  # two sequences of 5 read twice fill 20 tokens; each reading scores 4 (not its first token)
  assert (first.sum(1) == 8).all() and (second.sum(1) == 8).all() and not (first * second).any()
  pos = np.flatnonzero(second[0])
  np.testing.assert_array_equal(y[:, pos], y[:, pos - 5])  # recallable from 5 tokens back
  assert (y[first > 0] > 0).all() and (y[:, 20:] == 0).all()
  # varied lengths (2..6): each row's readings pair up, and every second-reading target
  # appeared 2..6 tokens earlier (its first reading)
  x, y, first, second = _probe().copy_rows(np.random.default_rng(1), 4, 6, 40, 50, min_length=2)
  assert (first.sum(1) == second.sum(1)).all() and (second.sum(1) > 0).all()
  for r, p in zip(*np.nonzero(second)):
    assert y[r, p] in y[r, max(0, p - 6) : p - 1], (r, p)
  with pytest.raises(ValueError, match='holds no sequence'):
    _probe().copy_rows(np.random.default_rng(0), 1, 8, 12, 50)


@pytest.mark.slow
def test_probe_runs_and_reports_its_curve():
  out = _probe().main(['--family=transformer', '--steps=2', '--batch=2', '--seq_len=32'])
  assert [r['step'] for r in out['curve']] == [0, 1, 2]
  assert all(0 <= r['second_acc'] <= 1 and np.isfinite(r['second_loss']) for r in out['curve'])
