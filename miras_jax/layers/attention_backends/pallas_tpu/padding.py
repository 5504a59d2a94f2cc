"""Sequence padding and block sizes for the Pallas TPU attention kernels."""

from __future__ import annotations

import jax.numpy as jnp

PALLAS_BLOCK = 128  # the TPU lane width; Pallas TPU attention blocks are multiples of it


def pick_block(padded_len: int) -> int:
  """Largest of 512, 256, 128 dividing ``padded_len`` (512 is the usual TPU choice)."""
  for block in (512, 256, 128):
    if padded_len % block == 0:
      return block
  raise AssertionError(padded_len)


def pad_for_pallas(q, k, v, segment_ids):
  """Pad T to a multiple of 128; returns padded q, k, v, segment ids (or None) and T."""
  t = q.shape[1]
  t_pad = -(-t // PALLAS_BLOCK) * PALLAS_BLOCK
  extra = t_pad - t
  if extra == 0:
    return q, k, v, segment_ids, t
  pad = lambda x: jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0)))
  if segment_ids is not None:
    # A fresh id for the padding: padded queries see only padding (never an empty row),
    # real queries never see padding.
    pad_id = jnp.max(segment_ids) + 1
    segment_ids = jnp.concatenate(
      [
        segment_ids,
        jnp.broadcast_to(pad_id, (segment_ids.shape[0], extra)).astype(segment_ids.dtype),
      ],
      axis=1,
    )
  return pad(q), pad(k), pad(v), segment_ids, t
