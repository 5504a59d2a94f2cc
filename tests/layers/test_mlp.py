"""SwiGLU: shapes, dtypes, logical axes, the formula."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from miras_jax.layers.mlp import SwiGLU
from miras_jax.testing import assert_close

from ._util import numpy_params


def test_swiglu_shapes_dtypes_axes_and_formula():
  x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
  layer = SwiGLU(hidden_dim=20, dtype=jnp.bfloat16)
  abstract = jax.eval_shape(layer.init, jax.random.PRNGKey(1), x)
  assert nn.get_partition_spec(abstract)['params'] == {
    'gate': {'kernel': P('embed', 'mlp')},
    'up': {'kernel': P('embed', 'mlp')},
    'down': {'kernel': P('mlp', 'embed')},
  }
  params = numpy_params(layer, x)
  p = params['params']
  assert p['gate']['kernel'].shape == (8, 20) and p['down']['kernel'].shape == (20, 8)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))

  y16 = jax.jit(layer.apply)(params, x)
  assert y16.shape == x.shape and y16.dtype == jnp.bfloat16
  y32 = jax.jit(SwiGLU(hidden_dim=20).apply)(params, x)
  assert y32.dtype == jnp.float32
  silu = lambda a: a / (1 + np.exp(-a))
  ref = (silu(x @ p['gate']['kernel']) * (x @ p['up']['kernel'])) @ p['down']['kernel']
  assert_close(y32, ref, 1e-5, atol=1e-6)
  assert_close(y16, y32, 2e-2, atol=1e-6)
