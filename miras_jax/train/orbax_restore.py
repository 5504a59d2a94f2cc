"""Restores that may fail, without Orbax's late reads printing to stderr afterwards.

orbax-checkpoint 0.12.8 runs a synchronous restore (and a metadata read) in a fresh event loop
(``asyncio_utils._run_sync_via_new_loop``) and closes that loop as soon as the coroutine raises,
i.e. at the first read that fails, while its other TensorStore reads are still pending. Each of
those that completes later calls ``loop.call_soon_threadsafe`` on the closed loop from a
TensorStore thread; the ``RuntimeError('Event loop is closed')`` cannot be raised to anyone, so
Python hands it to ``sys.unraisablehook``, whose default prints a traceback to stderr: a damaged
checkpoint's one-line error (``python -m miras_jax.eval``) or the trainer's "unreadable, falling
back" line came with up to 35 such tracebacks (7 of 18 eval runs on a tiny damaged checkpoint
here; timing-dependent). asyncio's own "Task exception was never retrieved" never came in those
runs (nor in 6 trainer resumes past a damaged step), so the loop's exception handler is left alone.

:func:`orbax_restore_guard` wraps the restores that may meet a damaged checkpoint (the trainer's
``Checkpointer.restore_latest``, the evals' ``load_params``) and drops exactly those reports, and
nothing else, until the stragglers have stopped. The failure itself is still raised.
:func:`absl_errors_only` keeps Orbax's warnings about the files of a damaged checkpoint (e.g.
"Failed to get item metadata") off stderr where the caller reports the failure itself.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

__all__ = ['orbax_restore_guard', 'is_late_read_error', 'absl_errors_only']


def is_late_read_error(unraisable: Any) -> bool:
  """True for the report of a read that completed after Orbax closed its restore's event loop:
  ``RuntimeError('Event loop is closed')`` raised in ``call_soon_threadsafe``, with no object
  (a ``sys.UnraisableHookArgs``; see the module docstring)."""
  exc = unraisable.exc_value
  if not (
    isinstance(exc, RuntimeError)
    and str(exc) == 'Event loop is closed'
    and unraisable.object is None
  ):
    return False
  tb = unraisable.exc_traceback
  frames = traceback.extract_tb(tb) if tb is not None else []
  return any(f.name == 'call_soon_threadsafe' for f in frames)


@contextlib.contextmanager
def orbax_restore_guard(quiet_s: float = 0.5, max_wait_s: float = 10.0) -> Iterator[None]:
  """Around an Orbax read that may fail: drop the late-read reports (:func:`is_late_read_error`),
  passing every other unraisable exception to the hook in place before.

  On success nothing was left pending and the hook is put back at once. When the block raises,
  the hook stays until no late read came for ``quiet_s`` seconds (they follow the failure
  within milliseconds on a local disk; at most ``max_wait_s``), then the exception propagates.
  """
  previous = sys.unraisablehook
  last = [time.monotonic()]

  def hook(unraisable: Any) -> None:
    if is_late_read_error(unraisable):
      last[0] = time.monotonic()
      return
    previous(unraisable)

  sys.unraisablehook = hook
  failed = True
  try:
    yield
    failed = False
  finally:
    if failed:
      last[0] = time.monotonic()
      deadline = last[0] + max_wait_s
      while time.monotonic() < deadline and time.monotonic() - last[0] < quiet_s:
        time.sleep(0.02)
    if sys.unraisablehook is hook:  # (not if someone replaced it meanwhile)
      sys.unraisablehook = previous


@contextlib.contextmanager
def absl_errors_only() -> Iterator[None]:
  """Orbax's absl warnings off (errors still logged), for a read whose failure the caller reports."""
  absl_log = logging.getLogger('absl')
  level = absl_log.level
  absl_log.setLevel(logging.ERROR)
  try:
    yield
  finally:
    absl_log.setLevel(level)
