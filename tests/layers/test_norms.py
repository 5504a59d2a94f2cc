"""RMSNorm and l2_normalize: values, shapes, dtypes, logical axes."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from miras_jax.layers.norms import RMSNorm, l2_normalize
from miras_jax.testing import assert_close


def test_rmsnorm_matches_formula_and_keeps_dtype():
  rng = np.random.default_rng(0)
  x = (rng.standard_normal((2, 5, 12)) * 3.0).astype(np.float32)
  layer = RMSNorm(epsilon=1e-6)
  abstract = jax.eval_shape(layer.init, jax.random.PRNGKey(1), x)
  assert nn.get_partition_spec(abstract) == {'params': {'scale': P('embed')}}
  assert nn.unbox(abstract)['params']['scale'].dtype == jnp.float32
  scale = np.linspace(0.5, 2.0, 12).astype(np.float32)
  params = {'params': {'scale': scale}}

  apply = jax.jit(layer.apply)
  y = apply(params, x)
  ref = x / np.sqrt((x.astype(np.float64) ** 2).mean(-1, keepdims=True) + 1e-6) * scale
  assert y.shape == x.shape and y.dtype == jnp.float32
  assert_close(y, ref, 1e-6, atol=1e-6)

  # bf16 in -> bf16 out (fp32 inside); dtype= sets the output dtype.
  x16 = x.astype(jnp.bfloat16)
  y16 = apply(params, x16)
  assert y16.dtype == jnp.bfloat16
  assert_close(y16, apply(params, x16.astype(np.float32)), 1e-2, atol=1e-6)
  assert jax.eval_shape(RMSNorm(dtype=jnp.bfloat16).apply, params, x).dtype == jnp.bfloat16


def test_l2_normalize():
  x = np.random.default_rng(0).standard_normal((3, 4, 6)).astype(np.float32)

  @jax.jit
  def run(x):
    grad_at_zero = jax.grad(lambda v: l2_normalize(v, eps=1e-6).sum())(jnp.zeros((4,)))
    return l2_normalize(x, axis=-1, eps=0.0), l2_normalize(x, axis=1, eps=0.0), grad_at_zero

  last, middle, grad_at_zero = run(x)
  assert_close(np.linalg.norm(last, axis=-1), np.ones((3, 4)), 1e-6, atol=1e-6)
  assert_close(middle, x / np.linalg.norm(x, axis=1, keepdims=True), 1e-6, atol=1e-6)
  assert np.all(np.isfinite(grad_at_zero))  # eps keeps the gradient finite at the origin
  assert jax.eval_shape(l2_normalize, x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
