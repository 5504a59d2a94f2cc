"""Command line: ``python -m miras_jax.train --config=configs/<file>.py[:<arg>] --workdir=<dir>``.

    python -m miras_jax.train --config=configs/quickstart.py --workdir=runs/quickstart
    python -m miras_jax.train --config=configs/moneta.py:340m --workdir=runs/m340 \\
        --config.train.steps=20000 --config.train.batch_size=256 --config.data.corpus=/data/fineweb

Any config key can be overridden with ``--config.<key>=<value>``; the config is
locked, so an unknown key or a value of the wrong type is a one-line error
(exit status 2). Running the same command again resumes from the newest
checkpoint in ``<workdir>/checkpoints``. SIGTERM saves and exits with status 0.

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


def _fail(message: object) -> int:
  text = str(message)
  if 'Traceback (most recent call last)' in text:  # config file raised: keep its last line
    head = text.split('Traceback (most recent call last)')[0].rstrip(' :\n')
    last = [l for l in text.splitlines() if l.strip()][-1].strip()
    text = f'{head}: {last}'
  print(f'{PROG}: error: {" ".join(text.split())}', file=sys.stderr, flush=True)
  return 2


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
  try:
    flags.FLAGS(argv)
    config = _CONFIG.value
    if config is not None:
      config.get('train')  # a config file that failed to load raises here
  except flags.Error as e:
    return _fail(e)
  except (AttributeError, KeyError) as e:  # an override names a key the locked config lacks
    detail = str(e.args[0]) if e.args else str(e)
    bad = [o for o in overrides if any(part in detail for part in o.split('.')[1:])] or overrides
    hint = re.search(r'Did you mean "([^"]+)"', detail)
    return _fail(
      f'unknown config key {", ".join(bad) or detail}'
      + (f' (did you mean "{hint.group(1)}"?)' if hint else '')
    )
  except (OSError, ImportError, ValueError, TypeError, SyntaxError) as e:
    return _fail(f'cannot load config: {e}')
  if _CONFIG.value is None:
    return _fail('--config is required (e.g. --config=configs/quickstart.py)')
  if not _WORKDIR.value:
    return _fail('--workdir is required')

  logging.basicConfig(level=logging.WARNING, format='%(levelname)s %(name)s: %(message)s')
  logging.getLogger('miras_jax').setLevel(logging.INFO)
  logging.getLogger('absl').setLevel(logging.WARNING)

  from miras_jax.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from miras_jax.train import config as config_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.train import loop  # pylint: disable=import-outside-toplevel
  from miras_jax.train.sharding import MeshError  # pylint: disable=import-outside-toplevel

  try:
    _maybe_initialize_distributed()
    result = loop.train(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, MeshError, DataError, FileNotFoundError) as e:
    return _fail(e)
  except KeyboardInterrupt:
    return _fail('interrupted')
  del result
  return 0


if __name__ == '__main__':
  sys.exit(main())
