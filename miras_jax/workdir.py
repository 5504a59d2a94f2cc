"""The layout of a run directory: one home for every name in it.

    <workdir>/
      config.json                    the config of the newest run *started* here
      run.lock                       held by the training run in progress (train/lock.py)
      metrics.jsonl, tensorboard/, loss_curve.png          (train/metrics.py)
      data/                          prepared data / tokenizers when data.cache_dir is empty
      checkpoints/<step>/            one Orbax step (train/checkpoint.py):
        state/  data/  config/metadata     train state, data position, the config it was made with
        commit_success.txt / _CHECKPOINT_METADATA   present once the step is committed
      eval/step_<step>.json          results of python -m miras_jax.eval

Only plain file-system facts live here (no JAX, no Orbax), so the trainer, the evaluator and
the lm-eval adapter can all import it cheaply.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = [
  'CONFIG_FILE',
  'LOCK_FILE',
  'CHECKPOINT_DIR',
  'EVAL_DIR',
  'COMMIT_MARKERS',
  'step_dir',
  'is_committed',
  'committed_steps',
  'stored_config_path',
  'read_stored_config',
  'eval_output',
]

CONFIG_FILE = 'config.json'
LOCK_FILE = 'run.lock'
CHECKPOINT_DIR = 'checkpoints'
EVAL_DIR = 'eval'
# Orbax writes a step under a temporary name and renames it when committed; it also leaves
# these markers, so a step directory without any of them is a save cut short.
COMMIT_MARKERS = ('commit_success.txt', '_CHECKPOINT_METADATA')


def step_dir(checkpoints: str | os.PathLike, step: int) -> Path:
  return Path(checkpoints) / str(int(step))


def is_committed(path: str | os.PathLike) -> bool:
  path = Path(path)
  return any((path / m).is_file() for m in COMMIT_MARKERS)


def committed_steps(checkpoints: str | os.PathLike) -> list[int]:
  """Committed steps under a ``checkpoints/`` directory, ascending (none when it is absent)."""
  root = Path(checkpoints)
  if not root.is_dir():
    return []
  return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and is_committed(p))


def stored_config_path(path: str | os.PathLike) -> Path:
  """The config saved with a checkpoint step (Orbax ``JsonSave`` item ``config``)."""
  return Path(path) / 'config' / 'metadata'


def read_stored_config(path: str | os.PathLike) -> dict[str, Any] | None:
  """The config saved with the checkpoint step at ``path``; None when absent or unreadable."""
  try:
    cfg = json.loads(stored_config_path(path).read_text())
  except (OSError, ValueError):
    return None
  return cfg if isinstance(cfg, dict) else None


def eval_output(run_dir: str | os.PathLike, step: int) -> Path:
  return Path(run_dir) / EVAL_DIR / f'step_{int(step)}.json'
