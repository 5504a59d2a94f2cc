"""Fixed-offset copying: synthetic rows of random tokens read twice, mixed into training.

One *block* is ``[marker, s_1 .. s_L, s_1 .. s_L]``: a marker token (the tokenizer's BOS), then
``L`` tokens drawn uniformly from an alphabet, then the same ``L`` tokens again. Every token of
the second reading is the token exactly ``L`` positions back, so a model that learns one rule
("copy from ``L`` back") predicts it whatever the tokens are: recall *by position*, the easier
variant of in-context copying (the Copying task of Gu & Dao 2023, "Mamba", §4.1.1, has fixed
spacing too; copying by content, at varying offsets, is the ``copy`` eval task's made-up words,
which the quickstart's models do not learn: README, issue 16 §3).

The alphabet is the tokenizer's 256 byte-fallback pieces (``<0x00>`` .. ``<0xFF>``), which the
text corpus almost never uses, so the copy rows teach the model little about the text's own
pieces; the tokenizer is not changed. The data pipeline (:func:`copy_batch`, used by
:func:`miras_jax.data.pipeline.build_train_dataset` with ``copy_rows``) packs whole rows of
blocks, each block its own segment, and trains only on the second readings (the first is
random: nothing to learn there); the ``copy_fixed`` eval task (:mod:`miras_jax.evals.synthetic`)
scores unseen blocks built by :func:`copy_block`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from miras_jax.data.errors import DataError

__all__ = ['copy_alphabet', 'copy_marker', 'copy_block', 'copy_batch']


def copy_alphabet(tokenizer_path: str | os.PathLike) -> np.ndarray:
  """The ids of the tokenizer's byte-fallback pieces (int32 [256]); a one-line ``DataError``
  for a tokenizer without them."""
  import sentencepiece as spm  # pylint: disable=import-outside-toplevel

  sp = spm.SentencePieceProcessor()
  sp.Load(str(tokenizer_path))
  ids = np.array([i for i in range(sp.GetPieceSize()) if sp.IsByte(i)], np.int32)
  if len(ids) < 2:
    raise DataError(
      f'the copy task draws its tokens from byte-fallback pieces, and {str(tokenizer_path)!r} '
      'has none (train the tokenizer with byte_fallback)'
    )
  return ids


def copy_marker(bos_id: int, eos_id: int) -> int:
  """The token that starts a block: BOS, else EOS (tokenizers without BOS)."""
  return int(bos_id) if int(bos_id) >= 0 else int(eos_id)


def copy_block(rng: np.random.Generator, alphabet: Sequence[int], length: int, marker: int):
  """``[marker] + s + s`` (a list of ``2 * length + 1`` ids), ``s`` drawn uniformly."""
  s = [int(t) for t in rng.choice(np.asarray(alphabet), size=length)]
  return [int(marker)] + s + s


def copy_batch(
  rng: np.random.Generator,
  rows: int,
  seq_len: int,
  alphabet: Sequence[int],
  length: int,
  marker: int,
) -> dict[str, np.ndarray]:
  """``rows`` packed rows of blocks in the pipeline's fields (each [rows, seq_len]).

  A block fills ``2 * length`` input positions (its last token is only a target); a row holds
  ``seq_len // (2 * length)`` blocks, numbered as segments 1, 2, ... with positions restarting
  at 0, and padding (segment 0) after them. ``loss_mask`` is 1 exactly where the target is a
  token of a second reading.
  """
  span = 2 * length
  if length < 1 or span > seq_len:
    raise DataError(
      f'copy blocks of {length} tokens read twice do not fit rows of seq_len={seq_len}'
    )
  out = {k: np.zeros((rows, seq_len), np.int32) for k in ('inputs', 'targets')}
  out['segment_ids'] = np.zeros((rows, seq_len), np.int32)
  out['positions'] = np.zeros((rows, seq_len), np.int32)
  out['loss_mask'] = np.zeros((rows, seq_len), np.float32)
  for r in range(rows):
    for j in range(seq_len // span):
      b = copy_block(rng, alphabet, length, marker)
      at = slice(j * span, (j + 1) * span)
      out['inputs'][r, at], out['targets'][r, at] = b[:-1], b[1:]
      out['segment_ids'][r, at] = j + 1
      out['positions'][r, at] = np.arange(span)
      out['loss_mask'][r, j * span + length : (j + 1) * span] = 1.0
  return out
