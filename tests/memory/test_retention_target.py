"""Forgetting towards the initial memory (retention.py ``target='initial'``) bounds the memory's
scale over a long forgetting stretch, where forgetting towards zero (the papers) does not: the
mechanism behind the exact 4K–8K gradients that overflowed after training (issue 10 §3,
benchmarks/README.md). Forward only, tiny shapes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.memory import chunked, get_rule, with_options

T, D, B = 96, 4, 8


def _final_weights(name, target, eta, alpha):
  """φ(A_T) per layer after T tokens of one head with constant gates."""
  rule = with_options(get_rule(name), retention_target=target)
  rng = np.random.default_rng(0)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  q, k = (jnp.asarray(unit(rng.standard_normal((1, 1, T, D))), jnp.float32) for _ in range(2))
  v = jnp.asarray(rng.standard_normal((1, 1, T, D)), jnp.float32)
  shapes = rule.arch.shapes(D, D)
  w0 = tuple(
    jnp.asarray(rng.standard_normal((1,) + s) / np.sqrt(s[1]), jnp.float32) for s in shapes
  )
  gates = {'eta': jnp.full((1, 1, T), eta), 'log_alpha': jnp.full((1, 1, T), np.log(alpha))}
  if rule.uses['log_mu']:
    gates['log_mu'] = jnp.full((1, 1, T), np.log(0.9))
  _, st = chunked(rule, q, k, v, gates, w0=w0, chunk_size=B)
  phi = rule.retention.phi
  return [np.asarray(phi(a[0, 0])) for a in st['A']], [np.asarray(w[0]) for w in w0]


def _qnorm(w, q=4.0):
  return float(np.sum(np.abs(w) ** q) ** (1 / q))


def test_moneta_forgetting_inflates_weights_unless_towards_initial():
  """Moneta's printed map W = A/‖A‖_q^{q−2} has ‖W‖_q = 1/‖A‖_q at q = 4: decaying A towards
  zero grows W (here ~30× W_0, the steps holding A near the norm floor, where the read scale is
  1e4); towards A_0 it keeps W_0's scale."""
  zero, w0 = _final_weights('moneta', 'zero', eta=0.01, alpha=0.9)
  init, _ = _final_weights('moneta', 'initial', eta=0.01, alpha=0.9)
  for l, (z, i, w) in enumerate(zip(zero, init, w0)):
    assert _qnorm(z) > 10 * _qnorm(w), f'layer {l}: zero target did not inflate W'
    assert 0.5 < _qnorm(i) / _qnorm(w) < 2.0, f'layer {l}: {_qnorm(i)} vs W_0 {_qnorm(w)}'


def test_titans_forgetting_shrinks_memory_unless_towards_initial():
  """Titans' memory decays towards zero until its steps balance the decay: here the last layer
  ends at ~1/7 of W_0, and its output LayerNorm (scale-invariant at ε = 1e-6) rescales it, so
  the effective step grows as 1/‖W‖². Towards W_0 the last layer keeps its scale."""
  zero, w0 = _final_weights('titans', 'zero', eta=0.001, alpha=0.9)
  init, _ = _final_weights('titans', 'initial', eta=0.001, alpha=0.9)
  fro = lambda w: float(np.linalg.norm(w))
  assert fro(zero[-1]) < 0.2 * fro(w0[-1])
  assert 0.5 < fro(init[-1]) / fro(w0[-1]) < 2.0


def test_initial_target_needs_scalar_decay_and_a_linear_read():
  with pytest.raises(ValueError, match="retention target 'initial'"):
    get_rule('memora').retention.__class__('scalar', 'softmax', target='initial')
  # Options a rule cannot take are ignored (rules.with_options): Memora keeps 'zero'.
  assert with_options(get_rule('memora'), retention_target='initial').retention.target == 'zero'
  gdn = get_rule('gated_deltanet')
  with pytest.raises(ValueError, match='WY form forgets towards zero only'):
    gdn.replace(retention=gdn.retention.__class__('scalar', target='initial'))
  with pytest.raises(ValueError, match='unknown retention target'):
    get_rule('titans').retention.__class__('scalar', target='w0')


def test_ema_momentum_scales_the_step_by_one_minus_mu():
  from miras_jax.layers.miras_params import gate_values

  rule = get_rule('titans')
  pre = {'eta': 0.3, 'alpha': 2.0, 'mu': 1.5}
  lowrank = lambda n: jnp.full((1, 3, 2), pre[n], jnp.float32)
  kw = dict(names=('eta', 'alpha', 'mu'), eta_max=1.0, shape=(1, 3, 2))
  s = gate_values(rule, lowrank, momentum_form='sum', **kw)
  e = gate_values(rule, lowrank, momentum_form='ema', **kw)
  mu = jax.nn.sigmoid(1.5)
  np.testing.assert_allclose(e['eta'], s['eta'] * (1 - mu), rtol=1e-6)
  np.testing.assert_allclose(e['log_mu'], s['log_mu'])
