"""Writing a prepared split: ArrayRecord shards of token-id records (data/prepare.py).

One record per document piece, the raw little-endian bytes of a 1-D id array; a new shard every
``docs_per_shard`` documents; a document's split decided by a hash of ``(seed, index)``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from array_record.python import array_record_module

__all__ = ['WRITER_OPTIONS', 'SplitWriter', 'is_val', 'split_records']

WRITER_OPTIONS = 'group_size:1'  # one record per chunk: cheap random access for global shuffling


def split_records(ids: list[int], max_record_tokens: int) -> list[list[int]]:
  """A document's ids as records of at most ``max_record_tokens`` (0: one record)."""
  if max_record_tokens <= 0 or len(ids) <= max_record_tokens:
    return [ids]
  return [ids[i : i + max_record_tokens] for i in range(0, len(ids), max_record_tokens)]


def is_val(doc_index: int, seed: int, val_fraction: float) -> bool:
  """Whether document ``doc_index`` goes to val: a hash of (seed, index), reproducible in one pass."""
  if val_fraction <= 0.0:
    return False
  h = hashlib.blake2b(f'{seed}:{doc_index}'.encode(), digest_size=8).digest()
  return int.from_bytes(h, 'little') / 2.0**64 < val_fraction


class SplitWriter:
  """Writes one split's records, rotating shards every ``docs_per_shard`` documents."""

  def __init__(self, name: str, output_dir: Path, docs_per_shard: int, dtype: str):
    self.name = name
    self._dir = output_dir
    self._docs_per_shard = docs_per_shard
    self._dtype = np.dtype(dtype).newbyteorder('<')
    self._writer = None
    self._docs_in_shard = 0
    self.shards: list[str] = []
    self.num_docs = 0
    self.num_records = 0
    self.num_tokens = 0

  def write_doc(self, records: Sequence[np.ndarray]) -> None:
    if self._writer is None or self._docs_in_shard >= self._docs_per_shard:
      self._rotate()
    for rec in records:
      self._writer.write(np.asarray(rec, dtype=self._dtype).tobytes())
      self.num_records += 1
      self.num_tokens += len(rec)
    self._docs_in_shard += 1
    self.num_docs += 1

  def _rotate(self) -> None:
    self.close()
    name = f'{self.name}-{len(self.shards):05d}.array_record'
    self._writer = array_record_module.ArrayRecordWriter(str(self._dir / name), WRITER_OPTIONS)
    self.shards.append(name)
    self._docs_in_shard = 0

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None

  def summary(self) -> dict[str, Any]:
    return {
      'num_docs': self.num_docs,
      'num_records': self.num_records,
      'num_tokens': self.num_tokens,
      'shards': list(self.shards),
    }
