"""Batched generation (miras_jax/inference/generation.py) with tiny random models: greedy
generation equals the argmax of one full forward pass, token by token (memory layers carrying
their state, sliding-window layers a ring that wraps); prompts of different lengths batched
together give what each gives alone, greedy and sampled."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.inference.generation import generate
from tests.models._util import random_params, tiny, tokens

# hybrid_gated_deltanet: memory + sliding-window layers; window 4 makes the ring wrap.
FAMILIES = [('moneta', {}), ('hybrid_gated_deltanet', {'window': 4})]


def _model(family, overrides):
  cfg, model = tiny(family, **overrides)
  params = random_params(model, tokens((1, 8)), std=0.3)['params']
  return model, params


def _prompts(lengths=(3, 9, 6)):
  toks = np.asarray(tokens((len(lengths), max(lengths)), seed=5))
  return [toks[i, :n].tolist() for i, n in enumerate(lengths)]


@pytest.mark.parametrize('family,overrides', FAMILIES)
def test_greedy_generation_is_the_argmax_of_the_full_forward_pass(family, overrides):
  """Prompts of 13, 11 and 15 tokens: a prefill of 8 (prefill_multiple), the rest stepped."""
  model, params = _model(family, overrides)
  prompts = _prompts((13, 11, 15))
  n_new = 10  # crosses memory chunks (8) and wraps the ring (4) several times
  outs, stats = generate(model, params, prompts, n_new, temperature=0.0, prefill_multiple=8)
  assert [len(o) for o in outs] == [n_new] * 3 and stats.new_tokens == 3 * n_new
  # One full pass over the right-padded sequences (causal: padding changes no earlier logit).
  seqs = [p + o for p, o in zip(prompts, outs)]
  width = max(map(len, seqs))
  logits = jax.jit(model.apply)(
    {'params': params}, jnp.asarray([s + [0] * (width - len(s)) for s in seqs], jnp.int32)
  )
  for row, (p, o) in enumerate(zip(prompts, outs)):
    np.testing.assert_array_equal(np.argmax(logits[row, len(p) - 1 : len(p) + n_new - 1], -1), o)


def test_batched_prompts_equal_each_prompt_alone():
  """Sampled (greedy batches are covered above: each row equals its own full pass)."""
  model, params = _model(*FAMILIES[1])
  prompts = _prompts()
  kw = dict(temperature=1.0, top_k=20, top_p=0.9, seed=3)
  batched, _ = generate(model, params, prompts, 6, **kw)
  for i, p in enumerate(prompts):
    alone, _ = generate(model, params, [p], 6, row_ids=[i], **kw)
    assert alone[0] == batched[i], i
  other, _ = generate(model, params, prompts, 6, **{**kw, 'seed': 4})
  assert other != batched  # a different seed draws something else


def test_eos_stops_a_row_and_callback_sees_every_token():
  model, params = _model(*FAMILIES[0])
  prompts = _prompts()
  ref, _ = generate(model, params, prompts, 6, temperature=0.0)
  eos = ref[0][2]  # row 0 stops at its third token (or earlier if the id repeats)
  seen = [[] for _ in prompts]

  def callback(step, total, new):
    assert 1 <= step <= total
    for i, t in enumerate(new):
      if t is not None:
        seen[i].append(t)

  outs, _ = generate(model, params, prompts, 6, temperature=0.0, eos_id=eos, callback=callback)
  assert outs == seen
  for r, o in zip(ref, outs):
    stop = r.index(eos) + 1 if eos in r else len(r)
    assert o == r[:stop]
  with pytest.raises(ValueError, match='at least one token'):
    generate(model, params, [[1], []], 2)
