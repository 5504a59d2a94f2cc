"""End-to-end training runs through the CLI: sharding, multi-process, resume, preemption, corruption.

All runs are tiny (2-layer, 64-wide models, 8 × 32 tokens per step) and float32, so that runs
that should agree can be compared to tight tolerances, and resumed runs exactly.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from tests.train.conftest import (
  REPO_ROOT,
  base_args,
  losses,
  run_train,
  train_cmd,
  train_env,
  two_processes,
)

STEPS = 6
HALF = 3


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180.0) -> None:
  deadline = time.monotonic() + timeout
  while not predicate():
    if proc.poll() is not None:
      out, err = proc.communicate()
      raise AssertionError(f'run ended early (rc={proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}')
    if time.monotonic() > deadline:
      proc.kill()
      raise AssertionError('timed out waiting for the run')
    time.sleep(0.05)


# ------------------------------------------------------------------ sharding
def test_sharded_8_devices_with_accumulation_matches_1_device(tmp_path, dataset, straight_run):
  """data=2 × fsdp=2 × tensor=2 on 8 simulated devices, 2 micro-batches == 1 device, 1 batch
  (``straight_run``, the shared one-device run: its checkpoints do not change its losses)."""
  eight = tmp_path / 'eight'
  proc = run_train(
    eight,
    base_args(
      dataset,
      train__steps=STEPS,
      checkpoint__every_steps=0,
      train__grad_accum_steps=2,
      train__batch_size=8,
      train__mesh__data=2,
      train__mesh__fsdp=2,
      train__mesh__tensor=2,
    ),
    devices=8,
  )
  a, b = losses(straight_run), losses(eight)
  assert sorted(a) == sorted(b) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([b[s] for s in a], [a[s] for s in a], rtol=2e-5)
  assert "mesh {'data': 2, 'fsdp': 2, 'sequence': 1, 'tensor': 2}" in proc.stdout


def test_two_processes_preempted_resume_on_one_process_with_4_devices(
  tmp_path, dataset, straight_run
):
  """Two local processes (jax.distributed on 127.0.0.1, one CPU device each) train; SIGTERM to
  one of them stops both at the same step with a checkpoint and exit 0; one process with 4
  devices resumes, and its losses equal the uninterrupted one-process run.

  ``data.shards=1`` makes the two processes read the one-process data stream (each keeps its
  half of every batch), so ``straight_run`` is the uninterrupted run; the default layout (one
  shard per process) is the slow test in test_multihost.py.
  """
  args = base_args(dataset, train__steps=STEPS, checkpoint__every_steps=HALF)
  procs = two_processes(tmp_path, [*args, '--config.data.shards=1'], MIRAS_TRAIN_STEP_DELAY_S='1')
  _wait_for(
    lambda: 2 in (losses(tmp_path) if (tmp_path / 'metrics.jsonl').exists() else {}), procs[0]
  )
  procs[1].send_signal(signal.SIGTERM)  # the preemption notice reaches one host
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f'{out[-2000:]}\n{err[-4000:]}'
  assert '2 x cpu on 2 process(es)' in outs[0][0]
  assert 'step 2/' in outs[0][0] and 'step ' not in outs[1][0]  # only process 0 prints progress
  marker = 'preempted (SIGTERM): saved checkpoint at step '
  assert marker in outs[0][0], outs[0][0][-2000:]  # the run was stopped, not finished
  saved = int(outs[0][0].split(marker)[1].split(';')[0])
  assert 2 <= saved < STEPS
  data = tmp_path / 'checkpoints' / str(saved) / 'data'
  states = [json.loads((data / f'process_{i}-of-2.json').read_text()) for i in range(2)]
  assert [s['num_shards'] for s in states] == [1, 1] and all(
    list(s['shards']) == ['0'] for s in states
  )

  resumed = run_train(tmp_path, [*args, '--config.data.shards=1'], devices=4)
  assert f'resume: restored step {saved}' in resumed.stdout
  assert '4 x cpu on 1 process(es)' in resumed.stdout
  want, got = losses(straight_run), losses(tmp_path)
  assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-6)


# -------------------------------------------------------------------- resume
def test_resume_after_sigkill_is_exact(tmp_path, dataset, straight_run):
  args = base_args(dataset, train__steps=STEPS, checkpoint__every_steps=HALF)
  proc = subprocess.Popen(
    train_cmd(tmp_path, args),
    cwd=REPO_ROOT,
    env=train_env(1, MIRAS_TRAIN_STEP_DELAY_S='0.5'),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(lambda: (tmp_path / 'checkpoints' / str(HALF) / 'commit_success.txt').exists(), proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  assert not (tmp_path / 'checkpoints' / str(STEPS)).exists()

  second = run_train(tmp_path, args)
  assert f'resume: restored step {HALF}' in second.stdout
  want, got = losses(straight_run), losses(tmp_path)
  assert sorted(got) == list(range(1, STEPS + 1))
  for step in range(HALF + 1, STEPS + 1):
    assert got[step] == want[step], (step, got[step], want[step])  # bit-identical in float32
  assert (tmp_path / 'loss_curve.png').stat().st_size > 0


def test_corrupt_latest_checkpoint_falls_back(tmp_path, dataset, straight_run):
  workdir = tmp_path / 'run'
  shutil.copytree(straight_run, workdir)
  (workdir / 'metrics.jsonl').unlink()
  state_files = [
    p
    for p in (workdir / 'checkpoints' / str(STEPS) / 'state').rglob('*')
    if p.is_file() and p.stat().st_size > 0 and 'ocdbt' in str(p)
  ]
  assert state_files
  for p in state_files:  # truncate the array data
    with open(p, 'r+b') as f:
      f.truncate(p.stat().st_size // 2)
  proc = run_train(workdir, base_args(dataset, train__steps=STEPS, checkpoint__every_steps=HALF))
  assert f'checkpoint step {STEPS} is unreadable' in proc.stdout
  assert f'resume: restored step {HALF}' in proc.stdout
  assert list((workdir / 'checkpoints').glob(f'corrupt-{STEPS}-*'))
  want, got = losses(straight_run), losses(workdir)
  assert [got[s] for s in range(HALF + 1, STEPS + 1)] == [
    want[s] for s in range(HALF + 1, STEPS + 1)
  ]


def test_sigterm_saves_and_exits_cleanly(tmp_path, dataset):
  args = base_args(dataset, train__steps=200, checkpoint__every_steps=0)
  proc = subprocess.Popen(
    train_cmd(tmp_path, args),
    cwd=REPO_ROOT,
    env=train_env(1, MIRAS_TRAIN_STEP_DELAY_S='0.2'),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  _wait_for(lambda: len(losses(tmp_path)) >= 2, proc)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-3000:]
  assert 'preempted (SIGTERM)' in out
  saved = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert len(saved) == 1 and 2 <= saved[0] < 200
  assert saved[0] == max(losses(tmp_path))  # saved at the step it stopped on


# ------------------------------------------------------------------- memory
def test_moneta_logs_inner_loss_and_artifacts(tmp_path, dataset):
  run_train(
    tmp_path,
    base_args(
      dataset, family='moneta', train__steps=2, checkpoint__every_steps=0, eval__every_steps=2
    ),
    timeout=300,
  )
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  train_rows = [r for r in rows if 'loss' in r]
  for key in (
    'step',
    'loss',
    'lr',
    'grad_norm',
    'tokens_per_sec',
    'inner/inner_loss_before',
    'inner/inner_loss_after',
  ):
    assert key in train_rows[-1], key
  assert any('val_loss' in r for r in rows)
  assert (tmp_path / 'loss_curve.png').stat().st_size > 0
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))
  assert (tmp_path / 'checkpoints' / '2').is_dir()  # the final step is always saved


def test_zero_shot_tasks_during_training(tmp_path, dataset, tinyshakespeare):
  """``eval.tasks`` runs the zero-shot harness at evaluation steps and logs its metrics."""
  data_dir = tinyshakespeare.parent.parent  # the shared data directory
  if not (data_dir / 'piqa' / 'valid.jsonl').is_file():
    pytest.skip(f'PIQA files not found under {data_dir}')
  run_train(
    tmp_path,
    base_args(
      dataset,
      train__steps=2,
      checkpoint__every_steps=0,
      eval__every_steps=2,
      eval__tasks='piqa,mqar,heldout',
      eval__data_dir=str(data_dir),
      eval__limit=4,
    ),
    timeout=300,
  )
  rows = [json.loads(l) for l in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  zs = [r for r in rows if 'eval/piqa/acc' in r]
  assert zs and zs[-1]['step'] == 2
  assert 0.0 <= zs[-1]['eval/piqa/acc'] <= 1.0
  assert any(k.startswith('eval/mqar/acc/') for k in zs[-1])
  assert zs[-1]['eval/heldout/perplexity'] > 1.0  # scored on the run's own validation split
