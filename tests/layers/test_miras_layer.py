"""The Miras layer (miras_jax/layers/miras.py): every named rule runs, decodes exactly, resets at
document boundaries, and its gates follow the rule's needs."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.layers.miras import MirasLayer, retnet_log_gamma
from miras_jax.memory import get_rule, list_rules
from miras_jax.testing import assert_close
from tests.layers._util import numpy_params

B, T, E, H, D, CHUNK = 2, 11, 16, 2, 8, 4


def _layer(rule, **kw):
  return MirasLayer(rule=rule, num_heads=H, head_dim=D, chunk_size=CHUNK, gate_rank=4, **kw)


def _x(seed=0, t=T):
  return jax.random.normal(jax.random.PRNGKey(seed), (B, t, E))


@functools.lru_cache(maxsize=None)
def _params(rule):
  """Random parameters (std 0.3, so gates sit mid-range) without compiling ``init``."""
  m = _layer(rule)
  return m, numpy_params(m, _x(), std=0.3)


def _full_and_decoded(m, p, x, n_prefill):
  """One compiled program: the full pass (with sown inner losses) and a prefill of
  ``n_prefill`` tokens followed by one-token decode steps (a ``lax.scan``)."""
  y, inter = m.apply(p, x, mutable=['intermediates'])
  y0, cache = m.apply(p, x[:, :n_prefill], m.init_cache(x.shape[0]), method=m.decode)

  def step(cache, xt):
    yt, cache = m.apply(p, xt[:, None], cache, method=m.decode)
    return cache, yt[:, 0]

  _, ys = jax.lax.scan(step, cache, jnp.swapaxes(x[:, n_prefill:], 0, 1))
  return y, inter['intermediates'], jnp.concatenate([y0, jnp.swapaxes(ys, 0, 1)], axis=1)


@pytest.mark.parametrize('rule', list_rules())
def test_forward_decode_and_inner_loss(rule):
  """Finite outputs; prefill (6 tokens: not a chunk multiple) + one-token steps == the full
  pass; the inner-loss proxy is sown."""
  m, p = _params(rule)
  y, inter, y_dec = jax.jit(_full_and_decoded, static_argnums=(0, 3))(m, p, _x(), 6)
  assert y.shape == (B, T, E) and bool(jnp.all(jnp.isfinite(y)))
  for key in ('inner_loss_before', 'inner_loss_after'):
    (val,) = inter[key]
    assert val.shape == () and np.isfinite(float(val))
  assert_close(y_dec, y, 2e-5, atol=2e-5)


@pytest.mark.parametrize('rule', ['moneta', 'gla'])
def test_packed_documents_reset(rule):
  """A packed row of two documents (each 2 chunks long, so on the chunk grid) equals the
  documents run alone (as separate rows)."""
  m, p = _params(rule)
  n = 2 * CHUNK
  x = _x(3, 2 * n)
  seg = jnp.concatenate([jnp.ones((B, n), jnp.int32), jnp.full((B, n), 2, jnp.int32)], 1)

  def both(p, x):
    packed = m.apply(p, x, seg)
    alone = m.apply(p, jnp.concatenate([x[:, :n], x[:, n:]], axis=0))
    return packed, jnp.concatenate([alone[:B], alone[B:]], axis=1)

  packed, alone = jax.jit(both)(p, x)
  assert_close(packed, alone, 2e-5, atol=2e-5)


def _gates(rule, x):
  """The gates at initialisation (initializers run eagerly: only the layer's own params)."""
  m = _layer(rule)
  p = m.init(jax.random.PRNGKey(0), x, method=lambda mod, x: mod._gates(x))
  return m.apply(p, x, method=lambda mod, x: mod._gates(x)), nn.unbox(p)['params']


def test_gates_follow_the_rule():
  x = _x()
  # Linear attention: no gate at all (η ≡ 1 in the core, no decay).
  g, _ = _gates('linear_attention', x)
  assert g == {}
  # RetNet: fixed γ_h = 1 − 2^(−5−h), no data dependence, no η.
  g, p = _gates('retnet', x)
  assert set(g) == {'log_alpha'}
  np.testing.assert_allclose(
    np.exp(g['log_alpha'][0, :, 0]), 1 - 2.0 ** (-5 - np.arange(H)), rtol=1e-6
  )
  assert float(jnp.max(jnp.ptp(g['log_alpha'], axis=(0, 2)))) == 0.0  # constant over b, t
  assert not any(k.startswith('gate_') for k in p)  # nothing learned for the decay
  # GLA: channel-wise decay [B, H, T, D], no η.
  g, _ = _gates('gla', x)
  assert set(g) == {'log_alpha'} and g['log_alpha'].shape == (B, H, T, D)
  # Titans: η, α and momentum μ; Yaad: η, α, δ. α starts in (0.98, 1).
  g, _ = _gates('titans', x)
  assert set(g) == {'eta', 'log_alpha', 'log_mu'}
  g, _ = _gates('yaad', x)
  assert set(g) == {'eta', 'log_alpha', 'delta'}
  assert all(v.shape == (B, H, T) for v in g.values())
  alpha = np.exp(np.asarray(g['log_alpha']))
  assert alpha.min() > 0.9 and alpha.max() < 1.0  # bias init: α ≈ 0.99–0.999
  assert float(jnp.min(g['delta'])) > 0


def test_memora_initial_memory_on_simplex():
  rule = get_rule('memora')
  m, p = _params('memora')
  w0, _ = m.apply(p, method=lambda mod: mod._memory_params())
  for w in w0:
    np.testing.assert_allclose(np.sum(w, -1), rule.retention.scale_c, rtol=1e-5)
    assert float(jnp.min(w)) > 0


def test_retnet_gamma():
  np.testing.assert_allclose(
    np.asarray(retnet_log_gamma(3)), np.log(1 - 2.0 ** -np.array([5, 6, 7])), rtol=1e-6
  )


def test_channel_delta_reaches_the_yaad_layer_from_the_model_config():
  """``channel_delta`` and ``huber_mode`` in the model config reach the layer and its rule."""
  from miras_jax.models.config import LMConfig
  from miras_jax.models.lm import memory_layer

  cfg = LMConfig(rule='yaad', n_heads=H, head_dim=D, d_model=E, gate_rank=4, chunk_size=CHUNK)
  m = memory_layer(cfg.replace(channel_delta=True, huber_mode='clip'), parent=None)
  assert m.memory_rule.bias.mode == 'clip'
  p = numpy_params(m, _x(), std=0.3)
  assert nn.unbox(p)['params']['gate_bias_delta'].shape == (H, D)
  g = m.apply(p, _x(), method=lambda mod, x: mod._gates(x))
  assert g['delta'].shape == (B, H, T, D)
  assert memory_layer(cfg, parent=None).memory_rule.bias.mode == 'mask'  # Eq. 26 by default
  with pytest.raises(ValueError, match='huber_mode'):
    cfg.replace(huber_mode='huber')


@pytest.mark.parametrize('form', ['logits', 'lag'])
def test_memora_memory_contributes_at_initialisation(form):
  """Memora's W_0 = c·softmax(raw) has spread rows: the memory's pre-LayerNorm activations vary
  across channels (≫ √eps = 1e-3 is not needed, ≫ 1e-7 is), so LN(·) is not ~0 at step 0."""
  d = 64
  m = MirasLayer(rule='memora', num_heads=1, head_dim=d, gate_rank=4, memora_form=form)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 32, d))
  p = m.init(jax.random.PRNGKey(1), x)
  w0, _ = m.apply(p, method=lambda mod: mod._memory_params())
  k = jax.nn.silu(jax.random.normal(jax.random.PRNGKey(2), (256, d)))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  z = jax.nn.gelu(k @ w0[0][0].T, approximate=True) @ w0[1][0].T
  assert float(jnp.mean(jnp.std(z, axis=-1))) > 1e-3
  old = MirasLayer(rule='memora', num_heads=1, head_dim=d, gate_rank=4, simplex_w0_std=0.02)
  w_old, _ = old.apply(old.init(jax.random.PRNGKey(1), x), method=lambda mod: mod._memory_params())
  z_old = jax.nn.gelu(k @ w_old[0][0].T, approximate=True) @ w_old[1][0].T
  assert float(jnp.mean(jnp.std(z_old, axis=-1))) < 1e-5  # the former init: a no-op memory


@pytest.mark.parametrize('rule', ['titans', 'yaad', 'memora', 'moneta'])
def test_memory_layernorm_gain_is_bounded(rule):
  """Issue 10 §3: the deep memory's output LayerNorm has ε = ``ln_eps`` = 1 by default, so its
  Jacobian ∂LN(z)/∂z has spectral norm ≤ 1 whatever the memory's scale. A memory that forgetting
  has shrunk (z ~ 1e-4) is where the usual ε = 1e-6 gives a gain ~1e3 (checked, so the bound is
  not vacuous)."""
  z = 1e-4 * jax.random.normal(jax.random.PRNGKey(0), (32,))
  x = jnp.zeros(32)

  def gain(layer):
    arch = layer.memory_rule.arch
    jac = jax.jacfwd(lambda z: arch.final(z, x, arch.init_outer(32)))(z)
    return float(jnp.linalg.norm(jac, ord=2))  # x is fixed: the residual adds nothing

  assert MirasLayer.ln_eps == 1.0
  assert gain(MirasLayer(rule=rule)) <= 1.0 + 1e-5  # float32 rounding
  assert gain(MirasLayer(rule=rule, ln_eps=1e-6)) > 100.0
