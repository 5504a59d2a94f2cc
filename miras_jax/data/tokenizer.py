"""A thin wrapper over a SentencePiece model.

Loads an existing ``.model`` file (for example the Llama-2 32K BPE model, or one
trained with :mod:`miras_jax.data.train_tokenizer`) and exposes the few things
the data pipeline and evaluation need: encode / decode, vocabulary size and the
special ids.

Special ids follow the model file. SentencePiece models often define no padding
piece (``pad_id() == -1``, as in Llama-2); :attr:`Tokenizer.pad_id` then falls
back to ``0``. Padding positions are always masked out of the loss and of
attention by ``segment_ids == 0``, so the value only has to be a valid id.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import sentencepiece as spm

from miras_jax.data.errors import DataError, DataFileNotFoundError

__all__ = ['Tokenizer', 'file_sha256']


def file_sha256(path: str | os.PathLike) -> str:
  """Hex sha256 of a file's bytes (used to pin the tokenizer in ``index.json``)."""
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


class Tokenizer:
  """SentencePiece tokenizer loaded from a ``.model`` file.

  Args:
      model_path: path to a SentencePiece ``.model`` file.

  Raises:
      DataFileNotFoundError: the file does not exist.
      DataError: the file exists but is not a SentencePiece model.
  """

  def __init__(self, model_path: str | os.PathLike):
    path = Path(model_path).expanduser()
    if not path.is_file():
      raise DataFileNotFoundError(f'tokenizer model not found: {str(path)!r}')
    self._path = path.resolve()
    self._sp = spm.SentencePieceProcessor()
    try:
      ok = self._sp.Load(str(self._path))
    except (OSError, RuntimeError) as e:
      raise DataError(f'not a valid SentencePiece model: {str(self._path)!r} ({e})') from None
    if ok is False or self._sp.GetPieceSize() <= 0:
      raise DataError(f'not a valid SentencePiece model: {str(self._path)!r}')
    self._sha256: str | None = None

  # ----------------------------------------------------------------- metadata
  @property
  def path(self) -> str:
    """Absolute path of the loaded model file."""
    return str(self._path)

  @property
  def sha256(self) -> str:
    """sha256 of the model file (computed once, lazily)."""
    if self._sha256 is None:
      self._sha256 = file_sha256(self._path)
    return self._sha256

  @property
  def vocab_size(self) -> int:
    """Number of pieces; every id is in ``[0, vocab_size)``."""
    return int(self._sp.GetPieceSize())

  @property
  def bos_id(self) -> int:
    """Beginning-of-sequence id (``-1`` if the model defines none)."""
    return int(self._sp.bos_id())

  @property
  def eos_id(self) -> int:
    """End-of-sequence id (``-1`` if the model defines none)."""
    return int(self._sp.eos_id())

  @property
  def unk_id(self) -> int:
    """Unknown-piece id."""
    return int(self._sp.unk_id())

  @property
  def pad_id(self) -> int:
    """Padding id: the model's own pad piece, or ``0`` if it defines none."""
    pad = int(self._sp.pad_id())
    return pad if pad >= 0 else 0

  @property
  def pad(self) -> int:
    """Alias of :attr:`pad_id`."""
    return self.pad_id

  # ------------------------------------------------------------ encode/decode
  def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
    """Token ids of ``text``, optionally with BOS prepended / EOS appended."""
    if not isinstance(text, str):
      raise TypeError(f'encode expects a str, got {type(text).__name__}')
    return list(self._sp.Encode(text, add_bos=add_bos, add_eos=add_eos))

  def encode_batch(
    self,
    texts: Sequence[str],
    *,
    add_bos: bool = False,
    add_eos: bool = False,
    num_threads: int = -1,
  ) -> list[list[int]]:
    """Encode many texts at once (SentencePiece's multi-threaded batch path).

    ``num_threads=-1`` lets SentencePiece use all cores.
    """
    if not texts:
      return []
    return [
      list(ids)
      for ids in self._sp.Encode(
        list(texts), add_bos=add_bos, add_eos=add_eos, num_threads=num_threads
      )
    ]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of a sequence of ids (accepts lists and integer NumPy arrays)."""
    return self._sp.Decode([int(i) for i in ids])

  def id_to_piece(self, token_id: int) -> str:
    """The piece string of one id."""
    return self._sp.IdToPiece(int(token_id))

  def __repr__(self) -> str:
    return f'Tokenizer({self.path!r}, vocab_size={self.vocab_size})'
