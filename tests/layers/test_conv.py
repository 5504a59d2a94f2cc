"""CausalDepthwiseConv1D: naive reference, extend (prefill, steps) == full, no leak across packed documents."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from miras_jax.layers.conv import CausalDepthwiseConv1D, init_conv_state
from miras_jax.testing import assert_close

from ._util import numpy_params

B, T, C, K = 2, 11, 6, 4
SEG = np.array([[0, 0, 0, 1, 1, 2, 2, 2, 2, 2, 2], [5] * T], np.int32)
X = np.random.default_rng(0).standard_normal((B, T, C)).astype(np.float32)
LAYER = CausalDepthwiseConv1D(kernel_size=K, use_bias=True)
PARAMS = numpy_params(LAYER, X, seed=1)
APPLY = jax.jit(LAYER.apply)


def _naive(x, w, b, seg):
  """Loop reference: y[t] = sum_j w[j] x[t-(K-1)+j] over in-range taps in t's segment."""
  y = np.zeros(x.shape)
  for bi in range(x.shape[0]):
    for t in range(x.shape[1]):
      for j in range(w.shape[0]):
        s = t - (w.shape[0] - 1) + j
        if s >= 0 and (seg is None or seg[bi, s] == seg[bi, t]):
          y[bi, t] += w[j] * x[bi, s]
  return y + b


def test_full_matches_naive_reference_axes_and_dtype():
  w, b = PARAMS['params']['kernel'], PARAMS['params']['bias']
  assert w.shape == (K, C) and b.shape == (C,)
  assert_close(APPLY(PARAMS, X), _naive(X, w, b, None), 1e-6, atol=1e-6)
  assert_close(APPLY(PARAMS, X, SEG), _naive(X, w, b, SEG), 1e-6, atol=1e-6)
  abstract = jax.eval_shape(LAYER.init, jax.random.PRNGKey(1), X)
  assert nn.get_partition_spec(abstract)['params'] == {
    'kernel': P(None, 'embed'),
    'bias': P('embed'),
  }
  assert jax.eval_shape(LAYER.apply, PARAMS, X.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_no_leak_across_segments():
  y = np.asarray(APPLY(PARAMS, X, SEG))
  # Perturbing document 0 of row 0 leaves every other document's outputs untouched ...
  x2 = X.copy()
  x2[0, :3] += 10.0
  np.testing.assert_array_equal(y[0, 3:], APPLY(PARAMS, x2, SEG)[0, 3:])
  np.testing.assert_array_equal(y[1], APPLY(PARAMS, x2, SEG)[1])
  # ... and each document equals the document convolved on its own (zero-padded to length T).
  for lo, hi in [(0, 3), (3, 5), (5, 11)]:
    alone = np.zeros_like(X[:1])
    alone[0, : hi - lo] = X[0, lo:hi]
    assert_close(y[0, lo:hi], APPLY(PARAMS, alone)[0, : hi - lo], 1e-6, atol=1e-6)


def test_extend_equals_full_prefill_then_steps():
  extend = jax.jit(lambda x, st: LAYER.apply(PARAMS, x, st, method=CausalDepthwiseConv1D.extend))
  full = APPLY(PARAMS, X)
  state = init_conv_state(B, K, C, jnp.float32)
  assert state.shape == (B, K - 1, C)
  # Prefill the first 5 tokens from a fresh document, then decode one token at a time.
  y, state = extend(X[:, :5], state)
  outs = [y]
  for t in range(5, T):
    y, state = extend(X[:, t : t + 1], state)
    outs.append(y)
  np.testing.assert_allclose(np.concatenate(outs, axis=1), full, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(state, X[:, T - (K - 1) :])  # the last K - 1 inputs
  # A prefill shorter than K - 1 keeps the zeros of the fresh state on the left.
  _, short = extend(X[:, :1], init_conv_state(B, K, C, jnp.float32))
  np.testing.assert_array_equal(short[:, :-1], 0.0)
  np.testing.assert_array_equal(short[:, -1], X[:, 0])


def test_init_through_extend_gives_same_param_tree():
  layer = CausalDepthwiseConv1D(kernel_size=3)
  by_extend = jax.eval_shape(
    lambda: layer.init(
      jax.random.PRNGKey(0),
      jnp.ones((1, 1, C)),
      jnp.zeros((1, 2, C)),
      method=CausalDepthwiseConv1D.extend,
    )
  )
  by_call = jax.eval_shape(lambda: layer.init(jax.random.PRNGKey(0), jnp.ones((1, 4, C))))
  assert jax.tree_util.tree_structure(by_extend) == jax.tree_util.tree_structure(by_call)
  assert nn.unbox(by_extend)['params']['kernel'].shape == (3, C)
