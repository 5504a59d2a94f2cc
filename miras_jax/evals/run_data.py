"""What a checkpoint was trained on: its prepared dataset and tokenizer, for evals and sampling.

The trainer stores ``dataset_record`` of the dataset it resolved in every checkpoint's
``config`` item (key ``dataset``): the prepared directory, its tokenizer's path and sha256.
Evaluation and generation read that record instead of resolving ``config.data`` again: a
resolve can depend on the machine (the quickstart corpus is cached under ``$HOME``; a raw
corpus's cache key holds its path and modification times), so under another ``$HOME`` or on a
copied run directory it would prepare a second dataset and train a second tokenizer, and the
newest tokenizer of a cache need not be the run's. The sha256 makes a wrong tokenizer an error,
never a silent mis-tokenisation. Checkpoints written before the record existed fall back to the
former lookup (``data.tokenizer``, the corpus's index, the data cache).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ['dataset_record', 'find_tokenizer', 'run_dataset_dir']

_INDEX = 'index.json'


def dataset_record(data_dir: str | Path) -> dict[str, str]:
  """``{'dir', 'tokenizer', 'tokenizer_sha256'}`` of a prepared dataset (from its index)."""
  data_dir = Path(data_dir).resolve()
  tok = json.loads((data_dir / _INDEX).read_text())['tokenizer']
  return {
    'dir': str(data_dir),
    'tokenizer': str(tok['path']),
    'tokenizer_sha256': str(tok['sha256']),
  }


def _sha256(path: Path) -> str:
  from miras_jax.data.tokenizer import file_sha256  # pylint: disable=import-outside-toplevel

  return file_sha256(path)


def _caches(config: dict[str, Any], run_dir: Path | None) -> list[Path]:
  data = config.get('data') or {}
  caches = [Path(str(data['cache_dir'])).expanduser()] if data.get('cache_dir') else []
  return caches + ([run_dir / 'data'] if run_dir is not None else [])


def _recorded_tokenizer(record: dict[str, Any], caches: list[Path]) -> str:
  """The recorded tokenizer, or a file with its sha256 in a data cache (a moved run directory)."""
  sha = str(record.get('tokenizer_sha256') or '')
  candidates = [Path(str(record.get('tokenizer') or ''))]
  for cache in caches:
    candidates += sorted((cache / 'tokenizers').glob('*/tokenizer.model'))
  for cand in candidates:
    if cand.is_file() and (not sha or _sha256(cand) == sha):
      return str(cand)
  raise FileNotFoundError(
    f"the run's tokenizer {record.get('tokenizer')} (sha256 {sha[:12]}) is gone and no copy is in "
    f'{", ".join(str(c / "tokenizers") for c in caches) or "a data cache"}; pass --tokenizer'
  )


def find_tokenizer(config: dict[str, Any], run_dir: Path | None) -> str:
  """The tokenizer a checkpoint was trained with (``config``: the checkpoint's stored config).

  In order: the checkpoint's ``dataset`` record (checked by sha256); ``data.tokenizer``; the
  index of a prepared ``data.corpus``; the newest tokenizer of the model's vocabulary in the
  data cache (checkpoints from before the record).
  """
  caches = _caches(config, run_dir)
  if config.get('dataset'):
    return _recorded_tokenizer(config['dataset'], caches)
  data = config.get('data', {}) or {}
  tok = str(data.get('tokenizer') or '')
  corpus = Path(str(data.get('corpus') or '')).expanduser()
  if not tok and str(data.get('corpus') or '') not in ('', 'default'):
    try:  # a prepared directory names its tokenizer
      path = json.loads((corpus / _INDEX).read_text())['tokenizer']['path']
    except (OSError, ValueError, KeyError, TypeError):
      path = None
    if path and Path(path).is_file():
      return str(path)
  if tok:
    p = Path(tok).expanduser()
    for cand in [p] if p.is_absolute() else [p, *([run_dir / p] if run_dir else [])]:
      if cand.is_file():
        return str(cand)
    raise FileNotFoundError(f"the run's tokenizer {tok!r} was not found (pass --tokenizer)")
  vocab = int((config.get('model') or {}).get('vocab_size') or 0)
  for cache in caches:
    found = sorted(
      (cache / 'tokenizers').glob('*/tokenizer.model'), key=lambda p: p.stat().st_mtime
    )
    if vocab:
      found = [f for f in found if f.parent.name.startswith(f'spm{vocab}-')] or found
    if found:
      return str(found[-1])
  raise FileNotFoundError(
    'no tokenizer: the config has no data.tokenizer and none was trained into '
    f'{", ".join(str(c / "tokenizers") for c in caches) or "a data cache"}; pass --tokenizer'
  )


def run_dataset_dir(config: dict[str, Any], run_dir: Path | None) -> Path:
  """The prepared dataset a checkpoint was trained on (for the ``heldout`` / ``repeat`` tasks).

  With the checkpoint's ``dataset`` record: that directory, or the directory of the same name
  in a data cache (a moved run directory), whose tokenizer must have the recorded sha256.
  Without it (older checkpoints): ``config.data`` resolved as the trainer does.
  """
  if run_dir is None:
    raise ValueError('the heldout task needs the run directory (pass --workdir=RUN)')
  record = config.get('dataset')
  if not record:
    import ml_collections  # pylint: disable=import-outside-toplevel

    from miras_jax.train.data import resolve_dataset  # pylint: disable=import-outside-toplevel

    data = ml_collections.ConfigDict(config.get('data') or {})
    return resolve_dataset(data, run_dir, (config.get('model') or {}).get('vocab_size'))
  recorded = Path(str(record['dir']))
  sha = str(record.get('tokenizer_sha256') or '')
  candidates = [recorded] + [c / 'prepared' / recorded.name for c in _caches(config, run_dir)]
  for cand in candidates:
    try:
      index = json.loads((cand / _INDEX).read_text())
    except (OSError, ValueError):
      continue
    if not sha or index.get('tokenizer', {}).get('sha256') == sha:
      return cand
  raise FileNotFoundError(
    f"the run's prepared dataset {recorded} is gone (looked also in "
    f'{", ".join(str(c) for c in candidates[1:])}); its validation split cannot be scored'
  )
