"""Find a run's checkpoint and restore just its parameters.

The trainer (``miras_jax/train/checkpoint.py``) writes one Orbax
``CheckpointManager`` per run::

    <workdir>/config.json                     the resolved config
    <workdir>/checkpoints/<step>/state/       TrainState{step, params, opt_state} (PyTree, OCDBT)
    <workdir>/checkpoints/<step>/config/      the resolved config (JsonSave: a file 'metadata')

``--workdir`` may name the run directory, its ``checkpoints/`` directory, or
one ``checkpoints/<step>`` directory. Only committed steps count (the trainer's
Orbax manager marks a finished save with ``commit_success.txt`` /
``_CHECKPOINT_METADATA``; a step directory without either is a save cut short).
The config is the one stored *with the checkpoint* (``<step>/config``), which
is what the parameters were trained with; ``<run>/config.json`` is only a
fallback for checkpoints without one. Only ``state/params`` is read (an Orbax
partial restore), so the optimiser state is never loaded. A checkpoint holding
a bare params tree (``<step>/state`` or ``<step>/params`` saved with
``StandardSave(params)``) is accepted too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax

from miras_jax import workdir as workdir_lib
from miras_jax.train.orbax_restore import absl_errors_only, orbax_restore_guard
from miras_jax.workdir import is_committed

__all__ = [
  'CheckpointNotFoundError',
  'resolve_checkpoint',
  'load_params',
  'load_config',
  'ResolvedCheckpoint',
  'CheckpointUnreadableError',
  'is_committed',
]


class CheckpointNotFoundError(FileNotFoundError):
  """No (committed) checkpoint where one was asked for."""


class CheckpointUnreadableError(ValueError):
  """A committed checkpoint whose files cannot be read (missing or corrupt parts)."""


class ResolvedCheckpoint:
  def __init__(self, run_dir: Path | None, step_dir: Path, step: int):
    self.run_dir, self.step_dir, self.step = run_dir, step_dir, step

  def __repr__(self):
    return f'ResolvedCheckpoint(step={self.step}, step_dir={str(self.step_dir)!r})'


def _steps(root: Path) -> list[int]:
  return workdir_lib.committed_steps(root)


def resolve_checkpoint(path: str | os.PathLike, step: int | None = None) -> ResolvedCheckpoint:
  """The checkpoint directory of ``step`` (default: the latest) under ``path``."""
  path = Path(path).expanduser().resolve()
  if not path.exists():
    raise CheckpointNotFoundError(f'no such run or checkpoint directory: {str(path)!r}')
  if path.name.isdigit() and ((path / 'state').exists() or (path / 'params').exists()):
    root = path.parent
    run_dir = root.parent if root.name == workdir_lib.CHECKPOINT_DIR else None
    if step is not None and int(step) != int(path.name):
      raise CheckpointNotFoundError(
        f'--step={step} contradicts the checkpoint directory {str(path)!r}'
      )
    if not is_committed(path):
      raise CheckpointNotFoundError(
        f'checkpoint directory {str(path)!r} was never committed (a save cut short)'
      )
    return ResolvedCheckpoint(run_dir, path, int(path.name))
  ckpts = workdir_lib.CHECKPOINT_DIR
  if (path / ckpts).is_dir():
    root, run_dir = path / ckpts, path
  else:
    root, run_dir = path, (path.parent if path.name == ckpts else None)
  steps = _steps(root)
  if not steps:
    raise CheckpointNotFoundError(f'no checkpoints under {str(root)!r}')
  if step is None:
    step = steps[-1]
  elif int(step) not in steps:
    unfinished = (root / str(int(step))).is_dir()
    raise CheckpointNotFoundError(
      f'no {"committed " if unfinished else ""}checkpoint for step {step} under {str(root)!r} '
      f'(have {steps})'
    )
  return ResolvedCheckpoint(run_dir, root / str(int(step)), int(step))


def load_config(ckpt: ResolvedCheckpoint) -> dict[str, Any]:
  """The config the checkpoint was trained with: its own ``config`` item, else ``<run>/config.json``.

  The run's ``config.json`` describes the newest command on the run directory, which need not
  be the one that wrote this step; the copy saved with the step always is.
  """
  candidates = [workdir_lib.stored_config_path(ckpt.step_dir), ckpt.step_dir / 'config.json']
  if ckpt.run_dir is not None:
    candidates.append(ckpt.run_dir / workdir_lib.CONFIG_FILE)
  for c in candidates:
    if c.is_file():
      try:
        return json.loads(c.read_text())
      except json.JSONDecodeError as e:
        raise ValueError(f'malformed config {str(c)!r}: {e}') from None
  raise FileNotFoundError(
    f'no config found for checkpoint {str(ckpt.step_dir)!r} (looked at '
    f'{", ".join(str(c) for c in candidates)})'
  )


def load_params(ckpt: ResolvedCheckpoint | str | os.PathLike, *, sharding: Any = None) -> Any:
  """Restore the parameter tree of a checkpoint (without the optimiser state)."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel

  if not isinstance(ckpt, ResolvedCheckpoint):
    ckpt = resolve_checkpoint(ckpt)
  item = ckpt.step_dir / 'state'
  if not item.exists():
    item = ckpt.step_dir / 'params'
  if not item.exists():
    raise CheckpointNotFoundError(
      f"checkpoint {str(ckpt.step_dir)!r} has no 'state' (or 'params') item"
    )
  try:  # a damaged checkpoint: one line, without tracebacks of Orbax's late reads
    with orbax_restore_guard():
      return _restore_params(ocp, item, sharding)
  except (CheckpointNotFoundError, KeyboardInterrupt):
    raise
  except Exception as e:  # pylint: disable=broad-except  # Orbax / TensorStore / IO errors
    reason = ' '.join(f'{type(e).__name__}: {e}'.split())[:300]
    raise CheckpointUnreadableError(
      f'checkpoint {str(ckpt.step_dir)!r} is unreadable ({reason})'
    ) from None


def _restore_params(ocp: Any, item: Path, sharding: Any) -> Any:
  checkpointer = ocp.PyTreeCheckpointer()
  with absl_errors_only():  # a damaged item: "Failed to get item metadata"; load_params reports it
    meta = checkpointer.metadata(item)
  tree = getattr(getattr(meta, 'item_metadata', None), 'tree', None)
  if tree is None:
    tree = getattr(meta, 'tree', meta)
  wrapped = isinstance(tree, dict) and 'params' in tree and 'opt_state' in tree
  sub = tree['params'] if wrapped else tree
  sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(tuple(m.shape), m.dtype), sub)
  rargs = jax.tree.map(
    lambda a: ocp.ArrayRestoreArgs(sharding=sharding, global_shape=a.shape, dtype=a.dtype), abstract
  )
  if wrapped:
    out = checkpointer.restore(
      item,
      args=ocp.args.PyTreeRestore(
        item={'params': abstract}, restore_args={'params': rargs}, partial_restore=True
      ),
    )
    return out['params']
  return checkpointer.restore(item, args=ocp.args.PyTreeRestore(item=abstract, restore_args=rargs))
