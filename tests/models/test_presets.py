"""Model presets (miras_jax/models/presets.py): every family builds; parameter counts (from
``jax.eval_shape`` of ``init``: nothing allocated) are within 10 % of the nominal sizes."""

import pytest

from miras_jax.models import LMConfig, build_model
from miras_jax.models.presets import SIZES, families, model_config

NOMINAL = {'170m': 170e6, '340m': 340e6, '760m': 760e6, '1.3b': 1.3e9}
CHECKED = (
  'transformer',
  'moneta',
  'yaad',
  'memora',
  'titans',
  'gated_deltanet',
  'hybrid_moneta',
  'titans_mag',
  'titans_mal',
  'titans_mac',
)


@pytest.mark.parametrize('size', sorted(NOMINAL))
def test_param_counts_near_nominal(size):
  for family in CHECKED:
    n = build_model(model_config(family, size)).num_params()
    assert abs(n / NOMINAL[size] - 1) < 0.10, (family, size, n)


def test_every_family_and_size_is_a_valid_config():
  for family in families():
    for size in SIZES:
      cfg = LMConfig.from_config(model_config(family, size))
      assert cfg.n_heads * cfg.head_dim == cfg.d_model
      assert cfg.n_layers % len(cfg.pattern) == 0
  c = model_config('moneta', '1.3b')
  assert (c.n_layers, c.d_model, c.n_heads, c.vocab_size, c.max_len) == (18, 2048, 8, 32000, 4096)


def test_unknown_family_or_size():
  with pytest.raises(ValueError, match='unknown model family'):
    model_config('lstm', 'tiny')
  with pytest.raises(ValueError, match='unknown size'):
    model_config('moneta', '7b')


@pytest.mark.parametrize(
  'rule',
  [
    'titans',
    # Yaad's Eq. 26 gave 9.6e8 here before the memory's LayerNorm gain was bounded (issue 10 §3).
    'yaad',
    'memora',
    'moneta',
  ],
)
def test_preset_gates_keep_the_4k_gradient_bounded(rule):
  """Regression guard for benchmarks/README.md "Back-propagation through the memory": one
  Miras layer (2 heads) with the 170m preset's memory settings (head_dim 48, the most fragile
  of the presets' head dims; η ceiling; chunk; the layer's default α range and bounded
  LayerNorm, ``ln_eps`` = 1) at the preset's context, 4096 tokens, at initialisation, exact
  gradients. The parameter gradient stays finite and moderate; with the former ε = 1e-6
  Titans reached 1e15 and Yaad / Memora overflowed at these gates."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from miras_jax.layers.miras import MirasLayer

  c = model_config(rule, '170m')
  assert c.max_len == 4096 and c.memory_grad_horizon == 0
  d = c.head_dim
  layer = MirasLayer(
    rule=rule,
    num_heads=2,
    head_dim=d,
    chunk_size=c.chunk_size,
    gate_rank=8,
    eta_max=c.eta_max,
    alpha_init=tuple(c.alpha_init),
    ln_eps=c.memory_ln_eps,
    retention_target=c.retention_target,
    momentum_form=c.momentum_form,
    step_scale=c.step_scale,
  )
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((1, c.max_len, 2 * d)), jnp.float32)
  r = jnp.asarray(rng.standard_normal((1, c.max_len, 2 * d)), jnp.float32)
  params = layer.init(jax.random.PRNGKey(0), x[:, :8])
  grads = jax.jit(jax.grad(lambda p: jnp.sum(layer.apply(p, x) * r)))(params)
  norm = float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree.leaves(grads))))
  assert np.isfinite(norm) and norm < 1e6, (rule, norm)
