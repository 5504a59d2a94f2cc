"""The run directory as the trainer opens it: checked, created, locked, and refused for a
resume whose newest checkpoint was made by another model (train/loop.py steps 2 and 3; the
layout itself is miras_jax/workdir.py's)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from miras_jax import workdir as workdir_lib
from miras_jax.train import checkpoint as ckpt_lib
from miras_jax.train import config as config_lib
from miras_jax.train import lock as lock_lib
from miras_jax.train.metrics import print0

__all__ = ['RunDirectory', 'check_resume_config']


def _from_process_0(message: str | None, size: int = 1024) -> str | None:
  """Process 0's ``message`` (None: nothing to say) on every process, as one broadcast."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel

  buf = np.zeros(size + 1, np.uint8)
  if message is not None:
    raw = message.encode()[:size]
    buf[0], buf[1 : 1 + len(raw)] = 1, np.frombuffer(raw, np.uint8)
  buf = np.asarray(multihost_utils.broadcast_one_to_all(buf))
  return bytes(buf[1:]).rstrip(b'\0').decode(errors='replace') if buf[0] else None


class RunDirectory:
  """The run directory, checked, created and locked before anything is written into it.

  On a failure before the run starts (``started`` still False), a directory this invocation
  created is removed again when nothing but empty folders / the lock are in it, so a rejected
  command leaves no trace; so are the entries it added to a data cache inside the run directory
  (:meth:`track_cache`: a tokenizer trained or a corpus prepared before a refusal that only the
  prepared data can show, e.g. fewer records than data shards).
  """

  def __init__(self, workdir: Path):
    self.path = workdir
    self.created: Path | None = None
    self.lock = lock_lib.WorkdirLock(workdir)
    self.started = False
    self._cache: Path | None = None
    self._cache_before: set[Path] = set()

  def track_cache(self, cache: Path) -> None:
    """Note what the data cache ``cache`` (``<cache>/{tokenizers,prepared}/<entry>``, see
    miras_jax/data/cache.py) holds now; if it lies inside the run directory, what this
    invocation adds to it is removed on a failure before the run starts."""
    cache = Path(cache).expanduser().resolve()
    if not cache.is_relative_to(self.path.expanduser().resolve()):
      return  # a cache shared with other runs (maybe by a symlink): its entries are theirs too
    self._cache = cache
    self._cache_before = set(_cache_entries(cache))

  def _undo_cache(self) -> None:
    new = [p for p in _cache_entries(self._cache) if p not in self._cache_before]
    for p in sorted(new, key=lambda p: -len(p.parts)):  # entries, then the folders made for them
      if p.is_dir() and len(p.relative_to(self._cache).parts) == 2:
        shutil.rmtree(p, ignore_errors=True)
      else:
        try:
          p.rmdir()
        except OSError:  # not empty: not only ours
          pass

  def __enter__(self) -> RunDirectory:
    path = self.path
    if path.exists() and not path.is_dir():
      raise config_lib.ConfigError(f'--workdir {str(path)!r} is not a directory')
    if not path.exists():
      top = path
      while not top.parent.exists():
        top = top.parent
      try:
        path.mkdir(parents=True, exist_ok=True)  # exist_ok: other processes of the run
      except OSError as e:
        raise config_lib.ConfigError(
          f'cannot create --workdir {str(path)!r}: {e.strerror or e}'
        ) from None
      self.created = top
    if not os.access(path, os.W_OK | os.X_OK):
      raise config_lib.ConfigError(f'--workdir {str(path)!r} is not writable')
    refusal = None
    if jax.process_index() == 0:
      try:
        self.lock.acquire()
      except lock_lib.WorkdirLockedError as e:
        refusal = str(e)
    if jax.process_count() > 1:  # the others stop too, at once, instead of at the first barrier
      refusal = _from_process_0(refusal)
    if refusal is not None:
      raise lock_lib.WorkdirLockedError(refusal)
    if jax.process_index() == 0:
      if self.lock.took_over:
        print0(
          f'lock: the previous run ({self.lock.took_over}) ended without releasing '
          f'{self.lock.path.name}; taking it over'
        )
    return self

  def __exit__(self, exc_type, *_) -> None:
    if exc_type is not None and not self.started and self._cache is not None:
      if jax.process_index() == 0:  # (still holding the lock: no other run is using them)
        self._undo_cache()
    self.lock.release()
    if exc_type is not None and not self.started and self.created is not None:
      if jax.process_index() == 0 and not any(p.is_file() for p in self.created.rglob('*')):
        shutil.rmtree(self.created, ignore_errors=True)


def _cache_entries(cache: Path) -> list[Path]:
  """``cache``, its ``tokenizers`` / ``prepared`` folders and their entries, those that exist."""
  if not cache.is_dir():
    return []
  out = [cache]
  for kind in ('tokenizers', 'prepared'):
    if (cache / kind).is_dir():
      out += [cache / kind, *(cache / kind).iterdir()]
  return out


def check_resume_config(checkpoints: Path, config_dict: dict[str, Any]) -> None:
  """Refuse (one line, nothing touched) when the newest checkpoint was made by another model."""
  for step in reversed(workdir_lib.committed_steps(checkpoints)):
    stored = workdir_lib.read_stored_config(workdir_lib.step_dir(checkpoints, step))
    if stored is None:
      continue
    diffs = config_lib.resume_mismatch(stored, config_dict)
    if diffs:
      raise ckpt_lib.CheckpointMismatchError(
        f'the checkpoints in {checkpoints} (newest step {step}) were trained with another '
        f'config: {"; ".join(diffs)}; resume with the stored values or use a new --workdir '
        '(no checkpoint was changed)'
      )
    return
