"""Next-token sampling rules as pure functions of logits ``[..., V]``.

Temperature scaling, top-k (Fan et al. 2018, "Hierarchical Neural Story Generation") and
nucleus / top-p filtering (Holtzman et al. 2020, "The Curious Case of Neural Text
Degeneration", §3.1). Filters return logits with the excluded tokens at ``-inf``; `sample`
composes them in the usual order (temperature, top-k, top-p) and draws one token per row.
Temperature 0 is greedy decoding (the argmax, ties to the lowest id).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ['top_k_filter', 'top_p_filter', 'sample']

NEG_INF = -jnp.inf


def top_k_filter(logits: jax.Array, k: int) -> jax.Array:
  """Keep the ``k`` largest logits of every row (``k <= 0`` or ``k >= V``: all). Ties with the
  k-th largest value are kept too, so a row may keep more than ``k`` tokens."""
  v = logits.shape[-1]
  if k <= 0 or k >= v:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def top_p_filter(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus filter: keep the smallest set of most probable tokens whose probability reaches
  ``p`` (the most probable token always stays; ``p >= 1``: all). Ties with the last kept
  value are kept too."""
  if p >= 1.0:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits.astype(jnp.float32), axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs  # the mass of the strictly more probable tokens
  keep = before < p
  threshold = jnp.min(jnp.where(keep, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < threshold, NEG_INF, logits)


def sample(
  key: jax.Array,
  logits: jax.Array,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
) -> jax.Array:
  """One token id per row of ``logits [B, V]`` -> int32 ``[B]``.

  ``key``: one PRNG key for the batch, or ``B`` keys (one per row, which makes each row's draw
  independent of the rows beside it). ``temperature`` / ``top_k`` / ``top_p`` are Python
  numbers (static under jit).
  """
  if temperature < 0:
    raise ValueError(f'temperature must be >= 0, got {temperature}')
  if not 0.0 < top_p <= 1.0:
    raise ValueError(f'top_p must be in (0, 1], got {top_p}')
  logits = logits.astype(jnp.float32)
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
  if key.ndim == (0 if typed else 1):  # one key
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)
  draw = lambda k, lg: jax.random.categorical(k, lg, axis=-1)
  return jax.vmap(draw)(key, logits).astype(jnp.int32)
