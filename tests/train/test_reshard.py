"""Sharding presets and resuming on another mesh, through the CLI on simulated CPU devices.

One uninterrupted single-device run is the reference (conftest's ``straight_run``: same arguments,
shared with test_training.py). The same run under FSDP on 8 devices
must give the same losses; its step-3 checkpoint, resumed on 4 devices under FSDP x tensor
parallelism (restored straight into the new shardings), must continue with the same losses.
Float32 throughout; the device counts change the order of reductions, hence the tolerance.
"""

from __future__ import annotations

import shutil

import numpy as np

from tests.train.conftest import base_args, losses, run_train

STEPS, HALF = 6, 3


def test_fsdp_then_resume_on_4_devices_fsdp_tp_matches_one_device(tmp_path, dataset, straight_run):
  args = dict(train__steps=STEPS, checkpoint__every_steps=HALF)
  run = tmp_path / 'run'
  fsdp = run_train(
    run,
    base_args(dataset, **args, train__mesh__data=1, train__mesh__fsdp=-1),
    devices=8,
    timeout=300,
  )
  assert "mesh {'data': 1, 'fsdp': 8, 'sequence': 1, 'tensor': 1}" in fsdp.stdout
  want, got_fsdp = losses(straight_run), losses(run)
  assert sorted(want) == sorted(got_fsdp) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got_fsdp[s] for s in want], [want[s] for s in want], rtol=2e-5)

  shutil.rmtree(run / 'checkpoints' / str(STEPS))  # resume from step HALF on another shape
  (run / 'metrics.jsonl').unlink()
  tp = run_train(
    run,
    base_args(dataset, **args, train__mesh__data=1, train__mesh__fsdp=-1, train__mesh__tensor=2),
    devices=4,
    timeout=300,
  )
  assert f'resume: restored step {HALF}' in tp.stdout
  assert "mesh {'data': 1, 'fsdp': 2, 'sequence': 1, 'tensor': 2}" in tp.stdout
  got = losses(run)
  assert sorted(got) == list(range(HALF + 1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in got], [want[s] for s in got], rtol=2e-5)
