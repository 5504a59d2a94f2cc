"""A run's checkpoints are never lost (issue 9): refused resumes, divergence, lock, one-line errors.

Subprocess runs are the real command line; the pure checks (config validation, the lock, the
divergence monitor, the checkpoint structure test, the error mapping) run in-process. Every
data-loss case asserts that each earlier checkpoint is still there and restores to the same
parameters.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.train.conftest import REPO_ROOT, base_args, losses, run_train, train_env

STEPS = 6
HALF = 3
PROG = 'python -m miras_jax.train: error: '
_LOG_LINE = re.compile(r'^(INFO|WARNING) miras_jax[\w.]*: ')


def _one_line(proc: subprocess.CompletedProcess, status: int, prog: str = PROG) -> str:
  assert proc.returncode == status, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
  # the run's own log lines ('INFO miras_jax...: ...') may precede the error; nothing else may
  lines = [l for l in proc.stderr.splitlines() if l.strip() and not _LOG_LINE.match(l)]
  assert len(lines) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert lines[0].startswith(prog), lines[0]
  return lines[0]


def _committed(workdir: Path) -> list[int]:
  from miras_jax.evals.checkpoint import is_committed

  root = workdir / 'checkpoints'
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and is_committed(p))


def _params(workdir: Path, step: int):
  from miras_jax.evals.checkpoint import load_params, resolve_checkpoint

  return jax.device_get(load_params(resolve_checkpoint(workdir, step)))


def _snapshot(workdir: Path) -> dict[int, object]:
  return {s: _params(workdir, s) for s in _committed(workdir)}


def _assert_intact(workdir: Path, before: dict[int, object]) -> None:
  """Every step of ``before`` is still committed, nothing was quarantined, each restores equal."""
  assert set(before) <= set(_committed(workdir)), (sorted(before), _committed(workdir))
  assert not list((workdir / 'checkpoints').glob('corrupt-*'))
  for step, params in before.items():
    jax.tree.map(np.testing.assert_array_equal, _params(workdir, step), params)


def _args(dataset: Path, **overrides) -> list[str]:
  values = {'train__steps': STEPS, 'checkpoint__every_steps': HALF, **overrides}
  return base_args(dataset, **values)


# ------------------------------------------------------------ data-loss cases (CLI)
def test_chaos_bad_commands_then_exact_resume(tmp_path, dataset, straight_run):
  """One run directory through a changed model, a changed optimiser, a NaN lr, a missing corpus
  and a concurrent run (each refused with one line, nothing touched), then the correct resume,
  whose losses equal the undisturbed run's; a failing zero-shot evaluation is only logged."""
  from miras_jax.train.lock import WorkdirLock

  workdir = tmp_path / 'run'
  shutil.copytree(straight_run, workdir)
  shutil.rmtree(workdir / 'checkpoints' / str(STEPS))  # as if stopped after step HALF
  config_json = (workdir / 'config.json').read_text()
  before = _snapshot(workdir)
  assert sorted(before) == [HALF]
  bad = [
    ({'model__d_model': 128}, 'model.d_model: 64 -> 128'),
    ({'train__grad_clip': 0}, 'train.grad_clip: 1 -> 0'),
    ({'train__lr': 'nan'}, 'train.lr must be a finite number'),
    ({'data__corpus': tmp_path / 'missing'}, 'missing'),
  ]
  for overrides, expect in bad:
    line = _one_line(run_train(workdir, _args(dataset, **overrides), check=False), 2)
    assert expect in line, line
    _assert_intact(workdir, before)
    assert (workdir / 'config.json').read_text() == config_json  # written only by a started run
  with WorkdirLock(workdir):  # another run holds the directory
    line = _one_line(run_train(workdir, _args(dataset), check=False), 2)
  assert 'in use by another training run' in line and f'pid {os.getpid()}' in line
  _assert_intact(workdir, before)

  proc = run_train(
    workdir,
    _args(dataset, eval__tasks='piqa', eval__data_dir=tmp_path / 'no_task_data'),
  )
  assert f'resume: restored step {HALF}' in proc.stdout
  assert 'WARNING: zero-shot evaluation (eval.tasks) at step 6 failed' in proc.stdout
  assert _committed(workdir) == [HALF, STEPS]
  want, got = losses(straight_run), losses(workdir)
  for step in range(HALF + 1, STEPS + 1):
    assert got[step] == want[step], (step, got[step], want[step])  # bit-identical in float32
  assert not (workdir / 'run.lock').exists()  # released on exit


def test_divergence_stops_names_the_step_and_saves_nothing_non_finite(
  tmp_path, dataset, straight_run
):
  workdir = tmp_path / 'run'
  shutil.copytree(straight_run, workdir)
  before = _snapshot(workdir)
  proc = run_train(
    workdir,
    _args(
      dataset,
      train__steps=12,
      train__lr=1e6,
      checkpoint__every_steps=1,
      checkpoint__keep_last=20,
    ),
    check=False,
  )
  line = _one_line(proc, 1)
  step = int(re.search(r'training diverged at step (\d+)', line).group(1))
  assert STEPS < step <= 12 and 'nothing from that step on was saved' in line
  assert max(_committed(workdir)) < step
  _assert_intact(workdir, before)
  for s in _committed(workdir):
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(_params(workdir, s))), s


# ------------------------------------------------------------- one-line errors (CLI)
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


def test_bad_config_files_are_one_line_errors(tmp_path):
  """Errors while loading the config file / parsing overrides (no JAX start-up: fast)."""
  raises = tmp_path / 'raises.py'
  raises.write_text('def get_config():\n  raise RuntimeError("boom")\n')
  as_dict = tmp_path / 'as_dict.py'
  as_dict.write_text('def get_config():\n  return {"train": {}}\n')
  yaml = tmp_path / 'c.yaml'
  yaml.write_text('train: {steps: 3}\n')
  new = tmp_path / 'new'
  for config, expect in [
    (raises, 'cannot load config'),
    (yaml, 'a config is a Python file'),
    (as_dict, 'returning an ml_collections.ConfigDict, got dict'),
  ]:
    line = _one_line(_cli(f'--config={config}', f'--workdir={new}'), 2)
    assert expect in line and (expect != 'cannot load config' or 'RuntimeError: boom' in line)
  # the unknown key is named, not its valid sibling given in the same command
  line = _one_line(
    _cli(
      '--config=configs/base.py:transformer,tiny',
      f'--workdir={new}',
      '--config.train.steps=3',
      '--config.train.stpes=4',
    ),
    2,
  )
  assert line.endswith('unknown config key config.train.stpes (did you mean "steps"?)'), line
  assert not new.exists()


def _run_cli(monkeypatch, capsys, config, workdir) -> tuple[int, str]:
  """``python -m miras_jax.train``'s error mapping, in-process (the config already loaded)."""
  from miras_jax.train import __main__ as cli

  monkeypatch.setattr(cli, '_maybe_initialize_distributed', lambda: None)  # flags not parsed
  status = cli.run(config, str(workdir))
  err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
  assert len(err) == 1 and err[0].startswith(PROG), err
  return status, err[0]


def test_bad_values_are_one_line_errors_and_leave_nothing_behind(
  tmp_path, dataset, monkeypatch, capsys
):
  from miras_jax.train.defaults import family_config

  def config(family='transformer', **values):
    c = family_config(family, 'tiny')
    c.data.corpus = str(dataset)
    c.model.vocab_size = 512
    c.train.update(steps=2, batch_size=8, seq_len=32, compute_dtype='float32')
    for key, value in values.items():
      section, name = key.split('__')
      c[section][name] = value
    return c

  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  new = tmp_path / 'new' / 'run'
  cases = [
    (config('moneta', model__rule='nosuchrule'), new, "unknown memory rule 'nosuchrule'"),
    (config(eval__tasks='piqa,nope'), new, "unknown task 'nope'"),
    (config(train__lr=float('nan')), new, 'train.lr must be a finite number'),
    (config(), a_file, 'is not a directory'),
    (config(), a_file / 'run', 'cannot create --workdir'),
    (config(data__corpus=str(tmp_path / 'nothing')), new, 'not found'),
  ]
  for cfg, workdir, expect in cases:
    status, line = _run_cli(monkeypatch, capsys, cfg, workdir)
    assert status == 2 and expect in line, (expect, line)
    assert not (tmp_path / 'new').exists(), expect  # a rejected command leaves no directory


def test_full_disk_is_a_one_line_error(monkeypatch, capsys):
  """The command line maps an OSError from the run (ENOSPC here) to one line and status 1."""
  from miras_jax.train import loop
  from miras_jax.train.defaults import family_config

  def full(config, workdir):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f'{workdir}/checkpoints/7')

  monkeypatch.setattr(loop, 'train', full)
  status, line = _run_cli(monkeypatch, capsys, family_config('transformer', 'tiny'), '/runs/x')
  assert status == 1 and line == f'{PROG}No space left on device (/runs/x/checkpoints/7)'


# ------------------------------------------------------------------- eval (in-process)
def _eval(capsys, *args: str) -> tuple[int, str]:
  from miras_jax.evals.cli import cli

  old = sys.argv
  sys.argv = ['python -m miras_jax.eval', *args]
  try:
    cli()
    status = 0
  except SystemExit as e:
    status = e.code
  finally:
    sys.argv = old
  return status, capsys.readouterr().err


def test_eval_errors_and_the_checkpoints_own_config(
  tmp_path, straight_run, capsys, caplog, monkeypatch
):
  from miras_jax.data.tokenizer import file_sha256
  from miras_jax.evals.checkpoint import load_config, resolve_checkpoint
  from miras_jax.evals.run_data import find_tokenizer

  run = tmp_path / 'run'
  shutil.copytree(straight_run, run)
  # config.json of a later (failed or other) command must not change what a checkpoint is
  wrong = json.loads((run / 'config.json').read_text())
  wrong['model']['n_layers'] = 1
  (run / 'config.json').write_text(json.dumps(wrong))
  assert load_config(resolve_checkpoint(run))['model']['n_layers'] == 2
  # a run trained on a prepared directory finds its tokenizer through the directory's index
  stored = load_config(resolve_checkpoint(run))
  tok = find_tokenizer(stored, run)
  corpus = Path(wrong['data']['corpus'])
  assert tok == json.loads((corpus / 'index.json').read_text())['tokenizer']['path']
  # ... as recorded with the checkpoint by the trainer (what evals and sampling read)
  assert stored['dataset']['dir'] == str(corpus.resolve())
  assert stored['dataset']['tokenizer_sha256'] == file_sha256(tok)
  # an uncommitted step directory (a save cut short) is never chosen
  shutil.copytree(run / 'checkpoints' / str(STEPS), run / 'checkpoints' / '9')
  for marker in ('commit_success.txt', '_CHECKPOINT_METADATA'):
    (run / 'checkpoints' / '9' / marker).unlink(missing_ok=True)
  assert resolve_checkpoint(run).step == STEPS

  def error(*args: str) -> str:
    status, err = _eval(capsys, f'--workdir={run}', '--tasks=mqar', *args)
    lines = [l for l in err.splitlines() if l.strip()]
    assert status == 2 and len(lines) == 1, (status, err)
    return lines[0]

  assert '--batch_size: must be >= 0, got -3' in error('--batch_size=-3')
  assert '--limit: must be >= 1, got -1' in error('--limit=-1')
  assert 'no committed checkpoint for step 9' in error('--step=9')
  a_file = tmp_path / 'a_file'
  a_file.write_text('x')
  assert 'cannot create the output directory' in error(f'--output={a_file}/out/r.json')
  for p in (run / 'checkpoints' / str(STEPS) / 'state').rglob('*'):  # lose the array data
    if p.is_file() and 'ocdbt' in str(p) and p.stat().st_size > 0:
      p.unlink()
  # that one line only: no Orbax warning about the files, no traceback of a read that ends after
  # Orbax closed its event loop (train/orbax_restore.py; the default hook prints them to stderr)
  monkeypatch.setattr(sys, 'unraisablehook', sys.__unraisablehook__)
  line = error()
  assert f'checkpoint {str(run / "checkpoints" / str(STEPS))!r} is unreadable' in line
  time.sleep(0.1)
  assert not capsys.readouterr().err
  assert not [r.getMessage() for r in caplog.records if r.name == 'absl' and r.levelno >= 30]
  assert not (run / 'eval').exists() or not list((run / 'eval').iterdir())


# --------------------------------------------------------------- pure checks (in-process)
def test_validate_rejects_every_bad_value_up_front():
  from miras_jax.train.config import ConfigError, validate, warnings
  from miras_jax.train.defaults import family_config

  bad = {
    ('train', 'lr', float('nan')): 'train.lr',
    ('train', 'lr', 1e39): 'train.lr',
    ('train', 'b2', 1.0): 'train.b2',
    ('train', 'loss_spike_factor', 0.5): 'loss_spike_factor',
    ('eval', 'tasks', 'piqa,bogus'): "unknown task 'bogus'",
    ('eval', 'limit', -1): 'eval.limit',
    ('data', 'val_fraction', 1.0): 'data.val_fraction',
    ('data', 'seed', -1): 'data.seed must be in [0, 2**32)',  # (the pipeline: at its 1st batch)
  }
  for (section, key, value), expect in bad.items():
    c = family_config('transformer', 'tiny')
    c[section][key] = value
    with pytest.raises(ConfigError, match=re.escape(expect)):
      validate(c, process_count=1)
  c = family_config('transformer', 'tiny')
  c.train.seq_len = 128
  c.eval.tasks = 'piqa,mqar'
  c.train.loss_spike_factor = 3.0
  validate(c, process_count=1)
  assert not warnings(c)
  c.train.seq_len = 1000  # works (rotary positions) but the decoding cache is shorter: a warning
  validate(c, process_count=1)
  assert 'train.seq_len=1000 exceeds model.max_len=128' in warnings(c)[0]
  with pytest.raises(ConfigError, match='ConfigDict'):
    validate({'train': {}}, process_count=1)


def test_resume_mismatch_names_model_and_optimiser_keys_only():
  from miras_jax.train.config import resume_mismatch

  stored = {
    'model': {'d_model': 64, 'rule': 'moneta', 'dtype': 'float32', 'chunk_size': 32},
    'train': {'grad_clip': 1.0, 'lr': 3e-3},
  }
  same = json.loads(json.dumps(stored))
  same['model']['dtype'] = 'bfloat16'  # how it is computed, not which model
  same['train'].update(lr=1e-4, grad_clip=0.5)  # hyper-parameters may change on a resume
  assert resume_mismatch(stored, same) == []
  other = json.loads(json.dumps(stored))
  other['model'].update(d_model=128, chunk_size=8)
  other['train']['grad_clip'] = 0.0
  assert resume_mismatch(stored, other) == [
    'model.chunk_size: 32 -> 8',
    'model.d_model: 64 -> 128',
    'train.grad_clip: 1 -> 0',
  ]


def test_restore_refuses_a_readable_checkpoint_of_another_shape(tmp_path, monkeypatch):
  """Structure mismatch (readable files) raises and touches nothing; unreadable data is moved."""
  from miras_jax.train import checkpoint as ckpt_lib
  from miras_jax.train.checkpoint import Checkpointer, CheckpointMismatchError
  from miras_jax.train.loop import TrainState

  def state(n):
    p = {'w': jnp.ones((n, 3)), 'b': jnp.zeros((3,))}
    return TrainState(step=jnp.asarray(1, jnp.int32), params=p, opt_state=(jnp.zeros((n, 3)),))

  def abstract(n):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state(n))

  ck = Checkpointer(tmp_path, every_steps=1, keep_last=5, async_save=False)
  data = {'num_shards': 1, 'shards': {'0': {'pipeline': {}, 'iterator': {}}}}
  ck.save(1, state(2), data, {}, force=True)
  ck.save(2, state(2), data, {}, force=True)
  ck.wait()
  with pytest.raises(CheckpointMismatchError, match=r'w \(2, 3\) vs requested \(4, 3\)'):
    ck.restore_latest(abstract(4))
  assert sorted(int(p.name) for p in tmp_path.iterdir()) == [1, 2]
  # saved by 2 processes, 2 data shards, but only process 0's file is here (a host-local disk):
  # shard 1's position is missing, which is a mismatch (one line), never corruption
  ck.save(3, state(2), data, {}, force=True)
  ck.wait()
  data_dir = tmp_path / '3' / 'data'
  data_dir.mkdir(exist_ok=True)
  for p in data_dir.glob('process_*-of-*.json'):
    p.unlink()
  two = {'num_shards': 2, 'shards': {'0': {'pipeline': {}, 'iterator': {}}}}
  (data_dir / 'process_0-of-2.json').write_text(json.dumps(two))
  with pytest.raises(CheckpointMismatchError, match=r'shard\(s\) \[1\] of 2 is not in') as e:
    ck.restore_latest(abstract(2))
  assert '\n' not in str(e.value)
  assert (tmp_path / '3').is_dir() and not list(tmp_path.glob('corrupt-3-*'))
  # with both files, 2 shards cannot be split over 3 processes (the layout check, as process 0)
  two['shards']['1'] = two['shards']['0']
  (data_dir / 'process_1-of-2.json').write_text(json.dumps(two))
  assert ck._data_layout_mismatch(3) == ''  # one process takes both shards
  monkeypatch.setattr(ckpt_lib.jax, 'process_count', lambda: 3)
  assert 'cannot be split exactly over 3 processes' in ck._data_layout_mismatch(3)
  monkeypatch.undo()
  shutil.rmtree(tmp_path / '3')
  ck.manager.reload()
  # truncate the arrays of step 2: unreadable -> quarantined, step 1 is used
  for p in (tmp_path / '2' / 'state').rglob('*'):
    if p.is_file() and 'ocdbt' in str(p) and p.stat().st_size > 0:
      with open(p, 'r+b') as f:
        f.truncate(p.stat().st_size // 2)
  late = []  # what reaches the hook in place (train/orbax_restore.py drops Orbax's late reads)
  monkeypatch.setattr(sys, 'unraisablehook', late.append)
  step, restored, _ = ck.restore_latest(abstract(2))
  time.sleep(0.1)
  assert not late, [str(u.exc_value) for u in late]
  assert step == 1 and float(restored.params['w'].sum()) == 6.0
  assert list(tmp_path.glob('corrupt-2-*'))
  ck.close()


def test_orbax_restore_guard_drops_only_late_reads(monkeypatch):
  """Around a restore that fails, the unraisable-exception hook drops exactly the report of a read
  that ends after Orbax closed its event loop (``RuntimeError('Event loop is closed')`` in
  ``call_soon_threadsafe``, no object), also one coming after the failure, and passes on the rest;
  then the previous hook is back (train/orbax_restore.py)."""
  import asyncio

  from miras_jax.train.orbax_restore import orbax_restore_guard

  seen = []
  monkeypatch.setattr(sys, 'unraisablehook', seen.append)
  loop = asyncio.new_event_loop()
  loop.close()

  def report(fn, obj=None, delay=0.0):  # what Python does with an exception no caller can catch
    time.sleep(delay)
    try:
      fn()
    except RuntimeError as e:
      args = dict(exc_value=e, exc_traceback=e.__traceback__, err_msg=None, object=obj)
      sys.unraisablehook(types.SimpleNamespace(exc_type=type(e), **args))

  def late():  # a TensorStore read completing after Orbax closed the restore's loop
    loop.call_soon_threadsafe(print)

  def other():
    raise RuntimeError('Event loop is closed')  # the same message from elsewhere

  straggler = threading.Thread(target=report, args=(late,), kwargs={'delay': 0.05})
  with pytest.raises(ValueError, match='damaged'):
    with orbax_restore_guard(quiet_s=0.2):
      report(late)
      report(late, obj='x')
      report(other)
      straggler.start()
      raise ValueError('damaged')
  straggler.join()
  assert sys.unraisablehook == seen.append
  assert [u.object for u in seen] == ['x', None]
  assert seen[1].exc_traceback.tb_next.tb_frame.f_code.co_name == 'other'
  report(late)  # after the guard: passed on
  assert len(seen) == 3
  with orbax_restore_guard():  # a restore that succeeds: the hook is back at once
    assert sys.unraisablehook != seen.append
  assert sys.unraisablehook == seen.append


def test_workdir_lock_is_exclusive_and_stale_after_a_crash(tmp_path):
  from miras_jax.train.lock import LOCK_FILE, WorkdirLock, WorkdirLockedError

  with WorkdirLock(tmp_path):
    with pytest.raises(WorkdirLockedError, match=f'pid {os.getpid()} on '):
      WorkdirLock(tmp_path).acquire()
  assert not (tmp_path / LOCK_FILE).exists()
  # a holder that died without releasing leaves its file but no flock: the lock is taken over
  (tmp_path / LOCK_FILE).write_text(json.dumps({'pid': 999999, 'host': 'gone', 'started': 0}))
  lock = WorkdirLock(tmp_path).acquire()
  assert lock.took_over == 'pid 999999 on gone'
  assert json.loads((tmp_path / LOCK_FILE).read_text())['pid'] == os.getpid()
  lock.release()


def test_divergence_monitor_names_the_first_bad_step():
  from miras_jax.train.loop import DivergenceError, DivergenceMonitor

  mon = DivergenceMonitor()
  for step, loss, gnorm in [(1, 5.0, 1.0), (2, 4.0, float('inf')), (3, float('nan'), 1.0)]:
    mon.add(step, {'loss': jnp.asarray(loss), 'grad_norm': jnp.asarray(gnorm)})
  with pytest.raises(DivergenceError, match='at step 2: loss 4.0, grad_norm inf'):
    mon.check()
  spike = DivergenceMonitor(spike_factor=2.0, window=3)
  for step, loss in enumerate([3.0, 3.0, 3.0, 5.9, 9.0], start=1):
    spike.add(step, {'loss': jnp.asarray(loss), 'grad_norm': jnp.asarray(1.0)})
  with pytest.raises(DivergenceError, match='at step 5: loss 9 > train.loss_spike_factor 2'):
    spike.check()


def test_single_document_corpus_gets_both_splits(tmp_path, dataset):
  from miras_jax.data.prepare import prepare
  from miras_jax.train.evaluator import has_val_split as _has_val_split

  tok = json.loads((dataset / 'index.json').read_text())['tokenizer']['path']
  doc = tmp_path / 'one.txt'
  doc.write_text('To be, or not to be, that is the question. ' * 40)
  index = prepare(
    str(doc), format='text', tokenizer=tok, output_dir=tmp_path / 'o', val_fraction=0.05
  )
  train, val = index['splits']['train'], index['splits']['val']
  assert train['num_docs'] == val['num_docs'] == 1
  total = train['num_tokens'] + val['num_tokens']
  assert val['num_tokens'] == max(1, round(0.05 * total))
  # one record per document and no val fraction: an empty val split is what was asked for
  index = prepare(str(doc), format='text', tokenizer=tok, output_dir=tmp_path / 'n', val_fraction=0)
  assert not _has_val_split(tmp_path / 'n') and _has_val_split(tmp_path / 'o')  # trainer: no val
  assert index['splits']['val']['num_docs'] == 0 and index['splits']['train']['num_tokens'] == total


def test_a_run_failing_before_its_first_step_closes_its_checkpoint_manager(tmp_path, monkeypatch):
  """A failure in the set-up between the restore and the first step (here wandb.init) still
  waits for and closes the run's checkpoint manager (train/loop.py ``_steps``)."""
  import types

  from miras_jax.train import checkpoint as ckpt_lib
  from miras_jax.train import loop
  from miras_jax.train.config import ConfigError
  from miras_jax.train.defaults import family_config

  closed = []

  class Spy(ckpt_lib.Checkpointer):
    def close(self):
      closed.append(self.directory)
      super().close()

  def no_wandb(*args):
    raise ConfigError('wandb.init failed')

  monkeypatch.setattr(loop, 'init_wandb', no_wandb)
  ck = Spy(tmp_path / 'checkpoints', every_steps=1, keep_last=1)
  plan = types.SimpleNamespace(config=family_config('transformer', 'tiny'), config_dict={})
  with pytest.raises(ConfigError, match='wandb.init failed'):
    loop._steps(plan, tmp_path, ck, None, None, 0, None)  # nothing past the set-up is reached
  assert closed == [(tmp_path / 'checkpoints').resolve()]
