"""Per-document RoPE positions of packed rows (shared by the LM and the MAC mixer)."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
  """RoPE positions restarting at 0 at every document start: ``[B, T]`` int32."""
  t = segment_ids.shape[1]
  idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), segment_ids.shape)
  starts = jnp.concatenate(
    [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
  )
  first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - first
