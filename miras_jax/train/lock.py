"""One training run per run directory: an exclusive lock on ``<workdir>/run.lock``.

Mechanism (chosen over a plain ``O_EXCL`` file): the lock is an ``fcntl.flock``
on ``run.lock``, held for the life of the run. The kernel drops a ``flock``
when its process dies, however it dies (SIGKILL, OOM, a crash), so a lock left
by a crashed run is stale by construction: the next run simply acquires it and
says it took over. An ``O_EXCL`` file would need a liveness test of the pid it
names, which is unreliable across pid reuse and impossible from another host.
The file holds ``{"pid", "host", "started"}`` of the holder only to name it in
the refusal message.

The file is unlinked on release. Because a second process may have opened the
old file just before the unlink, the holder re-checks after ``flock`` that the
path still names the inode it locked, and retries otherwise (the usual
lock-file-with-unlink protocol).

Limits: ``flock`` is advisory, and only as good as the file system's support
for it (local disks; NFSv4 maps it onto byte-range locks). On a file system
that cannot lock at all, a warning is logged and the run proceeds unlocked.
Multi-process runs lock on process 0 only (the others share its directory).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

from miras_jax.workdir import LOCK_FILE

__all__ = ['LOCK_FILE', 'WorkdirLockedError', 'WorkdirLock']

log = logging.getLogger(__name__)


class WorkdirLockedError(RuntimeError):
  """Another live run holds the run directory (one-line message naming it)."""


def _holder(path: Path) -> str:
  try:
    info = json.loads(path.read_text() or '{}')
  except (OSError, ValueError):
    return 'another process'
  if not isinstance(info, dict) or 'pid' not in info:
    return 'another process'
  return f'pid {info.get("pid")} on {info.get("host", "?")}'


class WorkdirLock:
  """``acquire()`` / ``release()`` (or a context manager) on ``<workdir>/run.lock``."""

  def __init__(self, workdir: str | os.PathLike):
    self.path = Path(workdir) / LOCK_FILE
    self._fd: int | None = None
    self.took_over: str | None = None  # the holder named by a stale file we replaced

  def acquire(self) -> WorkdirLock:
    for _ in range(10):
      stale = _holder(self.path) if self.path.exists() else None
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise WorkdirLockedError(
            f'run directory {str(self.path.parent)!r} is in use by another training run '
            f'({_holder(self.path)}); wait for it to finish or use another --workdir'
          ) from None
        log.warning('cannot lock %s (%s); running without a workdir lock', self.path, e)
        return self
      try:
        same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
      except FileNotFoundError:
        same = False
      if not same:  # the previous holder unlinked the file we opened: retry on the new one
        os.close(fd)
        continue
      info = {'pid': os.getpid(), 'host': socket.gethostname(), 'started': time.time()}
      os.ftruncate(fd, 0)
      os.write(fd, json.dumps(info).encode())
      os.fsync(fd)
      self._fd = fd
      if stale is not None and stale != 'another process':
        self.took_over = stale
      return self
    raise WorkdirLockedError(f'could not lock {str(self.path)!r}: it keeps being replaced')

  def release(self) -> None:
    if self._fd is None:
      return
    try:
      self.path.unlink()  # before unlocking: a waiter then sees the inode change and retries
    except FileNotFoundError:
      pass
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  @property
  def held(self) -> bool:
    return self._fd is not None

  def __enter__(self) -> WorkdirLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
