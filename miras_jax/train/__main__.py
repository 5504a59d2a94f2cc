"""Command line: ``python -m miras_jax.train --config=configs/<file>.py[:<arg>] --workdir=<dir>``.

    python -m miras_jax.train --config=configs/quickstart.py --workdir=runs/quickstart
    python -m miras_jax.train --config=configs/moneta.py:340m --workdir=runs/m340 \\
        --config.train.steps=20000 --config.train.batch_size=256 --config.data.corpus=/data/fineweb

Any config key can be overridden with ``--config.<key>=<value>``; the config is
locked, so an unknown key or a value of the wrong type is a one-line error
(exit status 2). Running the same command again resumes from the newest
checkpoint in ``<workdir>/checkpoints``. SIGTERM saves and exits with status 0.

Every failure a user can cause ends in one line on stderr, ``python -m
miras_jax.train: error: ...``: status 2 for a bad command (config, workdir,
data, a checkpoint of another model, a run directory in use), status 1 when
the run itself fails (training diverged, a file system error such as a full
disk). A checkpoint is never changed by a failed command.

Multi-host: ``jax.distributed.initialize()`` runs when ``--coordinator_address``
/ ``--num_processes`` / ``--process_id`` are given (or the
``MIRAS_COORDINATOR_ADDRESS`` / ``MIRAS_NUM_PROCESSES`` / ``MIRAS_PROCESS_ID``
environment variables), or with ``--distributed=true`` (JAX then discovers the
cluster itself: Cloud TPU pods, SLURM, Open MPI). ``--distributed=false``
never initialises.
"""

from __future__ import annotations

import logging
import os
import re
import sys

from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Python config file, e.g. configs/quickstart.py[:arg]', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'run directory (checkpoints, metrics, config.json)')
_DISTRIBUTED = flags.DEFINE_enum(
  'distributed',
  'auto',
  ['auto', 'true', 'false'],
  'call jax.distributed.initialize(): auto = when coordinator flags/env are set',
)
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0 (multi-process runs)'
)
_NUM_PROCESSES = flags.DEFINE_integer(
  'num_processes', None, 'number of processes (multi-process runs)'
)
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "this process's index (multi-process runs)")

PROG = 'python -m miras_jax.train'


def _fail(message: object, status: int = 2) -> int:
  text = str(message)
  if 'Traceback (most recent call last)' in text:  # config file raised: keep its last line
    head = text.split('Traceback (most recent call last)')[0].rstrip(' :\n')
    last = [l for l in text.splitlines() if l.strip()][-1].strip()
    text = f'{head}: {last}'
  print(f'{PROG}: error: {" ".join(text.split())}', file=sys.stderr, flush=True)
  return status


def _maybe_initialize_distributed() -> None:
  import jax  # pylint: disable=import-outside-toplevel

  coordinator = _COORDINATOR.value or os.environ.get('MIRAS_COORDINATOR_ADDRESS')
  num = (
    _NUM_PROCESSES.value
    if _NUM_PROCESSES.value is not None
    else os.environ.get('MIRAS_NUM_PROCESSES')
  )
  pid = _PROCESS_ID.value if _PROCESS_ID.value is not None else os.environ.get('MIRAS_PROCESS_ID')
  explicit = any(v is not None for v in (coordinator, num, pid))
  if _DISTRIBUTED.value == 'false' or (_DISTRIBUTED.value == 'auto' and not explicit):
    return
  kwargs = {}
  if coordinator is not None:
    kwargs['coordinator_address'] = coordinator
  if num is not None:
    kwargs['num_processes'] = int(num)
  if pid is not None:
    kwargs['process_id'] = int(pid)
  jax.distributed.initialize(**kwargs)


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv if argv is None else [PROG, *argv])
  overrides = [a.split('=', 1)[0][2:] for a in argv[1:] if a.startswith('--config.')]
  config_file = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), '')
  if config_file and not config_file.split(':', 1)[0].endswith('.py'):
    return _fail(
      f'--config={config_file}: a config is a Python file defining get_config() '
      '(e.g. configs/quickstart.py)'
    )
  try:
    flags.FLAGS(argv)
    config = _CONFIG.value
    if config is not None:
      config.get('train')  # a config file that failed to load raises here
  except flags.Error as e:
    return _fail(e)
  except (AttributeError, KeyError) as e:
    detail = str(e.args[0]) if e.args else str(e)
    if not overrides or 'get_config' in detail:  # the file itself is broken
      return _fail(f'cannot load config {config_file}: {detail}')
    return _fail(_unknown_key(detail, overrides))
  except Exception as e:  # pylint: disable=broad-except  # the config file raised
    return _fail(f'cannot load config {config_file}: {type(e).__name__}: {e}')
  if _CONFIG.value is None:
    return _fail('--config is required (e.g. --config=configs/quickstart.py)')
  if not _WORKDIR.value:
    return _fail('--workdir is required')

  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  logging.getLogger('miras_jax').setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)

  return run(_CONFIG.value, _WORKDIR.value)


def run(config, workdir: str) -> int:
  """Train; every failure a user can cause becomes one line on stderr and an exit status."""
  from miras_jax.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from miras_jax.train import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.train import loop  # pylint: disable=import-outside-toplevel
  from miras_jax.train.lock import WorkdirLockedError  # pylint: disable=import-outside-toplevel
  from miras_jax.train.sharding import MeshError  # pylint: disable=import-outside-toplevel

  try:
    config_lib.check_config_object(config)
    _maybe_initialize_distributed()
    loop.train(config, workdir)
  except (
    config_lib.ConfigError,
    MeshError,
    DataError,
    FileNotFoundError,
    ckpt_lib.CheckpointMismatchError,
    ckpt_lib.NoReadableCheckpointError,
    WorkdirLockedError,
  ) as e:
    return _fail(e)
  except loop.DivergenceError as e:
    return _fail(e, status=1)
  except OSError as e:  # full disk, permissions, a vanished file system ...
    where = f' ({e.filename})' if getattr(e, 'filename', None) else ''
    return _fail(f'{e.strerror or e}{where}', status=1)
  except KeyboardInterrupt:
    return _fail('interrupted')
  return 0


def _unknown_key(detail: str, overrides: list[str]) -> str:
  """The message for an override naming a key the locked config lacks.

  ``ml_collections`` reports only the missing leaf name (``"Key 'stpes' does not exist ...``),
  so the override whose last component is that name is the culprit; valid siblings given in
  the same command are not named.
  """
  hint = re.search(r'Did you mean "([^"]+)" instead of "([^"]+)"', detail)
  if hint:  # ml_collections names the missing leaf in its suggestion
    bad = [o for o in overrides if o.split('.')[-1] == hint.group(2)]
  else:
    bad = [o for o in overrides if re.search(rf"['\"]{re.escape(o.split('.')[-1])}['\"]", detail)]
  return f'unknown config key {", ".join(bad or overrides)}' + (
    f' (did you mean "{hint.group(1)}"?)' if hint else ''
  )


if __name__ == '__main__':
  sys.exit(main())
