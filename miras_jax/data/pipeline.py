"""grain input pipeline over the ArrayRecord shards written by :mod:`~miras_jax.data.prepare`.

Training stream (:func:`build_train_dataset` / :func:`make_train_iterator`)::

    ArrayRecord records (one per document)          grain.MapDataset.source
      -> global shuffle of documents, seeded        .shuffle(seed)      (a new order every epoch)
      -> this process's documents                   [process_index::process_count]
      -> epochs                                     .repeat(num_epochs) (None: forever)
      -> decode to int32 ids, read ahead in threads .map / .to_iter_dataset(ReadOptions)
      -> concatenate-and-split into rows of
         seq_len + 1 tokens                         grain.experimental.ConcatThenSplitIterDataset
      -> model fields, then per-process batches     .map(pack_row) / .batch(batch_size)
      -> optionally, rows of the copy task mixed in  copy_rows (miras_jax/data/copy_task.py)

Every process shuffles all documents with the same seed and keeps every
``process_count``-th one, so within an epoch the processes read disjoint
documents that together cover the split; ``batch_size`` is the per-process
batch.

Packing contract. Documents (records; ``prepare`` already appended EOS) are
laid end to end in shuffled order and cut into rows of ``seq_len + 1`` tokens;
row ``r`` gives, for ``t < seq_len``:

* ``inputs[t] = r[t]`` and ``targets[t] = r[t + 1]`` ([B, T] int32);
* ``segment_ids[t]`` ([B, T] int32): 1, 2, 3, ... numbering the documents
  inside the row, 0 only for padding (which only the end of a finite stream,
  e.g. the val split, produces);
* ``positions[t]`` ([B, T] int32): the token's index inside its document
  piece. A document cut at a row boundary **continues in the next row as a new
  segment (id 1) whose positions restart at 0** — the usual concat-and-split
  choice; the model never attends across rows;
* ``loss_mask[t]`` ([B, T] float32): 1 where ``targets[t]`` is the next token
  of the *same* segment, i.e. ``segment_ids`` of row positions ``t`` and
  ``t + 1`` are equal and non-zero. So padding and the jump from one document's
  EOS to the next document's first token are not trained on (the EOS itself is
  a target and is learnt).

The last token of each row is only a target; the pair (last token of a row,
first token of the next row) is never a training example.

Checkpointing. :func:`make_train_iterator` returns a ``grain.DatasetIterator``:
``get_state()`` gives a small JSON-serialisable dict (no token data) and
``set_state()`` on a freshly built iterator resumes with exactly the batches
the saved one would have produced next. The state records the pipeline
settings (seq_len, batch size, seed, process layout, dataset size) and
restoring into a differently configured pipeline is a clear ``DataError``.
The state also survives a JSON round trip (as Orbax / grain's checkpoint
handler store it): grain 0.2.18's concat-then-split iterator stores tuples
that JSON turns into lists and then mis-restores, which the wrapper here
undoes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grain
import numpy as np

from miras_jax.data import copy_task
from miras_jax.data.errors import DataError, DataFileNotFoundError
from miras_jax.data.prepare import FORMAT_VERSION, INDEX_FILE, SPLITS

__all__ = [
  'BATCH_KEYS',
  'load_index',
  'split_dataset',
  'pack_row',
  'build_train_dataset',
  'make_train_iterator',
  'make_val_iterator',
]

BATCH_KEYS = ('inputs', 'targets', 'segment_ids', 'positions', 'loss_mask')
_STATE_VERSION = 1


# ------------------------------------------------------------------- reading
def load_index(data_dir: str | os.PathLike) -> dict[str, Any]:
  """The ``index.json`` of a prepared dataset directory."""
  path = Path(data_dir).expanduser() / INDEX_FILE
  if not path.is_file():
    raise DataFileNotFoundError(
      f'no prepared dataset at {str(path.parent)!r} ({INDEX_FILE} missing; run python -m miras_jax.data.prepare)'
    )
  try:
    index = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise DataError(f'{path}: invalid JSON ({e})') from None
  version = index.get('format_version') if isinstance(index, dict) else None
  if version != FORMAT_VERSION:
    raise DataError(
      f'{path}: unsupported dataset format_version {version!r} (expected {FORMAT_VERSION})'
    )
  return index


def _split_info(
  index: dict[str, Any], data_dir: Path, split: str
) -> tuple[list[str], dict[str, Any]]:
  if split not in SPLITS:
    raise DataError(f'unknown split {split!r}; expected one of {", ".join(SPLITS)}')
  info = index['splits'][split]
  if info['num_records'] == 0:
    raise DataError(
      f'split {split!r} of {str(data_dir)!r} is empty (prepare with --val_fraction > 0 for val)'
    )
  paths = [str(data_dir / name) for name in info['shards']]
  for p in paths:
    if not os.path.isfile(p):
      raise DataFileNotFoundError(f'shard listed in {INDEX_FILE} is missing: {p!r}')
  return paths, info


class _DecodeRecord:
  """Picklable ``bytes -> {"tokens": int32 array}`` map."""

  def __init__(self, dtype: str):
    self._dtype = np.dtype(dtype).newbyteorder('<')

  def __call__(self, record: bytes) -> dict[str, np.ndarray]:
    return {'tokens': np.frombuffer(record, dtype=self._dtype).astype(np.int32)}


def split_dataset(data_dir: str | os.PathLike, split: str = 'train') -> grain.MapDataset:
  """Random-access dataset of one split's records, each ``{"tokens": int32 [n]}``."""
  data_dir = Path(data_dir).expanduser()
  index = load_index(data_dir)
  paths, _ = _split_info(index, data_dir, split)
  source = grain.sources.ArrayRecordDataSource(paths)
  return grain.MapDataset.source(source).map(_DecodeRecord(index['dtype']))


# ------------------------------------------------------------------- packing
def pack_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Model fields of one packed row of ``seq_len + 1`` tokens (see module docstring)."""
  tokens = np.asarray(row['tokens'], dtype=np.int32)
  seg = np.asarray(row['tokens_segment_ids'], dtype=np.int32)
  pos = np.asarray(row['tokens_positions'], dtype=np.int32)
  same_segment = (seg[1:] == seg[:-1]) & (seg[:-1] != 0)
  return {
    'inputs': tokens[:-1],
    'targets': tokens[1:],
    'segment_ids': seg[:-1],
    'positions': pos[:-1],
    'loss_mask': same_segment.astype(np.float32),
  }


def _packed_rows(
  records: grain.MapDataset, seq_len: int, read_options: grain.ReadOptions
) -> grain.IterDataset:
  rows = grain.experimental.ConcatThenSplitIterDataset(
    records.to_iter_dataset(read_options), length_struct={'tokens': seq_len + 1}
  )
  return rows.map(pack_row)


# -------------------------------------------------------- checkpoint wrapper
def _restore_tuples(state: Any) -> Any:
  """Undo JSON's tuple -> list conversion inside concat-then-split states."""
  if isinstance(state, dict):
    out = {}
    for key, value in state.items():
      if key == 'remainder_slices' and isinstance(value, dict):
        out[key] = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
      else:
        out[key] = _restore_tuples(value)
    return out
  if isinstance(state, list):
    return [_restore_tuples(v) for v in state]
  return state


class _CheckpointableIterator(grain.DatasetIterator):
  """Passes elements through; its state carries the pipeline settings."""

  def __init__(self, parent: grain.DatasetIterator, settings: dict[str, Any]):
    super().__init__(parent)
    self._settings = settings

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict[str, Any]:
    return {'pipeline': dict(self._settings), 'iterator': self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    if not isinstance(state, dict) or 'pipeline' not in state or 'iterator' not in state:
      raise DataError(
        "not a miras_jax data-iterator state (expected keys 'pipeline' and 'iterator')"
      )
    saved = state['pipeline']
    now = self._settings
    diffs = [
      f'{k}: saved {saved.get(k)!r}, now {now.get(k)!r}'
      for k in [*now, *(k for k in saved if k not in now)]
      if json.loads(json.dumps(saved.get(k))) != json.loads(json.dumps(now.get(k)))
    ]
    if diffs:
      raise DataError(
        'iterator state belongs to a different data pipeline (' + '; '.join(diffs) + ')'
      )
    self._parent.set_state(_restore_tuples(state['iterator']))

  def __str__(self) -> str:
    return 'CheckpointableIterator'


class _CheckpointableIterDataset(grain.IterDataset):
  def __init__(self, parent: grain.IterDataset, settings: dict[str, Any]):
    super().__init__(parent)
    self._settings = settings

  def __iter__(self) -> grain.DatasetIterator:
    return _CheckpointableIterator(self._parent.__iter__(), self._settings)

  def __str__(self) -> str:
    return 'CheckpointableIterDataset'


def _copy_row_slots(batch_size: int, copy_rows: int) -> np.ndarray:
  """Where a batch's ``copy_rows`` copy-task rows go among its ``batch_size`` rows (int [copy_rows]).

  Row ``k`` is the last of the ``k``-th of ``copy_rows`` near-equal groups,
  ``(k + 1) * batch_size // copy_rows - 1``: spread evenly, so when the batch is cut into ``N``
  equal slices (the devices of a data-parallel step) and ``N`` divides ``copy_rows``, each slice
  holds ``copy_rows / N`` of them (all at the end would load the last devices with them). One
  copy row is the last row.
  """
  k = np.arange(copy_rows)
  return (k + 1) * batch_size // copy_rows - 1


class _CopyMixIterator(grain.DatasetIterator):
  """Mixes ``rows`` copy-task rows into every batch of text rows (miras_jax/data/copy_task.py),
  at :func:`_copy_row_slots`; the text rows keep their order in the others.

  Batch ``n``'s copy rows come from a generator seeded by ``(seed, process_index, n)``, so the
  state is the batch count (with the text pipeline's own state) and a resume is exact."""

  def __init__(self, parent, rows, seq_len, length, alphabet, marker, seed, process_index):
    super().__init__(parent)
    self._args = (rows, seq_len, np.asarray(alphabet), length, marker)
    self._key, self._n = (int(seed), int(process_index)), 0

  def __next__(self):
    text = next(self._parent)
    rng = np.random.default_rng([*self._key, self._n, 0xC0])
    self._n += 1
    copy = copy_task.copy_batch(rng, *self._args)
    rows = len(text['inputs']) + len(copy['inputs'])
    is_copy = np.zeros(rows, bool)
    is_copy[_copy_row_slots(rows, len(copy['inputs']))] = True
    out = {}
    for k in BATCH_KEYS:
      v = np.empty((rows, *copy[k].shape[1:]), copy[k].dtype)
      v[is_copy], v[~is_copy] = copy[k], np.asarray(text[k])
      out[k] = v
    return out

  def get_state(self) -> dict[str, Any]:
    return {'copy_batches': self._n, 'text': self._parent.get_state()}

  def set_state(self, state: dict[str, Any]) -> None:
    self._n = int(state['copy_batches'])
    self._parent.set_state(state['text'])

  def __str__(self) -> str:
    return 'CopyMixIterator'


class _CopyMixIterDataset(grain.IterDataset):
  def __init__(self, parent: grain.IterDataset, *args):
    super().__init__(parent)
    self._args = args

  def __iter__(self) -> grain.DatasetIterator:
    return _CopyMixIterator(self._parent.__iter__(), *self._args)

  def __str__(self) -> str:
    return 'CopyMixIterDataset'


# ------------------------------------------------------------------- public
def _process_layout(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel

    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise DataError(
      f'bad process layout: process_index={process_index}, process_count={process_count}'
    )
  return int(process_index), int(process_count)


def _check_shapes(seq_len: int, batch_size: int) -> None:
  if seq_len < 1 or batch_size < 1:
    raise DataError(
      f'seq_len and batch_size must be positive, got seq_len={seq_len}, batch_size={batch_size}'
    )


def build_train_dataset(
  data_dir: str | os.PathLike,
  *,
  seq_len: int,
  batch_size: int,
  seed: int = 0,
  process_index: int | None = None,
  process_count: int | None = None,
  shuffle: bool = True,
  num_epochs: int | None = None,
  split: str = 'train',
  num_threads: int = 8,
  prefetch_buffer_size: int = 128,
  copy_rows: int = 0,
  copy_length: int = 8,
) -> grain.IterDataset:
  """The packed, batched training stream as a ``grain.IterDataset``.

  Args:
      data_dir: a directory written by :mod:`miras_jax.data.prepare`.
      seq_len: T, tokens per row of ``inputs`` / ``targets``.
      batch_size: B, rows per batch on this process.
      seed: shuffle seed, in ``[0, 2**32)``; epoch e uses a permutation
          derived from ``seed + e``.
      process_index, process_count: this process's slot; ``None`` asks JAX
          (``jax.process_index()`` / ``jax.process_count()``).
      shuffle: shuffle documents (turn off only for debugging).
      num_epochs: passes over the data; ``None`` repeats forever.
      split: ``"train"`` or ``"val"``.
      num_threads, prefetch_buffer_size: read-ahead of records (grain ReadOptions).
      copy_rows: of the ``batch_size`` rows, how many are rows of the fixed-offset copy task
          (blocks of ``copy_length`` random byte pieces read twice; miras_jax/data/copy_task.py),
          spread evenly among the ``batch_size - copy_rows`` text rows (:func:`_copy_row_slots`:
          equal batch slices, e.g. the devices, get equal numbers of them). 0: text only.

  Returns:
      An ``IterDataset`` of dicts with the :data:`BATCH_KEYS`, each [B, T].
  """
  _check_shapes(seq_len, batch_size)
  if not 0 <= seed < 2**32:
    raise DataError(f'seed must be in [0, 2**32), got {seed}')
  if num_epochs is not None and num_epochs < 1:
    raise DataError(f'num_epochs must be >= 1 or None, got {num_epochs}')
  process_index, process_count = _process_layout(process_index, process_count)
  data_dir = Path(data_dir).expanduser()
  index = load_index(data_dir)
  _, info = _split_info(index, data_dir, split)
  if info['num_records'] < process_count:
    raise DataError(
      f'split {split!r} has {info["num_records"]} records, fewer than process_count={process_count}'
    )
  if not 0 <= copy_rows < batch_size:
    raise DataError(
      f'copy_rows={copy_rows} must be in [0, batch_size={batch_size}) (some rows are text)'
    )
  records = split_dataset(data_dir, split)
  if shuffle:
    records = records.shuffle(seed=seed)
  records = records[process_index::process_count].repeat(num_epochs)
  read_options = grain.ReadOptions(
    num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size
  )
  batches = _packed_rows(records, seq_len, read_options).batch(
    batch_size - copy_rows, drop_remainder=True
  )
  settings = {
    'state_version': _STATE_VERSION,
    'split': split,
    'seq_len': seq_len,
    'batch_size': batch_size,
    'seed': seed,
    'shuffle': shuffle,
    'num_epochs': num_epochs,
    'process_index': process_index,
    'process_count': process_count,
    'num_records': info['num_records'],
    'num_tokens': info['num_tokens'],
    'tokenizer_sha256': index['tokenizer']['sha256'],
  }
  if copy_rows:  # (the keys only then: states saved before the copy task still restore)
    tok = index['tokenizer']
    alphabet = copy_task.copy_alphabet(tok['path'])
    marker = copy_task.copy_marker(tok.get('bos_id', -1), tok.get('eos_id', -1))
    batches = _CopyMixIterDataset(
      batches, copy_rows, seq_len, copy_length, alphabet, marker, seed, process_index
    )
    settings.update(copy_rows=copy_rows, copy_length=copy_length)
  return _CheckpointableIterDataset(batches, settings)


def make_train_iterator(data_dir: str | os.PathLike, **kwargs: Any) -> grain.DatasetIterator:
  """A fresh, checkpointable iterator over :func:`build_train_dataset` (same arguments).

  Save ``it.get_state()`` (JSON-serialisable) with the model; to resume,
  build the iterator with the same arguments and call ``it.set_state(state)``.
  """
  return iter(build_train_dataset(data_dir, **kwargs))


def _empty_batch(batch_size: int, seq_len: int) -> dict[str, np.ndarray]:
  batch = {k: np.zeros((batch_size, seq_len), np.int32) for k in BATCH_KEYS}
  batch['loss_mask'] = np.zeros((batch_size, seq_len), np.float32)
  return batch


def _pad_batch(batch: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
  short = batch_size - batch['inputs'].shape[0]
  if short == 0:
    return batch
  return {
    k: np.concatenate([v, np.zeros((short, *v.shape[1:]), v.dtype)]) for k, v in batch.items()
  }


def make_val_iterator(
  data_dir: str | os.PathLike,
  *,
  seq_len: int,
  batch_size: int,
  process_index: int | None = None,
  process_count: int | None = None,
  num_batches: int | None = None,
  split: str = 'val',
  num_threads: int = 8,
  prefetch_buffer_size: int = 128,
) -> Iterator[dict[str, np.ndarray]]:
  """One pass over the val split, in stored order (no shuffle), packed like training.

  Each call returns a new iterator over the same batches, so evaluation is
  repeatable. Every batch is full-sized ([B, T]); rows past the end of the
  data are padding (``segment_ids == 0``, ``loss_mask == 0``). Processes
  read disjoint documents (``[process_index::process_count]``) and may hold
  different amounts of data: pass the same ``num_batches`` on every process
  to get exactly that many batches each (stopping early, or padding with
  all-masked batches).
  """
  _check_shapes(seq_len, batch_size)
  if num_batches is not None and num_batches < 0:
    raise DataError(f'num_batches must be >= 0 or None, got {num_batches}')
  process_index, process_count = _process_layout(process_index, process_count)
  records = split_dataset(data_dir, split)[process_index::process_count]
  read_options = grain.ReadOptions(
    num_threads=num_threads, prefetch_buffer_size=prefetch_buffer_size
  )
  batches = _packed_rows(records, seq_len, read_options).batch(batch_size, drop_remainder=False)

  def generate() -> Iterator[dict[str, np.ndarray]]:
    produced = 0
    if num_batches != 0 and len(records) > 0:
      for batch in batches:
        yield _pad_batch(batch, batch_size)
        produced += 1
        if num_batches is not None and produced >= num_batches:
          return
    while num_batches is not None and produced < num_batches:
      yield _empty_batch(batch_size, seq_len)
      produced += 1

  return generate()
