"""Truncated back-propagation through the memory state (``grad_horizon``, common.gradient_cuts):
the forward pass is unchanged, chunked == reference on the truncated gradients of every input,
no gradient crosses a cut, and the horizon's errors are clear."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.memory import chunked, get_rule, reference
from miras_jax.memory.testing import assert_close, assert_tree_close, random_inputs

B_CHUNK, T, H_TOK = 8, 45, 16  # cuts before tokens 16 and 32; T is not a multiple of b


def _grad_fn(fn, rule, inp, horizon):
  """A jitted ``mask -> (y, gradients of sum(y ⊙ r ⊙ mask) w.r.t. q, k, v, gates, w0, outer)``:
  the mask is an argument, so both masks share one compilation per (implementation, horizon)."""
  r = jax.random.normal(jax.random.PRNGKey(3), inp['v'].shape, inp['v'].dtype)

  def loss(q, k, v, gates, w0, outer, mask):
    y, _ = fn(
      rule,
      q,
      k,
      v,
      gates,
      w0=w0,
      outer=outer,
      segment_ids=inp['segment_ids'],
      chunk_size=B_CHUNK,
      grad_horizon=horizon,
    )
    return jnp.sum(y * r * mask), y

  args = (inp['q'], inp['k'], inp['v'], inp['gates'], inp['w0'], inp['outer'])
  grad = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(6)), has_aux=True))

  def run(mask):
    (_, y), g = grad(*args, mask)
    return y, g

  return run


# One rule per kernel / state layout: momentum (general), the softmax read (Memora), channel
# decay (GLA), WY (Gated DeltaNet). Memora (~55 s on 2 cores) runs with ``-m slow`` to keep CI
# in budget; the default run covers the deep memories' cuts with Titans.
@pytest.mark.parametrize(
  'rule_name', ['titans', pytest.param('memora', marks=pytest.mark.slow), 'gla', 'gated_deltanet']
)
def test_truncated_gradients(rule_name):
  rule = get_rule(rule_name)
  with jax.enable_x64():
    inp = random_inputs(rule, jax.random.PRNGKey(0), B=2, H=2, T=T, dk=8, segments=2)
    inp = jax.tree.map(
      lambda x: (
        x.astype(jnp.float64)
        if hasattr(x, 'dtype') and jnp.issubdtype(x.dtype, jnp.floating)
        else x
      ),
      inp,
    )
    ones = jnp.ones(inp['v'].shape, jnp.float64)
    exact, truncated = _grad_fn(chunked, rule, inp, None), _grad_fn(chunked, rule, inp, H_TOK)
    y_exact, g_exact = exact(ones)
    y_ref, g_ref = _grad_fn(reference, rule, inp, H_TOK)(ones)
    y_chk, g_chk = truncated(ones)
    assert_close(y_ref, y_exact, 1e-10, 'forward unchanged')
    assert_close(y_chk, y_ref, 1e-8, 'outputs')
    for n, a, c in zip(('q', 'k', 'v', 'gates', 'w0', 'outer'), g_ref, g_chk):
      assert_tree_close(c, a, 1e-8, f'{rule_name} truncated grad[{n}]')
    # The truncation changes the gradient reaching early tokens ...
    assert float(jnp.max(jnp.abs(g_chk[1][:, :, :H_TOK] - g_exact[1][:, :, :H_TOK]))) > 1e-6
    # ... and nothing a later window reads flows back across a cut: outputs at t >= 16 give
    # exactly zero gradient to the keys and values of tokens t < 16.
    late = (jnp.arange(T) >= H_TOK).astype(jnp.float64)[None, None, :, None] * ones
    _, g_late = truncated(late)
    np.testing.assert_array_equal(np.asarray(g_late[1][:, :, :H_TOK]), 0.0)
    np.testing.assert_array_equal(np.asarray(g_late[2][:, :, :H_TOK]), 0.0)
    _, g_late_exact = exact(late)
    assert float(jnp.max(jnp.abs(g_late_exact[1][:, :, :H_TOK]))) > 0


def test_horizon_errors():
  rule = get_rule('titans')
  inp = random_inputs(rule, jax.random.PRNGKey(0), B=1, H=1, T=16, dk=8)
  call = lambda **kw: chunked(
    rule,
    inp['q'],
    inp['k'],
    inp['v'],
    inp['gates'],
    w0=inp['w0'],
    outer=inp['outer'],
    chunk_size=8,
    **kw,
  )
  with pytest.raises(ValueError, match='multiple of the chunk size'):
    call(grad_horizon=12)
  _, st = call()
  with pytest.raises(ValueError, match='fresh call'):
    call(grad_horizon=8, state=st)
