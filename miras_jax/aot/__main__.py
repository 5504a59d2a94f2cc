"""``python -m miras_jax.aot``: the command line (see the package docstring)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from miras_jax.aot.compile import compile_for_topology
from miras_jax.aot.report import format_report

PROG = 'python -m miras_jax.aot'


def _fail(message: object) -> int:
  print(f'{PROG}: error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  return 2


def main(argv: list[str] | None = None) -> int:
  from absl import flags  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel

  fv = flags.FlagValues()
  config_flag = config_flags.DEFINE_config_file(
    'config', None, 'configs/<file>.py[:<arg>]', flag_values=fv, lock_config=True
  )
  topology = flags.DEFINE_string(
    'topology', None, 'TPU topology, e.g. v5e:4x4, v5p:4x4x4', flag_values=fv
  )
  save = flags.DEFINE_string('save', None, 'write the report as JSON here', flag_values=fv)
  num_slices = flags.DEFINE_integer(
    'num_slices', 1, 'multi-slice: this many copies of --topology over DCN', flag_values=fv
  )
  with_eval = flags.DEFINE_bool('eval', True, 'also compile the eval step', flag_values=fv)
  argv = list(sys.argv if argv is None else [PROG, *argv])
  try:
    fv(argv)
    config = config_flag.value
  except flags.Error as e:
    return _fail(e)
  except (AttributeError, KeyError, OSError, ImportError, ValueError, TypeError, SyntaxError) as e:
    return _fail(f'cannot load config: {e}')
  if config is None:
    return _fail('--config is required (e.g. --config=configs/moneta.py:340m)')
  if not topology.value:
    return _fail('--topology is required (e.g. --topology=v5p:4x4x4)')
  if importlib.util.find_spec('libtpu') is None:
    return _fail(
      "libtpu is not installed (pip install 'miras-jax[tpu]'); it holds the TPU compiler"
    )

  # The host's own devices are never used: no TPU is claimed even on a TPU VM, and libtpu
  # (loaded here only as a compiler) skips its one-process-per-host lock file, so several
  # compiles (and a training run) can share a machine.
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  import logging  # pylint: disable=import-outside-toplevel

  logging.getLogger('miras_jax').setLevel(logging.WARNING)
  from miras_jax.train.config import ConfigError  # pylint: disable=import-outside-toplevel
  from miras_jax.train.sharding import MeshError  # pylint: disable=import-outside-toplevel

  try:
    report = compile_for_topology(
      config, topology.value, num_slices=num_slices.value, with_eval=with_eval.value
    )
  except (ConfigError, MeshError, ValueError) as e:
    return _fail(e)
  print(format_report(report), flush=True)
  if save.value:
    path = Path(save.value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_json(), indent=1, sort_keys=True) + '\n')
    print(f'wrote {path}', flush=True)
  return 0 if report.fits else 1


if __name__ == '__main__':
  sys.exit(main())
