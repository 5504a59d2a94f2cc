"""Causal multi-head attention with RoPE, grouped KV heads, sliding windows and a KV cache.

The Llama attention block (Touvron et al. 2023): q, k, v projections without bias, RoPE on q and
k, causal softmax attention, output projection. Grouped-query attention (Ainslie et al. 2023,
"GQA") shares each kv head among ``num_heads // num_kv_heads`` query heads. A sliding window
(Beltagy et al. 2020, "Longformer"; the SWA layers of Samba, Ren et al. 2024) limits token ``t`` to
tokens ``t-w+1 .. t``; DESIGN.md §5 builds hybrids from it. The attention core is chosen by the
``backend`` string (see `attention_backends`).

Parameters and their logical axes (names shared with the rest of miras-jax):

    q/kernel  [E, H, D]    ('embed', 'heads', 'head_dim')
    k/kernel  [E, Hkv, D]  ('embed', 'kv_heads', 'head_dim')
    v/kernel  [E, Hkv, D]  ('embed', 'kv_heads', 'head_dim')
    o/kernel  [H, D, E]    ('heads', 'head_dim', 'embed')

Kernels keep the head axis unflattened so that tensor parallelism shards heads, not a mixed
``heads * head_dim`` axis.

KV cache (decoding): a dict ``{'k': [B, S, Hkv, D], 'v': [B, S, Hkv, D], 'index': int32
scalar}``, a ring buffer: slot ``j`` holds the (RoPE-rotated) key and value of the latest position
``p < index`` with ``p ≡ j (mod S)``, and ``index`` is the number of tokens seen, the same for every
row. `Attention.decode` attends from the new tokens to the held slots and to themselves (XLA core,
masked by position), then writes the last ``min(T_new, S)`` of them into their slots. While
``index <= S`` this is the plain linear cache; a sliding-window layer needs only ``S = w`` slots
(``cache_len``), so its memory stays bounded however long the generation runs.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from miras_jax.layers.attention_backends import (
  BACKENDS,
  attention_mask,
  causal_attention,
  masked_attention,
  prefix_visibility,
  prepend_prefix,
)
from miras_jax.layers.dense import DenseND
from miras_jax.layers.rope import apply_rope

Dtype = Any
Initializer = Callable[..., jax.Array]
KVCache = dict[str, jax.Array]


def cache_len(max_len: int, window_size: int | None) -> int:
  """Slots a layer's ring cache needs for ``max_len`` tokens: ``min(max_len, w)`` with a window."""
  return max_len if window_size is None else min(max_len, window_size)


def init_kv_cache(
  batch: int, max_len: int, num_kv_heads: int, head_dim: int, dtype: Dtype = jnp.float32
) -> KVCache:
  """An empty cache: zeros ``k, v [batch, max_len, num_kv_heads, head_dim]``, ``index = 0``."""
  shape = (batch, max_len, num_kv_heads, head_dim)
  return {
    'k': jnp.zeros(shape, dtype),
    'v': jnp.zeros(shape, dtype),
    'index': jnp.zeros((), jnp.int32),
  }


class Attention(nn.Module):
  """Causal self-attention, ``[B, T, E] -> [B, T, E]``.

  Attributes:
      num_heads: H, query heads.
      head_dim: D (even, for RoPE).
      num_kv_heads: Hkv, dividing H; None means H (plain multi-head attention).
      window_size: None for full causal attention, else w: token t attends to t-w+1 .. t.
      backend: 'xla' | 'cudnn' | 'pallas_tpu_flash' | 'pallas_tpu_splash' (training path;
          `decode` always uses the XLA core). 'pallas_tpu_flash' rejects ``window_size``.
      rope_theta: RoPE base.
      dtype: compute dtype of projections and attention (e.g. bfloat16); None keeps the input's.
          Softmax is always float32.
      param_dtype: parameter dtype (float32).
      kernel_init: initializer of all four kernels (fan-in scaled over the contracted axes).
      interpret: Pallas backends only; None runs TPU interpret mode everywhere but on a TPU.
      persistent_tokens: N_p, Titans' persistent memory (Behrouz et al. 2025, §3.3): N_p
          learnable vectors ``persistent [N_p, E]`` (in this layer's input space) prepended to
          every document, projected by this layer's k/v kernels, at document positions
          ``-N_p .. -1``. Needs backend 'xla' or 'cudnn' (`decode` handles them too).
      persistent_always_visible: every query sees the whole prefix even through a sliding
          window (Titans MAG's "SW-Attn*", Fig. 3b); False: the window applies to the prefix
          as to any earlier token (a literal prepend, Titans MAL).
  """

  num_heads: int
  head_dim: int
  num_kv_heads: int | None = None
  window_size: int | None = None
  backend: str = 'xla'
  rope_theta: float = 10_000.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()
  interpret: bool | None = None
  persistent_tokens: int = 0
  persistent_always_visible: bool = False

  @property
  def _kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  def _dense(self, features, axis, axes, name) -> DenseND:
    # The initializer sees the flattened (contracted, output) shape, so lecun_normal has
    # fan_in = E for q/k/v and H * D for o (layers/dense.py: why not nn.DenseGeneral).
    return DenseND(
      features=features,
      axis=axis,
      kernel_axes=axes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
      name=name,
    )

  @nn.compact
  def _project_attend(self, x, positions, attend):
    """Shared by `__call__` and `decode`: projections, RoPE, ``attend``, output projection.

    ``attend(q [B,T,H,D], k [B,T,Hkv,D], v [B,T,Hkv,D]) -> (out [B,T,H,D], aux)``.
    """
    if self.num_heads % self._kv_heads:
      raise ValueError(f'num_kv_heads={self._kv_heads} must divide num_heads={self.num_heads}')
    if self.backend not in BACKENDS:
      raise ValueError(f'unknown attention backend {self.backend!r}; choose one of {BACKENDS}')
    h, hkv, d = self.num_heads, self._kv_heads, self.head_dim
    q = self._dense((h, d), -1, ('embed', 'heads', 'head_dim'), 'q')(x)
    k_proj = self._dense((hkv, d), -1, ('embed', 'kv_heads', 'head_dim'), 'k')
    v_proj = self._dense((hkv, d), -1, ('embed', 'kv_heads', 'head_dim'), 'v')
    k, v = k_proj(x), v_proj(x)
    q = apply_rope(q, positions, self.rope_theta)
    k = apply_rope(k, positions, self.rope_theta)
    prefix = None
    if self.persistent_tokens:
      # Titans §3.3: learnable, input-independent tokens prepended to every document. They
      # live in this layer's input space and go through its own k/v projections; slot j
      # sits at document position j - N_p (so RoPE sees the same relative distances as if
      # the tokens were literally prepended).
      n_p = self.persistent_tokens
      p = self.param(
        'persistent',
        nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, 'embed')),
        (n_p, x.shape[-1]),
        self.param_dtype,
      )
      p = p.astype(x.dtype)[None]  # [1, N_p, E]
      slot_pos = (jnp.arange(n_p, dtype=jnp.int32) - n_p)[None]
      k_p = apply_rope(k_proj(p), slot_pos, self.rope_theta)[0]
      v_p = v_proj(p)[0]
      window = None if self.persistent_always_visible else self.window_size
      prefix = (k_p, v_p, prefix_visibility(positions, n_p, window))
    out, aux = attend(q, k, v, prefix)
    y = self._dense(x.shape[-1], (-2, -1), ('heads', 'head_dim', 'embed'), 'o')(out)
    return y, aux

  def __call__(
    self, x: jax.Array, positions: jax.Array | None = None, segment_ids: jax.Array | None = None
  ) -> jax.Array:
    """Attention over whole sequences (training, evaluation).

    Args:
        x: ``[B, T, E]``.
        positions: integer ``[B, T]`` RoPE positions; default ``0 .. T-1`` in every row. Packed
            rows may restart them per document (scores depend only on position differences).
        segment_ids: integer ``[B, T]``; tokens attend only within their own segment.

    Returns:
        ``[B, T, E]``.
    """
    b, t = x.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))

    def attend(q, k, v, prefix):
      out = causal_attention(
        q,
        k,
        v,
        segment_ids=segment_ids,
        window_size=self.window_size,
        backend=self.backend,
        interpret=self.interpret,
        prefix=prefix,
      )
      return out, None

    return self._project_attend(x, positions, attend)[0]

  def decode(self, x: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Append ``T_new`` tokens to the ring cache and attend (prefill or one-token steps).

    Args:
        x: ``[B, T_new, E]``, the tokens at positions ``index .. index + T_new - 1``.
        cache: ``{'k', 'v': [B, S, Hkv, D], 'index': int32 scalar}`` (a ring buffer, see the
            module docstring). Exact while every query's visible keys are still held: always
            for a sliding window ``w <= S``; for full attention while ``index + T_new <= S``
            (unchecked under jit; beyond it the oldest keys are overwritten, so the layer would
            silently see only the last ``S`` tokens).

    Returns:
        ``(y [B, T_new, E], new_cache)`` with ``new_cache['index'] = index + T_new``.
    """
    b, t_new = x.shape[:2]
    index = jnp.asarray(cache['index'], jnp.int32)
    q_pos = jnp.broadcast_to(index + jnp.arange(t_new, dtype=jnp.int32), (b, t_new))

    def attend(q, k, v, prefix):
      s = cache['k'].shape[1]
      slot = jnp.arange(s, dtype=jnp.int32)
      # The position each slot holds (jnp.mod is a floor mod, so empty slots come out < 0);
      # empty slots get a position past every query's, which causality hides.
      held = index - 1 - jnp.mod(index - 1 - slot, s)
      held = jnp.where(held >= 0, held, jnp.iinfo(jnp.int32).max)
      kv_pos = jnp.concatenate([jnp.broadcast_to(held, (b, s)), q_pos], axis=1)
      keys = jnp.concatenate([cache['k'].astype(q.dtype), k], axis=1)
      values = jnp.concatenate([cache['v'].astype(q.dtype), v], axis=1)
      mask = attention_mask(q_pos, kv_pos, self.window_size)
      if prefix is not None:  # persistent slots: recomputed from the parameters, not cached
        keys, values, mask = prepend_prefix(prefix, keys, values, mask)
      out = masked_attention(q, keys, values, mask)
      n = min(t_new, s)  # only the last S new tokens can still be needed
      dest = jnp.mod(index + t_new - n + jnp.arange(n, dtype=jnp.int32), s)
      k_cache = cache['k'].at[:, dest].set(k[:, t_new - n :].astype(cache['k'].dtype))
      v_cache = cache['v'].at[:, dest].set(v[:, t_new - n :].astype(cache['v'].dtype))
      return out, {'k': k_cache, 'v': v_cache, 'index': index + t_new}

    return self._project_attend(x, q_pos, attend)

  def init_cache(self, batch: int, max_len: int, dtype: Dtype = jnp.float32) -> KVCache:
    """An empty KV cache for ``max_len`` tokens (callable on an unbound module); a sliding
    window needs only ``cache_len(max_len, window_size)`` slots."""
    s = cache_len(max_len, self.window_size)
    return init_kv_cache(batch, s, self._kv_heads, self.head_dim, dtype)
