"""Checks on a resolved training config and its JSON form.

The config itself is an ``ml_collections.ConfigDict`` from ``configs/*.py``,
loaded and locked by ``config_flags`` in :mod:`miras_jax.train.__main__`
(unknown keys and wrong types fail while parsing the command line). What is
checked here needs more than one key or the runtime (device and process
counts): every failure is a :class:`ConfigError` with a one-line message.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from ml_collections import ConfigDict

from miras_jax.models.config import LEGACY_KEYS
from miras_jax.workdir import CONFIG_FILE

__all__ = [
  'ConfigError',
  'check_config_object',
  'validate',
  'resume_mismatch',
  'warnings',
  'to_dict',
  'write_json',
  'compute_dtype',
  'eval_batch_size',
]


SECTIONS = ('model', 'data', 'train', 'checkpoint', 'eval')
_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
_FLOAT32_MAX = 3.4028234663852886e38

# Model keys that choose how the same function is computed (precision of the activations,
# rematerialisation, kernel / implementation choice, gradient truncation), not which function
# or which parameters: a run may resume with them changed. Every other ``model.*`` key is part
# of the model, so a checkpoint only resumes under equal values (see :func:`resume_mismatch`).
RUNTIME_MODEL_KEYS = frozenset(
  {
    'dtype',
    'remat',
    'attention_backend',
    'memory_impl',
    'memory_remat_group',
    'memory_grad_horizon',
  }
)


class ConfigError(ValueError):
  """A config value is invalid or inconsistent (one-line message)."""


def _positive(name: str, value: int) -> None:
  if int(value) < 1:
    raise ConfigError(f'{name} must be >= 1, got {value}')


def eval_batch_size(config: ConfigDict) -> int:
  return int(config.eval.batch_size) or int(config.train.batch_size)


def check_config_object(config: Any) -> None:
  """A loaded ``--config`` must be a ``ConfigDict`` with every section (e.g. not YAML / a dict)."""
  if not isinstance(config, ConfigDict):
    raise ConfigError(
      f'the config file must define get_config() returning an ml_collections.ConfigDict, '
      f'got {type(config).__name__} (see configs/quickstart.py)'
    )


def _finite(name: str, value: Any, *, low: float, low_ok: bool) -> float:
  try:
    v = float(value)
  except (TypeError, ValueError):
    raise ConfigError(f'{name} must be a number, got {value!r}') from None
  if not math.isfinite(v) or abs(v) > _FLOAT32_MAX or v < low or (v == low and not low_ok):
    raise ConfigError(
      f'{name} must be a finite number {">=" if low_ok else ">"} {low:g}, got {value}'
    )
  return v


def validate(config: ConfigDict, *, process_count: int | None = None) -> None:
  """Raise :class:`ConfigError` for values that cannot work together (no files, no devices).

  Everything a run uses is checked here, before the run directory is touched, so a bad value
  never surfaces later (e.g. an unknown ``eval.tasks`` name at the first evaluation).
  """
  check_config_object(config)
  missing = [s for s in SECTIONS if s not in config]
  if missing:
    raise ConfigError(f'config has no section(s) {", ".join(missing)}')
  if not config.model:
    raise ConfigError('config.model is empty (use a preset such as configs/base.py:moneta,tiny)')
  t = config.train
  process_count = jax.process_count() if process_count is None else process_count
  for key in ('steps', 'batch_size', 'seq_len', 'grad_accum_steps', 'log_every_steps'):
    _positive(f'train.{key}', t[key])
  _finite('train.lr', t.lr, low=0.0, low_ok=False)
  for key in ('weight_decay', 'grad_clip', 'eps', 'b1', 'b2'):
    _finite(f'train.{key}', t[key], low=0.0, low_ok=True)
  for key in ('b1', 'b2'):
    if float(t[key]) >= 1.0:
      raise ConfigError(f'train.{key} must be < 1, got {t[key]}')
  if 'loss_spike_factor' in t:
    spike = _finite('train.loss_spike_factor', t.loss_spike_factor, low=0.0, low_ok=True)
    if 0 < spike <= 1:
      raise ConfigError(
        f'train.loss_spike_factor must be 0 (off) or > 1, got {t.loss_spike_factor}'
      )
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
  shards = int(config.data.get('shards', 0) or 0)
  if shards < 0 or (shards and int(t.batch_size) % shards):
    raise ConfigError(
      f'data.shards={shards} must be 0 (the process count) or a positive divisor of '
      f'train.batch_size={t.batch_size}'
    )
  if shards and shards % process_count and process_count % shards:
    raise ConfigError(
      f'data.shards={shards} and the {process_count} processes must divide one another'
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
  e = config.eval
  for key in ('every_steps', 'num_batches', 'batch_size', 'limit'):
    if key in e and int(e[key]) < 0:
      raise ConfigError(f'eval.{key} must be >= 0, got {e[key]}')
  if str(e.get('tasks', '') or '').strip():
    from miras_jax.evals.harness import parse_tasks  # pylint: disable=import-outside-toplevel

    try:
      parse_tasks(str(e.tasks))
    except ValueError as err:
      raise ConfigError(f'eval.tasks: {err}') from None
  if not str(config.data.corpus):
    raise ConfigError("data.corpus is empty (use 'default', a text file/dir, or a prepared dir)")
  d = config.data
  if not 0 <= int(d.seed) < 2**32:  # (else the data pipeline raises it only at the first batch)
    raise ConfigError(f'data.seed must be in [0, 2**32), got {d.seed}')
  if 'val_fraction' in d and not 0.0 <= float(d.val_fraction) < 1.0:
    raise ConfigError(f'data.val_fraction must be in [0, 1), got {d.val_fraction}')
  if copy_rows(d, int(config.train.batch_size) // (shards or process_count)) and not (
    1 <= 2 * int(d.copy_length) <= int(config.train.seq_len)
  ):
    raise ConfigError(
      f'data.copy_length={d.copy_length} read twice must fit train.seq_len={config.train.seq_len}'
    )


def copy_rows(data: ConfigDict, rows: int) -> int:
  """Rows of the copy task among a data shard's ``rows`` a step: ``data.copy_fraction`` of
  them, which must be a whole number (miras_jax/data/copy_task.py)."""
  fraction = float(data.get('copy_fraction', 0.0) or 0.0)
  n = round(fraction * rows)
  if not 0.0 <= fraction < 1.0 or abs(n - fraction * rows) > 1e-6:
    raise ConfigError(
      f'data.copy_fraction={fraction} must be in [0, 1) and give a whole number of the {rows} '
      'rows a data shard reads a step'
    )
  return n


def warnings(config: ConfigDict) -> list[str]:
  """Settings that work but are probably not what was meant (printed at start-up)."""
  out = []
  max_len = config.model.get('max_len')
  if max_len and int(config.train.seq_len) > int(max_len):
    # The models use RoPE, so training runs; but model.max_len sizes the decoding cache
    # (generation) and is the context eval assumes when the run has no train.seq_len.
    out.append(
      f'train.seq_len={config.train.seq_len} exceeds model.max_len={max_len}: training works '
      '(rotary positions), but decoding / generation caches hold only model.max_len tokens; '
      'set model.max_len >= train.seq_len'
    )
  return out


def _flat(tree: Any, prefix: str = '') -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flat(v, f'{prefix}{k}.'))
    return out
  return {prefix[:-1]: tree}


def resume_mismatch(stored: dict[str, Any], requested: dict[str, Any]) -> list[str]:
  """``key: stored -> requested`` for each setting that makes ``stored``'s checkpoint unusable.

  Both are :func:`to_dict` configs. A checkpoint belongs to one model: every ``model.*`` key
  except :data:`RUNTIME_MODEL_KEYS` must match. Of the optimiser, only what changes the shape of
  its state: gradient clipping on or off (``train.grad_clip`` 0 vs > 0 adds / drops a
  transform). Learning rate, schedule, batch and data settings may change on a resume.
  """
  a = {k: v for k, v in _flat(stored.get('model') or {}, 'model.').items()}
  b = {k: v for k, v in _flat(requested.get('model') or {}, 'model.').items()}
  diffs = []
  for key in sorted(set(a) | set(b)):
    if key.split('.', 1)[1].split('.')[0] in RUNTIME_MODEL_KEYS | LEGACY_KEYS:
      continue  # LEGACY_KEYS: old run directories' stored configs resume
    if a.get(key, '<unset>') != b.get(key, '<unset>'):
      diffs.append(f'{key}: {a.get(key, "<unset>")} -> {b.get(key, "<unset>")}')
  clip_a = float((stored.get('train') or {}).get('grad_clip', 0) or 0)
  clip_b = float((requested.get('train') or {}).get('grad_clip', 0) or 0)
  if (clip_a > 0) != (clip_b > 0):
    diffs.append(f'train.grad_clip: {clip_a:g} -> {clip_b:g}')
  return diffs


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
