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

from miras_jax.memory import chunked, get_rule
from miras_jax.memory.chunked import recompute_backward
from miras_jax.memory.testing import (
  assert_tree_close,
  perturbed_state,
  random_inputs,
  value_and_input_grads,
)

DEEP = ('titans', 'moneta', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear')
B_CHUNK = 4


def _inputs(rule):
  f64 = lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
  inp = random_inputs(rule, jax.random.PRNGKey(3), B=2, H=1, T=23, dk=4, segments=3)
  inp = jax.tree.map(f64, inp)
  # A non-trivial initial state two tokens into a chunk.
  return inp, perturbed_state(rule, inp['w0'], 2, jax.random.PRNGKey(5), pos=2)


def _grads(rule, inp, state, backward):
  call = lambda q, k, v, gates, **kw: chunked(
    rule,
    q,
    k,
    v,
    gates,
    segment_ids=inp['segment_ids'],
    chunk_size=B_CHUNK,
    remat_group=2,
    backward=backward,
    **kw,
  )
  return value_and_input_grads(call, inp, state)


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
