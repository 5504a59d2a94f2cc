"""Checkpoints: one Orbax ``CheckpointManager`` per run, plus preemption handling.

Layout of ``<workdir>/checkpoints/<step>/``:

    state/    the train state (step, fp32 params, optimiser state), Orbax
              StandardSave (OCDBT), written asynchronously and sharded:
              every process writes its own shards
    data/     the data position, ``process_<i>-of-<n>.json`` (grain's Orbax handler;
              one file per process, holding the grain states of the data shards that
              process reads, train/data.py). Restoring reads every process's file and
              hands each process its shards, so a run saved by n processes resumes on
              another process count when the data shards split exactly over it
    config/   the resolved config (JSON)

A step is only listed once Orbax has committed it (written under a temporary
name, then renamed), so a save cut by a hard kill is invisible.

Restoring tells two failures apart (:meth:`Checkpointer.restore_latest`):

- *does not fit*: the files are readable (Orbax's tree metadata loads) but hold
  another structure than the requested train state (another model or
  optimiser). This is the user's request that is wrong, not the checkpoint:
  :class:`CheckpointMismatchError` is raised and nothing is touched.
- *unreadable*: the metadata cannot be read, or it fits but reading the arrays
  or the data position fails (truncated / corrupt files). Only then is the
  step reported, moved aside to ``checkpoints/corrupt-<step>-<time>`` and the
  previous step used (the reads Orbax leaves pending print nothing: train/orbax_restore.py).

Saving policy: every ``every_steps`` steps (Orbax's ``save_interval_steps``),
keep the last ``keep_last`` plus every ``keep_every``-th step
(``keep_period``); forced saves at the end of training and on preemption. Old steps
are deleted only once the newer step has committed (Orbax's ``CheckpointManager._finalize``
deletes after ``_finalize_checkpoint``), so the last durable checkpoint is never deleted
before a newer one exists, even when a preemption cuts an asynchronous save.

Preemption: :class:`PreemptionWatcher` turns SIGTERM into "save at the
current step and exit cleanly". With one process it installs a Python SIGTERM
handler; with several it asks JAX's preemption sync point (the coordination
service receives the signal), so all processes stop at the same step.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from grain import checkpoint as grain_checkpoint
from jax.experimental import multihost_utils

from miras_jax import workdir as workdir_lib
from miras_jax.data.errors import DataError
from miras_jax.train import data as data_lib
from miras_jax.train.orbax_restore import absl_errors_only, orbax_restore_guard

__all__ = [
  'CHECKPOINT_DIR',
  'Checkpointer',
  'PreemptionWatcher',
  'NoReadableCheckpointError',
  'CheckpointMismatchError',
  'read_stored_config',
  'state_signature',
]

log = logging.getLogger(__name__)

CHECKPOINT_DIR = workdir_lib.CHECKPOINT_DIR
read_stored_config = workdir_lib.read_stored_config


class NoReadableCheckpointError(RuntimeError):
  """Checkpoints exist but none of them could be restored."""


class CheckpointMismatchError(ValueError):
  """A readable checkpoint holds another train state than the one requested (one line)."""


def _key_name(k: Any) -> str:
  for attr in ('key', 'name', 'idx'):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def state_signature(tree: Any) -> tuple[dict[str, tuple[int, ...]], list[tuple[int, ...]]]:
  """(``params`` leaf path -> shape, sorted shapes of every other leaf) of a train-state tree.

  Works on the abstract state (``TrainState`` of ``ShapeDtypeStruct``) and on Orbax's stored
  tree metadata (nested dicts / lists of ``ArrayMetadata``), whose containers differ (dataclass
  and named tuples vs dicts and lists): parameters are compared by path, the optimiser state
  by its multiset of shapes.
  """
  params, other = {}, []
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    names = [_key_name(k) for k in path]
    shape = tuple(int(d) for d in getattr(leaf, 'shape', ()))
    if names and names[0] == 'params':
      params['/'.join(names[1:])] = shape
    else:
      other.append(shape)
  return params, sorted(other)


def _describe_mismatch(want: Any, have: Any) -> str | None:
  (pw, ow), (ph, oh) = want, have
  if pw != ph:
    diffs = [
      f'{k} {ph.get(k, "missing")} vs requested {pw.get(k, "missing")}'
      for k in sorted(set(pw) | set(ph))
      if pw.get(k) != ph.get(k)
    ]
    return f'{len(diffs)} parameter(s) differ, e.g. ' + '; '.join(diffs[:3])
  if ow != oh:
    return f'the optimiser state differs ({len(oh)} stored vs {len(ow)} requested arrays)'
  return None


class _FrozenIteratorState:
  """Quacks like a grain iterator for grain's save handler; holds a snapshot of its state.

  The snapshot is taken when ``save`` is called, so an asynchronous save
  never sees the iterator advanced by later steps.
  """

  def __init__(self, state: dict[str, Any]):
    self._json = json.dumps(state, indent=1).encode()

  def get_state(self) -> bytes:
    return self._json


class Checkpointer:
  """Save / restore the train state and data position of one run directory."""

  def __init__(
    self,
    directory: str | os.PathLike,
    *,
    every_steps: int,
    keep_last: int,
    keep_every: int = 0,
    async_save: bool = True,
  ):
    self.directory = Path(directory).resolve()
    options = ocp.CheckpointManagerOptions(
      save_interval_steps=int(every_steps) if every_steps else 2**62,
      max_to_keep=int(keep_last),
      keep_period=int(keep_every) or None,
      enable_async_checkpointing=bool(async_save),
      create=True,
      cleanup_tmp_directories=True,
    )
    self.manager = ocp.CheckpointManager(
      self.directory, options=options, item_names=('state', 'data', 'config')
    )

  # ------------------------------------------------------------------ save
  def save(
    self,
    step: int,
    state: Any,
    data_state: dict[str, Any],
    config: dict[str, Any],
    *,
    force: bool = False,
  ) -> bool:
    """Start saving ``step`` if the policy (or ``force``) says so; True when a save started."""
    if step in self.manager.all_steps():  # e.g. the restored step itself
      return False
    args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain_checkpoint.CheckpointSave(_FrozenIteratorState(data_state)),
      config=ocp.args.JsonSave(config),
    )
    saved = self.manager.save(step, args=args, force=force)
    if saved:
      log.info(
        'checkpoint: saving step %d to %s%s',
        step,
        self.directory,
        ' (async)' if self.manager._options.enable_async_checkpointing else '',
      )  # pylint: disable=protected-access
    return bool(saved)

  # --------------------------------------------------------------- restore
  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    """(state, data state of every shard) of ``step``; ``abstract_state`` gives shapes and shardings.

    The data state is :func:`~miras_jax.train.data.merge_saved_states` of all processes' files.
    """
    restored = self.manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
    )
    files = self._data_files(step)
    if not files:
      raise ValueError(f'checkpoint step {step} has no data-iterator state')
    return restored['state'], data_lib.merge_saved_states(
      [json.loads(p.read_text()) for p in files]
    )

  def _data_files(self, step: int) -> list[Path]:
    data_dir = self.directory / str(step) / 'data'
    return sorted(data_dir.glob('process_*-of-*.json')) if data_dir.is_dir() else []

  def all_steps(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def stored_signature(self, step: int) -> Any:
    """:func:`state_signature` of the stored state of ``step`` (raises when unreadable)."""
    with absl_errors_only():  # Orbax warns that the item has no _CHECKPOINT_METADATA file
      meta = ocp.PyTreeCheckpointer().metadata(self.directory / str(step) / 'state')
    tree = getattr(getattr(meta, 'item_metadata', None), 'tree', None)
    if tree is None:
      tree = getattr(meta, 'tree', meta)
    if not isinstance(tree, dict) or 'params' not in tree:
      raise ValueError(f'unexpected state metadata {type(tree).__name__}')
    return state_signature(tree)

  def restore_latest(self, abstract_state: Any) -> tuple[int, Any, dict[str, Any]] | None:
    """Restore the newest readable step, moving unreadable ones aside; None when there is none.

    Raises :class:`CheckpointMismatchError` (touching nothing) when a readable step holds another
    structure than ``abstract_state``.
    """
    steps = sorted(self.manager.all_steps(), reverse=True)
    want = state_signature(abstract_state)
    for step in steps:
      try:
        with orbax_restore_guard():  # a damaged step's late reads print nothing
          have = self.stored_signature(step)
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(step, e)
        continue
      mismatch = _describe_mismatch(want, have) or self._data_layout_mismatch(step)
      if mismatch:
        raise CheckpointMismatchError(
          f'checkpoint step {step} in {self.directory} does not fit the requested model / '
          f'optimiser / process layout ({mismatch}); resume with the config and a process '
          'count it can take, or use a new --workdir (nothing was changed)'
        )
      try:
        with orbax_restore_guard():
          state, data_state = self.restore(step, abstract_state)
      except Exception as e:  # pylint: disable=broad-except
        self._unreadable(step, e)
        continue
      return step, state, data_state
    if steps:
      raise NoReadableCheckpointError(
        f'none of the checkpoints {steps} in {self.directory} could be restored'
      )
    return None

  def _data_layout_mismatch(self, step: int) -> str:
    """Why ``step``'s data position cannot be taken up by this process layout ('' if it can).

    A step saved by n processes resumes on P processes when its S data shards split exactly over
    P and every shard this process reads has its saved state here (train/data.py). Otherwise it
    is a mismatch, never corruption (the step must not be moved aside). Unparsable files are
    left to :meth:`restore` (corruption).
    """
    try:
      saved = data_lib.merge_saved_states(
        [json.loads(p.read_text()) for p in self._data_files(step)]
      )
    except (ValueError, KeyError, TypeError, OSError):
      return ''
    try:
      shards, _, _ = data_lib.shard_plan(
        saved['num_shards'], jax.process_index(), jax.process_count()
      )
    except DataError as e:
      return str(e)
    missing = [s for s in shards if s not in saved['shards']]
    if missing:
      return (
        f'the data position of shard(s) {missing} of {saved["num_shards"]} is not in '
        f"{self.directory / str(step) / 'data'} (each host must see every host's files to "
        'resume on another process count)'
      )
    return ''

  def _unreadable(self, step: int, e: BaseException) -> None:
    reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:300]
    log.error(
      'checkpoint step %d in %s is unreadable (%s); falling back to the previous one',
      step,
      self.directory,
      reason,
    )
    print(
      f'WARNING: checkpoint step {step} is unreadable ({reason}); '
      'falling back to the previous checkpoint',
      flush=True,
    )
    self._quarantine(step)

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      src = self.directory / str(step)
      dst = self.directory / f'corrupt-{step}-{int(time.time())}'
      try:
        os.replace(src, dst)
        log.error('moved unreadable checkpoint %s to %s', src, dst)
      except OSError as e:
        log.error('could not move unreadable checkpoint %s aside: %s', src, e)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices(f'quarantine checkpoint {step}')
    self.manager.reload()

  # ------------------------------------------------------------------ misc
  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class PreemptionWatcher:
  """``reached(step)`` is True once SIGTERM (preemption) arrived, on every process at the same step."""

  def __init__(self):
    self._flag = threading.Event()
    self._multi = jax.process_count() > 1
    self._use_sync_point = self._multi
    self._previous = None
    if not self._multi and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._on_signal)

  def _on_signal(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self._flag.set()

  def reached(self, step: int) -> bool:
    if not self._multi:
      return self._flag.is_set()
    if self._use_sync_point:
      try:
        return bool(multihost_utils.reached_preemption_sync_point(step))
      except Exception as e:  # pylint: disable=broad-except
        log.warning('JAX preemption sync point unavailable (%s); polling SIGTERM instead', e)
        self._use_sync_point = False
        if threading.current_thread() is threading.main_thread():
          self._previous = signal.signal(signal.SIGTERM, self._on_signal)
    flags = multihost_utils.process_allgather(jax.numpy.asarray(self._flag.is_set()))
    return bool(flags.any())

  def close(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None
