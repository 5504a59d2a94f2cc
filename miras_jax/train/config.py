"""Checks on a resolved training config and its JSON form.

The config itself is an ``ml_collections.ConfigDict`` from ``configs/*.py``,
loaded and locked by ``config_flags`` in :mod:`miras_jax.train.__main__`
(unknown keys and wrong types fail while parsing the command line). What is
checked here needs more than one key or the runtime (device and process
counts): every failure is a :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

__all__ = ['ConfigError', 'validate', 'to_dict', 'write_json', 'compute_dtype', 'eval_batch_size']

CONFIG_FILE = 'config.json'
SECTIONS = ('model', 'data', 'train', 'checkpoint', 'eval')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}


class ConfigError(ValueError):
  """A config value is invalid or inconsistent (one-line message)."""


def _positive(name: str, value: int) -> None:
  if int(value) < 1:
    raise ConfigError(f'{name} must be >= 1, got {value}')


def eval_batch_size(config: ConfigDict) -> int:
  return int(config.eval.batch_size) or int(config.train.batch_size)


def validate(config: ConfigDict, *, process_count: int | None = None) -> None:
  """Raise :class:`ConfigError` for values that cannot work together."""
  missing = [s for s in SECTIONS if s not in config]
  if missing:
    raise ConfigError(f'config has no section(s) {", ".join(missing)}')
  if not config.model:
    raise ConfigError('config.model is empty (use a preset such as configs/base.py:moneta,tiny)')
  t = config.train
  process_count = jax.process_count() if process_count is None else process_count
  for key in ('steps', 'batch_size', 'seq_len', 'grad_accum_steps', 'log_every_steps'):
    _positive(f'train.{key}', t[key])
  if float(t.lr) <= 0:
    raise ConfigError(f'train.lr must be > 0, got {t.lr}')
  if int(t.warmup_steps) < 0:
    raise ConfigError(f'train.warmup_steps must be >= 0, got {t.warmup_steps}')
  if not 0.0 <= float(t.min_lr_ratio) <= 1.0:
    raise ConfigError(f'train.min_lr_ratio must be in [0, 1], got {t.min_lr_ratio}')
  if t.compute_dtype not in ('auto', *_DTYPES):
    raise ConfigError(
      f'train.compute_dtype must be one of auto, {", ".join(_DTYPES)}; got {t.compute_dtype!r}'
    )
  per_process, rem = divmod(int(t.batch_size), process_count)
  if rem:
    raise ConfigError(
      f'train.batch_size={t.batch_size} is not divisible by the {process_count} processes'
    )
  if per_process % int(t.grad_accum_steps):
    raise ConfigError(
      f'per-process batch {per_process} (train.batch_size / processes) is not divisible by '
      f'train.grad_accum_steps={t.grad_accum_steps}'
    )
  if eval_batch_size(config) % process_count:
    raise ConfigError(
      f'eval batch size {eval_batch_size(config)} is not divisible by the {process_count} processes'
    )
  k = config.checkpoint
  for key in ('every_steps', 'keep_every'):
    if int(k[key]) < 0:
      raise ConfigError(f'checkpoint.{key} must be >= 0, got {k[key]}')
  _positive('checkpoint.keep_last', k.keep_last)
  if int(config.eval.every_steps) < 0 or int(config.eval.num_batches) < 0:
    raise ConfigError('eval.every_steps and eval.num_batches must be >= 0')
  if not str(config.data.corpus):
    raise ConfigError("data.corpus is empty (use 'default', a text file/dir, or a prepared dir)")


def check_mesh_batch(config: ConfigDict, mesh_shape: dict[str, int]) -> None:
  """The global (micro)batch must split evenly over the batch mesh axes."""
  shards = int(mesh_shape['data']) * int(mesh_shape['fsdp'])
  micro = int(config.train.batch_size) // int(config.train.grad_accum_steps)
  if micro % shards:
    raise ConfigError(
      f'micro-batch {micro} (train.batch_size / grad_accum_steps) is not divisible by '
      f'data*fsdp={shards} mesh shards'
    )
  if eval_batch_size(config) % shards:
    raise ConfigError(
      f'eval batch size {eval_batch_size(config)} is not divisible by data*fsdp={shards}'
    )


def compute_dtype(config: ConfigDict, platform: str | None = None) -> Any:
  """The forward/backward dtype: ``auto`` is bfloat16 on GPU/TPU and float32 on CPU."""
  name = config.train.compute_dtype
  if name == 'auto':
    platform = platform or jax.default_backend()
    name = 'float32' if platform == 'cpu' else 'bfloat16'
  return _DTYPES[name]


def to_dict(config: ConfigDict) -> dict[str, Any]:
  """A JSON-safe plain dict of the config (tuples become lists)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def write_json(config: ConfigDict, workdir: str | os.PathLike) -> Path:
  """Write the resolved config to ``<workdir>/config.json`` atomically; returns the path."""
  path = Path(workdir) / CONFIG_FILE
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(to_dict(config), indent=2, sort_keys=True) + '\n')
  os.replace(tmp, path)
  return path
