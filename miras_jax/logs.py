"""Quiet logs for the command-line tools: library messages a user would otherwise learn to
ignore are dropped where they are emitted (the ``absl`` logger that Orbax and JAX log
through), everything else passes.

Dropped (each harmless and printed on every run):

* Orbax ``Metadata file does not exist: <step>/state/_CHECKPOINT_METADATA`` — an evaluation
  restores the ``state`` item with a bare ``PyTreeCheckpointer``, which looks for the
  step-level metadata file inside the item directory; the restore does not need it.
* absl INFO chatter from Orbax (``Restoring item ...``, ``Finished restoring ...``): absl's
  level is raised to WARNING.
"""

from __future__ import annotations

import logging

__all__ = ['quiet_logs', 'NOISE']

NOISE = ('Metadata file does not exist',)


class _DropNoise(logging.Filter):
  def filter(self, record: logging.LogRecord) -> bool:
    msg = record.msg if isinstance(record.msg, str) else ''
    return not msg.startswith(NOISE)


def quiet_logs() -> None:
  """Install the filter once (idempotent) and raise absl's threshold to WARNING."""
  absl = logging.getLogger('absl')
  if not any(isinstance(f, _DropNoise) for f in absl.filters):
    absl.addFilter(_DropNoise())
  try:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel

    absl_logging.set_verbosity(absl_logging.WARNING)
  except ImportError:  # absl comes with JAX; nothing to quiet without it
    pass
