"""`causal_attention`: the one entry point, dispatching on ``backend``."""

from __future__ import annotations

import functools

import jax

from miras_jax.layers import sequence_parallel
from miras_jax.layers.attention_backends.cudnn import attention_cudnn
from miras_jax.layers.attention_backends.mesh import on_mesh
from miras_jax.layers.attention_backends.pallas_tpu.flash import attention_pallas_flash
from miras_jax.layers.attention_backends.pallas_tpu.splash import attention_pallas_splash
from miras_jax.layers.attention_backends.prefix import attention_with_prefix
from miras_jax.layers.attention_backends.reference import attention_xla

BACKENDS = ('xla', 'cudnn', 'pallas_tpu_flash', 'pallas_tpu_splash')


def causal_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  segment_ids: jax.Array | None = None,
  window_size: int | None = None,
  backend: str = 'xla',
  interpret: bool | None = None,
  prefix: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """Causal (optionally sliding-window, segment-masked) attention by ``backend``.

  Args:
      q: ``[B, T, H, D]``; k, v: ``[B, T, Hkv, D]``, ``Hkv`` divides ``H``.
      segment_ids: integer ``[B, T]`` or None (one document per row).
      window_size: None (full causal) or w >= 1 (token t sees t-w+1 .. t).
      backend: one of `BACKENDS`.
      interpret: Pallas backends only; None runs interpret mode everywhere but on TPU.
      prefix: None, or ``(k_p [N_p, Hkv, D], v_p [N_p, Hkv, D], visible [B, T, N_p] bool)``:
          extra keys/values that are not tokens of the row (Titans' persistent memory, see
          `prefix.prefix_visibility`); query t may attend prefix slot j iff
          ``visible[:, t, j]``, in addition to its usual causal / window / segment keys.
          'xla' and 'cudnn' only.

  Returns:
      ``[B, T, H, D]`` in ``q.dtype``.
  """
  if q.shape[2] % k.shape[2]:
    raise ValueError(f'num_kv_heads={k.shape[2]} must divide num_heads={q.shape[2]}')
  if window_size is not None and window_size < 1:
    raise ValueError(f'window_size must be >= 1 or None, got {window_size}')
  axis = sequence_parallel.axis_for(q.shape[1])
  if axis:  # the sequence is split over a mesh axis: K / V gathered (layers/sequence_parallel.py)
    kw = dict(segment_ids=segment_ids, window_size=window_size, backend=backend, prefix=prefix)
    return sequence_parallel.attention(q, k, v, axis=axis, **kw)
  if prefix is not None:
    return attention_with_prefix(q, k, v, segment_ids, window_size, backend, prefix)
  if backend == 'xla':
    return attention_xla(q, k, v, segment_ids, window_size)
  if backend == 'cudnn':
    return attention_cudnn(q, k, v, segment_ids, window_size)
  if backend in ('pallas_tpu_flash', 'pallas_tpu_splash'):
    kernel = attention_pallas_flash if backend == 'pallas_tpu_flash' else attention_pallas_splash
    return on_mesh(
      functools.partial(kernel, window_size=window_size, interpret=interpret),
      q,
      k,
      v,
      segment_ids,
    )
  raise ValueError(f'unknown attention backend {backend!r}; choose one of {BACKENDS}')
