"""Batched autoregressive generation through the model's decoding caches.

Every mixer keeps a fixed-size state (`LM.init_cache`): memory layers their memory and conv
windows (O(1) per token), full-attention layers a KV cache of ``max_len`` slots, sliding-window
layers a ring of ``w`` slots. Prompts of different lengths share one batch without padding:
all rows prefill the length of the shortest prompt together, then step one token at a time;
a row still inside its prompt feeds its next prompt token (its sampled one is discarded), the
others feed what they sampled. So each row's token sequence, and every mixer's state, is
exactly the one it would have alone (a shared position counter, no pad tokens to mask out of
the memories). The cost is that the part of a longer prompt beyond the shortest one goes
through one-token steps instead of the prefill.

Shapes are bucketed so that a CLI run over many prompts compiles a few programs, not one per
prompt: the prefill covers the shortest prompt rounded down to a multiple of
``prefill_multiple`` (the rest of it is stepped), the cache length is rounded up to a multiple
of ``cache_multiple`` (extra slots are never attended to).

Sampling keys are ``fold_in(fold_in(key(seed), row_id), i)`` for the row's ``i``-th new token,
so a prompt's sample does not depend on the prompts batched beside it.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.inference.sampling import sample

__all__ = ['GenerationStats', 'generate']


@dataclasses.dataclass
class GenerationStats:
  """Token counts and wall times of one `generate` call. ``prefill_s`` and ``first_step_s``
  include compilation; ``decode_s`` / ``decode_tokens`` count the one-token steps after the
  first, which is what `tokens_per_s` reports."""

  rows: int = 0
  prompt_tokens: int = 0
  new_tokens: int = 0
  steps: int = 0
  prefill_s: float = 0.0
  first_step_s: float = 0.0
  decode_s: float = 0.0
  decode_tokens: int = 0

  @property
  def tokens_per_s(self) -> float:
    """Generated tokens per second of the steady one-token steps (all rows together)."""
    return self.decode_tokens / self.decode_s if self.decode_s > 0 else float('nan')


@functools.partial(jax.jit, static_argnums=(0,))
def _prefill(model, params, cache, tokens):
  logits, cache = model.apply({'params': params}, tokens, cache, method=model.decode)
  return logits[:, -1], cache


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _step(
  model, temperature, top_k, top_p, params, cache, logits, forced, use_forced, seed_key, rows, index
):
  """Sample from ``logits [B, V]`` (row ``r``'s ``i``-th new token with the key
  ``fold_in(fold_in(seed_key, r), i)``), replace by ``forced`` where ``use_forced``, feed the
  token. One dispatch per step."""
  keys = jax.vmap(lambda r, i: jax.random.fold_in(jax.random.fold_in(seed_key, r), i))(rows, index)
  tok = sample(keys, logits, temperature, top_k, top_p)
  tok = jnp.where(use_forced, forced, tok)
  new_logits, cache = model.apply({'params': params}, tok[:, None], cache, method=model.decode)
  return tok, new_logits[:, 0], cache


def generate(
  model: Any,
  params: Any,
  prompts: Sequence[Sequence[int]],
  max_new_tokens: int,
  *,
  temperature: float = 1.0,
  top_k: int = 0,
  top_p: float = 1.0,
  seed: int = 0,
  row_ids: Sequence[int] | None = None,
  eos_id: int | None = None,
  prefill_multiple: int = 16,
  cache_multiple: int = 64,
  callback: Callable[[int, int, list[int | None]], None] | None = None,
) -> tuple[list[list[int]], GenerationStats]:
  """Continue every prompt by up to ``max_new_tokens`` tokens.

  Args:
      model: an `LM` (miras_jax/models/lm.py).
      params: its parameter tree.
      prompts: token ids, one non-empty list per row.
      max_new_tokens: tokens to generate per row.
      temperature, top_k, top_p: the sampling rule (`sampling.sample`; temperature 0 = greedy).
      seed: PRNG seed.
      row_ids: an id per prompt for its sampling keys (default ``0..B-1``).
      eos_id: a row stops after generating it (kept in its output); None: never stops early.
      prefill_multiple, cache_multiple: shape buckets (module docstring).
      callback: ``callback(step, total_steps, new)`` after every one-token step; ``new[i]`` is
          row ``i``'s newly generated token, or None while it reads its prompt or has stopped.

  Returns:
      ``(completions, stats)``: the generated ids of each row (without the prompt).
  """
  if not prompts:
    return [], GenerationStats()
  lengths = [len(p) for p in prompts]
  if min(lengths) < 1:
    raise ValueError('every prompt needs at least one token')
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
  b, long = len(prompts), max(lengths)
  short = min(lengths) // prefill_multiple * prefill_multiple
  total_len = long + max_new_tokens
  stats = GenerationStats(rows=b, prompt_tokens=sum(lengths))
  forced = np.zeros((b, total_len), np.int32)
  for i, p in enumerate(prompts):
    forced[i, : len(p)] = p
  lengths_np = np.asarray(lengths)
  row_ids = np.asarray(range(b) if row_ids is None else row_ids, np.int32)
  seed_key = jax.random.key(seed)

  t0 = time.perf_counter()
  cache = model.init_cache(b, -(-total_len // cache_multiple) * cache_multiple)
  if short:
    logits, cache = _prefill(model, params, cache, jnp.asarray(forced[:, :short]))
    jax.block_until_ready(logits)
  else:  # every row's first token comes from its prompt: these logits are never sampled from
    logits = jnp.zeros((b, model.cfg.vocab_size), jnp.float32)
  stats.prefill_s = time.perf_counter() - t0

  out: list[list[int]] = [[] for _ in range(b)]
  done = np.zeros(b, bool)
  total_steps = total_len - short
  t0 = time.perf_counter()
  for step, pos in enumerate(range(short, total_len)):
    in_prompt = pos < lengths_np
    tok, logits, cache = _step(
      model,
      float(temperature),
      int(top_k),
      float(top_p),
      params,
      cache,
      logits,
      forced[:, pos],
      in_prompt,
      seed_key,
      row_ids,
      np.maximum(pos - lengths_np, 0).astype(np.int32),
    )
    tok = np.asarray(tok)
    new: list[int | None] = [None] * b
    for i in range(b):
      if in_prompt[i] or done[i] or len(out[i]) >= max_new_tokens:
        continue
      out[i].append(int(tok[i]))
      new[i] = int(tok[i])
      stats.new_tokens += 1
      if eos_id is not None and int(tok[i]) == eos_id:
        done[i] = True
    stats.steps = step + 1
    now = time.perf_counter()
    if step == 0:
      stats.first_step_s = now - t0
    else:
      stats.decode_s += now - t0
      stats.decode_tokens += sum(x is not None for x in new)
    t0 = now
    if callback is not None:
      callback(step + 1, total_steps, new)
    if all(done[i] or len(out[i]) >= max_new_tokens for i in range(b)):
      break
  return out, stats
