"""Persistent (prefix) keys and values: Titans' learnable tokens as extra key slots."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.layers.attention_backends.dense import dense_masked_attention
from miras_jax.layers.attention_backends.masks import attention_mask


def prefix_visibility(
  positions: jax.Array, num_prefix: int, window_size: int | None = None
) -> jax.Array:
  """Which prefix slots each query sees: boolean ``[B, T, N_p]``.

  Titans (Behrouz et al. 2025, §3.3) prepends ``N_p`` learnable tokens to every sequence,
  ``x̃ = [p_1 .. p_{N_p}] || x``. Slot ``j`` of the prefix therefore sits at document position
  ``j - N_p`` (``positions`` restart at 0 per document, so every packed document gets its own
  copy). With ``window_size=None`` every query sees the whole prefix: full attention, or
  Titans MAG's "SW-Attn*", the sliding window *with prefix* (Fig. 3b). With a window, the
  prefix obeys it like any earlier token (Titans MAL's plain SW-Attn over ``M(x̃)``, §4.3):
  query at position t sees slot j iff ``t - (j - N_p) < window_size``.
  """
  slot_pos = jnp.arange(num_prefix, dtype=jnp.int32) - num_prefix
  diff = positions[:, :, None].astype(jnp.int32) - slot_pos  # [B, T, N_p], always > 0
  if window_size is None:
    return jnp.ones(diff.shape, bool)
  return diff < window_size


def prepend_prefix(prefix, k, v, mask):
  """Put the prefix slots in front of the keys: ``(k [B, N_p+S, Hkv, D], v, mask [B, T,
  N_p+S])`` from ``prefix = (k_p, v_p, visible)`` and the row's ``k, v [B, S, Hkv, D]`` and
  ``mask [B, T, S]`` (shared by training and the KV-cache decode)."""
  k_p, v_p, visible = prefix
  b = k.shape[0]
  expand = lambda p, x: jnp.concatenate(
    [jnp.broadcast_to(p.astype(x.dtype), (b,) + p.shape), x], axis=1
  )
  return expand(k_p, k), expand(v_p, v), jnp.concatenate([visible, mask], axis=-1)


def attention_with_prefix(q, k, v, segment_ids, window_size, backend, prefix):
  """Causal attention plus extra always-present key/value slots: one softmax over both.

  The prefix joins the keys as ``N_p`` extra columns with their own visibility mask, so the
  row's causal / window / segment mask is unchanged. Only the dense-mask backends can do this;
  the Pallas TPU kernels take their masks as static block structure plus segment ids, which
  cannot express "every segment sees these columns".
  """
  if backend not in ('xla', 'cudnn'):
    raise NotImplementedError(
      f"persistent (prefix) tokens need attention backend 'xla' or 'cudnn', not "
      f'{backend!r}: the Pallas TPU kernels cannot mask extra key slots shared by every '
      f"document; set persistent_tokens=0 or use backend='xla'"
    )
  b, t = q.shape[:2]
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  k, v, mask = prepend_prefix(
    prefix, k, v, attention_mask(pos, pos, window_size, segment_ids, segment_ids)
  )
  return dense_masked_attention(q, k, v, mask, backend)
