"""The decoder LM (miras_jax/models/lm.py) at tiny size on CPU: forward/backward of every
family, per-document resets in packed rows, greedy decoding == one full pass, scan == loop,
remat == no remat."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.models import LMConfig, build_model
from miras_jax.models.presets import HYBRID_PREFIX, families, model_config
from miras_jax.testing import assert_close
from tests.models._util import random_params, tiny, tokens

# Every preset family, hybrids included (each costs 3–10 s of XLA compilation on 2 CPU cores).
ALL = families()
# A Samba-style hybrid is the pure family's memory layer with an SWA layer after it: two of them
# (a linear and a deep memory) run by default; the other hybrid_<rule> run behind ``slow``, their
# memory layer covered by the pure <rule> family and the pattern by these two (CI budget).
HYBRIDS_IN_CI = ('hybrid_gated_deltanet', 'hybrid_moneta')
FORWARD_BACKWARD = [
  pytest.param(f, marks=pytest.mark.slow)
  if f.startswith(HYBRID_PREFIX) and f not in HYBRIDS_IN_CI
  else f
  for f in ALL
]


def _loss(model, params, toks, segment_ids=None):
  logits = model.apply({'params': params}, toks, segment_ids)
  logp = jax.nn.log_softmax(logits[:, :-1])
  return -jnp.mean(jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1))


@pytest.mark.parametrize('family', FORWARD_BACKWARD)
def test_forward_backward(family):
  cfg, model = tiny(family)
  toks = tokens((2, 16))
  params = random_params(model, toks)['params']
  loss, grads = jax.jit(jax.value_and_grad(lambda p: _loss(model, p, toks)))(params)
  assert np.isfinite(float(loss))
  assert abs(float(loss) - np.log(cfg.vocab_size)) < 2.0  # a near-uniform start
  flat = jax.tree_util.tree_leaves_with_path(grads)
  assert all(bool(jnp.all(jnp.isfinite(g))) for _, g in flat)
  nonzero = {jax.tree_util.keystr(k) for k, g in flat if float(jnp.max(jnp.abs(g))) > 0}
  assert any('embed' in k for k in nonzero)
  if LMConfig.from_config(cfg).uses_memory:  # the outer-loop memory parameters learn
    assert any('w0_0' in k for k in nonzero), sorted(nonzero)
  if cfg.persistent_tokens:  # Titans' persistent memory tokens learn
    assert any('persistent' in k for k in nonzero), sorted(nonzero)


@pytest.mark.parametrize('family', ['transformer', 'hybrid_gated_deltanet', 'titans_mag'])
def test_packed_rows_equal_separate_documents(family):
  """Two documents packed in one row (each a multiple of the chunk size, so the memories'
  chunk grid is the same) give the logits of each document alone; memories sow per-layer
  inner losses stacked over the scanned repeats."""
  cfg, model = tiny(family)
  n = 2 * cfg.chunk_size
  toks = tokens((2, 2 * n), seed=1)
  params = random_params(model, toks)
  seg = jnp.concatenate([jnp.ones((2, n), jnp.int32), jnp.full((2, n), 2, jnp.int32)], 1)

  def both(params):
    packed, inter = model.apply(params, toks, seg, mutable=['intermediates'])
    alone = model.apply(params, jnp.concatenate([toks[:, :n], toks[:, n:]], 0))
    return packed, jnp.concatenate([alone[:2], alone[2:]], 1), inter

  packed, alone, inter = jax.jit(both)(params)
  assert_close(packed, alone, 2e-5, atol=2e-5)
  losses = jax.tree.leaves(inter)
  assert len(losses) == (2 if LMConfig.from_config(cfg).uses_memory else 0)
  for x in losses:
    assert x.shape == (LMConfig.from_config(cfg).repeats,)


def _greedy_and_full(model, params, prompt, n_new, max_len):
  """Greedy decoding (prefill + lax.scan of one-token steps), then one full forward pass over
  prompt + generated tokens."""
  b = prompt.shape[0]
  cache = model.init_cache(b, max_len)
  logits0, cache = model.apply(params, prompt, cache, method=model.decode)

  def step(carry, _):
    cache, last = carry
    tok = jnp.argmax(last, -1).astype(jnp.int32)[:, None]
    lg, cache = model.apply(params, tok, cache, method=model.decode)
    return (cache, lg[:, 0]), (tok[:, 0], lg[:, 0])

  (cache, _), (new, lgs) = jax.lax.scan(step, (cache, logits0[:, -1]), None, length=n_new)
  seq = jnp.concatenate([prompt, new.T], axis=1)
  dec_logits = jnp.concatenate([logits0, jnp.swapaxes(lgs, 0, 1)], axis=1)
  full = model.apply(params, seq)
  return seq, dec_logits, full, cache['index']


@pytest.mark.parametrize('family', ['transformer', 'hybrid_gated_deltanet', 'titans_mag'])
def test_greedy_decoding_matches_full_forward(family):
  cfg, model = tiny(family)
  prompt = tokens((2, 5), seed=2)  # 5: not a multiple of the chunk size
  params = random_params(model, prompt, std=0.3)
  n_new = 7  # crosses a chunk boundary (chunk 8)
  seq, dec, full, index = jax.jit(_greedy_and_full, static_argnums=(0, 3, 4))(
    model, params, prompt, n_new, 32
  )
  assert int(index) == 5 + n_new
  # decode logits at positions 0..T-2 predict tokens 1..T-1; the last one has no full twin
  assert_close(dec[:, : full.shape[1]], full, 2e-5, atol=2e-5)
  np.testing.assert_array_equal(np.argmax(full[:, 4:-1], -1), np.asarray(seq[:, 5:]))


def test_scan_equals_loop_and_remat_equals_none():
  cfg, model = tiny('transformer')
  toks = tokens((2, 16), seed=3)
  params = random_params(model, toks)['params']
  _, loop = tiny('transformer', scan_layers=False)
  # Unstack the scanned block parameters [R, ...] into blocks_0 .. blocks_{R-1}.
  blocks = params['blocks']
  loop_params = {k: v for k, v in params.items() if k != 'blocks'}
  for r in range(cfg.n_layers // len(cfg.pattern)):
    loop_params[f'blocks_{r}'] = jax.tree.map(lambda a: a[r], blocks)
  _, remat = tiny('transformer', remat='full')
  f = lambda m, p: jax.value_and_grad(lambda p: _loss(m, p, toks))(p)
  (l0, g0), (l1, g1), (l2, g2) = jax.jit(lambda p, q: (f(model, p), f(loop, q), f(remat, p)))(
    params, loop_params
  )
  assert_close(l1, l0, 1e-6, atol=1e-6)
  assert_close(l2, l0, 1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g2)):
    assert_close(b, a, 1e-5, atol=1e-7)
  assert_close(g1['embed']['embedding'], g0['embed']['embedding'], 1e-5, atol=1e-7)


def test_logical_axes_on_every_param():
  _, model = tiny('titans_mag')
  boxed = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens((1, 8)))['params']
  leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.Partitioned))
  assert leaves and all(isinstance(x, nn.Partitioned) for x in leaves)
  for x in leaves:
    assert len(x.names) == x.value.ndim
  scanned = boxed['blocks']['mixers_0']['memory']['w0_0']
  assert scanned.names == ('layers', 'heads', None, None)


def test_config_validation():
  with pytest.raises(ValueError, match='unknown model config key'):
    build_model({'vocab_size': 8, 'bogus': 1})
  with pytest.raises(ValueError, match='unknown mixer'):
    LMConfig(pattern=('lstm',))
  with pytest.raises(ValueError, match='multiple of the pattern'):
    LMConfig(pattern=('memory', 'swa'), n_layers=3)
  with pytest.raises(ValueError, match='memory_grad_horizon'):
    LMConfig(pattern=('memory',), chunk_size=8, memory_grad_horizon=12)
  with pytest.raises(ValueError, match='alpha_init'):
    LMConfig(alpha_init=(0.999, 0.99))
  with pytest.raises(ValueError, match='no attention mixer'):
    LMConfig(pattern=('memory',), persistent_tokens=4)
  with pytest.raises(ValueError, match='no sliding window'):
    LMConfig(pattern=('memory', 'swa'), attention_backend='pallas_tpu_flash')
  with pytest.raises(ValueError, match='needs attention_backend'):
    LMConfig(pattern=('mag',), persistent_tokens=4, attention_backend='pallas_tpu_splash')


def test_titans_presets_carry_persistent_tokens():
  for family in ('titans_mag', 'titans_mal', 'titans_mac'):
    cfg, model = tiny(family)
    assert cfg.persistent_tokens == 4
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens((1, 8)))['params']
    attn = shapes['blocks']['mixers_1' if family == 'titans_mal' else 'mixers_0']
    attn = attn['attn'] if family == 'titans_mag' else attn
    # one [N_p, d_model] prefix per scanned layer
    assert nn.unbox(attn['persistent']).shape == (cfg.n_layers // len(cfg.pattern), 4, 64)
  assert model_config('hybrid_moneta', 'tiny').persistent_tokens == 0


def test_truncated_memory_gradients_at_model_level():
  """``memory_grad_horizon`` leaves the logits alone and changes only the gradient; no preset
  turns it on."""
  cfg, model = tiny('titans')
  _, cut = tiny('titans', memory_grad_horizon=cfg.chunk_size)
  toks = tokens((2, 4 * cfg.chunk_size), seed=4)
  params = random_params(model, toks)['params']
  f = lambda m: jax.value_and_grad(lambda p: _loss(m, p, toks))(params)
  (l0, g0), (l1, g1) = jax.jit(lambda: (f(model), f(cut)))()
  assert_close(l1, l0, 1e-7, atol=1e-6)
  w0, w1 = g0['blocks']['mixers_0']['w0_0'], g1['blocks']['mixers_0']['w0_0']
  assert bool(jnp.all(jnp.isfinite(w1))) and float(jnp.max(jnp.abs(w0 - w1))) > 1e-7
  for family in ('yaad', 'memora', 'titans_mag', 'moneta', 'gated_deltanet', 'transformer'):
    assert model_config(family, '170m').memory_grad_horizon == 0  # opt-in only
