"""Multi-host behaviour: data shards over any process count, preemption on every host, the lock.

The data-shard layouts run in-process (process slots passed explicitly); the rest are real
``python -m miras_jax.train`` processes joined by ``jax.distributed`` on 127.0.0.1, each with
its own simulated CPU devices.
"""

from __future__ import annotations

import signal
import subprocess
import time

import numpy as np
import pytest
from ml_collections import ConfigDict

from miras_jax.data.errors import DataError
from miras_jax.train import data as data_lib
from tests.train.conftest import (
  REPO_ROOT,
  base_args,
  losses,
  run_train,
  train_cmd,
  train_env,
  two_processes,
)


def _config(batch_size: int, shards: int) -> ConfigDict:
  return ConfigDict(
    {
      'train': {'seq_len': 16, 'batch_size': batch_size},
      'data': {'seed': 3, 'num_threads': 1, 'shards': shards},
    }
  )


def _global_batches(dataset, layout: int, steps: int, state=None, shards: int = 2):
  """``steps`` global batches read by ``layout`` processes (process order), and their states."""
  its = [
    data_lib.ShardedTrainIterator(dataset, _config(8, shards), p, layout) for p in range(layout)
  ]
  if state is not None:
    for it in its:
      it.set_state(state)
  out = []
  for _ in range(steps):
    parts = [next(it) for it in its]
    out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
  return out, data_lib.merge_saved_states([it.get_state() for it in its])


def test_data_shards_give_one_global_stream_on_any_process_count(dataset):
  """2 shards read by 1, 2 or 4 processes, stopped and resumed across counts: the same batches."""
  want, _ = _global_batches(dataset, 1, 4)
  for first, second in ((2, 1), (1, 4), (4, 2)):
    head, state = _global_batches(dataset, first, 2)
    tail, _ = _global_batches(dataset, second, 2, state)
    for a, b in zip(want, head + tail):
      assert a.keys() == b.keys()
      for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f'{first}->{second} {k}')
  # the shards are different documents: the stream is not one shard repeated
  assert not np.array_equal(want[0]['inputs'][:4], want[0]['inputs'][4:])
  assert data_lib.shard_plan(4, 1, 2) == ([2, 3], 0, 1)
  assert data_lib.shard_plan(2, 3, 4) == ([1], 1, 2)
  with pytest.raises(DataError, match='2 data shard.*3 processes'):
    data_lib.shard_plan(2, 0, 3)


@pytest.mark.slow
def test_preempted_default_layout_resumes_on_one_process_with_4_devices(tmp_path, dataset):
  """As test_training's two-process test, in the default layout (one data shard per process,
  each host reading only its documents), against an uninterrupted one-process run of the same 2
  shards (slow: three runs, ~2 min on 2 busy cores)."""
  steps = 6
  args = base_args(dataset, train__steps=steps, checkpoint__every_steps=0)
  straight = subprocess.Popen(  # the uninterrupted run: one process, one device, 2 data shards
    train_cmd(tmp_path / 'straight', [*args, '--config.data.shards=2']),
    cwd=REPO_ROOT,
    env=train_env(1),
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  run = tmp_path / 'run'
  procs = two_processes(run, args, MIRAS_TRAIN_STEP_DELAY_S='1')
  deadline = time.monotonic() + 240
  while 2 not in losses(run) if (run / 'metrics.jsonl').exists() else True:
    assert time.monotonic() < deadline and all(p.poll() is None for p in procs), [
      p.communicate() for p in procs if p.poll() is not None
    ]
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # the preemption notice reaches one host
  outs = [p.communicate(timeout=240) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, f'{out[-2000:]}\n{err[-3000:]}'
  marker = 'preempted (SIGTERM): saved checkpoint at step '
  assert marker in outs[0][0], outs[0][0][-2000:]  # the run was stopped, not finished
  saved = int(outs[0][0].split(marker)[1].split(';')[0])
  assert 2 <= saved < steps
  assert sorted(p.name for p in (run / 'checkpoints' / str(saved) / 'data').glob('*.json')) == [
    'process_0-of-2.json',
    'process_1-of-2.json',
  ]
  resumed = run_train(run, args, devices=4)
  assert f'resume: restored step {saved}' in resumed.stdout
  assert '4 x cpu on 1 process(es)' in resumed.stdout
  out, err = straight.communicate(timeout=240)
  assert straight.returncode == 0, err[-3000:]
  want, got = losses(tmp_path / 'straight'), losses(run)
  assert sorted(got) == sorted(want) == list(range(1, steps + 1))
  np.testing.assert_allclose([got[s] for s in want], [want[s] for s in want], rtol=1e-6)


def test_locked_workdir_stops_every_process_at_once(tmp_path, dataset):
  """Process 0 finds the workdir locked: both processes exit with the same one-line error."""
  from miras_jax.train.lock import WorkdirLock

  with WorkdirLock(tmp_path):
    t0 = time.monotonic()
    procs = two_processes(tmp_path, base_args(dataset, train__steps=1))
    outs = [p.communicate(timeout=120) for p in procs]
    elapsed = time.monotonic() - t0
  errors = []
  for p, (out, err) in zip(procs, outs):
    assert p.returncode not in (0, None), out[-2000:]
    lines = [line for line in err.splitlines() if 'error:' in line]
    assert len(lines) == 1 and 'Traceback' not in err, err[-3000:]
    errors.append(lines[0])
  assert errors[0] == errors[1] and 'locked' in errors[0], errors
  assert elapsed < 60, elapsed  # not the coordinator's shutdown timeout
