"""The deep memories' recompute backward (chunk_vjp.segment_scan) == autodiff of the same chunked
forward: outputs, final state and the gradient of every input (q, k, v, gates, initial state,
W_0, LayerNorm parameters), in fp64, at an odd length, with packed documents and a mid-chunk
initial state, segments of several chunks (remat_group 2) and a partial last segment.

(tests/memory/test_equivalence.py also checks the recompute path against the token-by-token
reference for every rule; this file isolates the backward.) Default run: Titans; the other deep
rules behind ``-m slow``."""

import jax
import jax.numpy as jnp
import pytest

from miras_jax.memory import chunked, get_rule, init_state
from miras_jax.memory.chunked import recompute_backward
from miras_jax.memory.testing import assert_tree_close, random_inputs

DEEP = ('titans', 'moneta', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear')
B_CHUNK = 4


def _inputs(rule):
  f64 = lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
  inp = random_inputs(rule, jax.random.PRNGKey(3), B=2, H=1, T=23, dk=4, segments=3)
  inp = jax.tree.map(f64, inp)
  # A non-trivial initial state two tokens into a chunk: the fresh state, perturbed (every leaf,
  # so A, the momentum and the gradient point all differ).
  fresh = init_state(rule, inp['w0'], 2)
  keys = iter(jax.random.split(jax.random.PRNGKey(5), 16))
  noise = lambda x: x + 0.1 * jax.random.normal(next(keys), x.shape, x.dtype)
  state = {n: jax.tree.map(noise, x) for n, x in fresh.items() if n != 'pos'}
  state['pos'] = jnp.full_like(fresh['pos'], 2)
  return inp, state


def _grads(rule, inp, state, backward):
  pos = state['pos']
  floats = {n: x for n, x in state.items() if n != 'pos'}

  def loss(q, k, v, gates, st, w0, outer):
    y, fin = chunked(
      rule,
      q,
      k,
      v,
      gates,
      w0=w0,
      outer=outer,
      state=dict(st, pos=pos),
      segment_ids=inp['segment_ids'],
      chunk_size=B_CHUNK,
      remat_group=2,
      backward=backward,
    )
    leaves = [x for n, x in fin.items() if n != 'pos']
    # A non-linear loss of every output: the cotangents differ per element.
    l = jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(x)) for x in jax.tree.leaves(leaves))
    return l, (y, fin)

  args = (inp['q'], inp['k'], inp['v'], inp['gates'], floats, inp['w0'], inp['outer'])
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(7)), has_aux=True))(*args)


def _check(name):
  rule = get_rule(name)
  assert recompute_backward(rule)
  with jax.enable_x64(True):
    inp, state = _inputs(rule)
    (_, (y_a, s_a)), g_a = _grads(rule, inp, state, 'autodiff')
    (_, (y_r, s_r)), g_r = _grads(rule, inp, state, 'recompute')
  assert_tree_close(y_r, y_a, 1e-10, f'{name} outputs')
  assert_tree_close(s_r, s_a, 1e-10, f'{name} final state')
  for what, a, r in zip(('q', 'k', 'v', 'gates', 'state', 'w0', 'outer'), g_a, g_r):
    assert jax.tree.leaves(a), what
    assert_tree_close(r, a, 1e-9, f'{name} grad[{what}]')


def test_recompute_equals_autodiff_titans():
  _check('titans')


@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in DEEP if n != 'titans'])
def test_recompute_equals_autodiff(name):
  _check(name)


def test_linear_rules_keep_autodiff():
  for name in ('gla', 'deltanet', 'mamba2', 'linear_attention'):
    assert not recompute_backward(get_rule(name))
  x = jnp.zeros((1, 1, 3, 4))
  with pytest.raises(ValueError, match='unknown backward'):
    chunked(get_rule('titans'), x, x, x, w0=(), backward='x')
