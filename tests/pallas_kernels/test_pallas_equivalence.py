"""The Pallas kernels (TPU lowering, interpret mode on CPU) equal the XLA chunked path: outputs,
final state and the gradient of every input (q, k, v, every gate, initial state, reset target),
at an odd length, with packed documents and a non-zero initial state (DESIGN §3)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.memory import Retention, get_rule, init_state, memory_forward
from miras_jax.memory.testing import assert_close, assert_tree_close, random_inputs
from pallas_kernels.memory_dispatch import kernel_for
from pallas_kernels.tri_inverse import unit_lower_inverse

# (rule, dtype, relative tolerance): fp32 equals to rounding; bf16 inputs feed bf16 MXU operands
# in the kernels (fp32 accumulation and state) against the XLA path's fp32 compute.
CASES = [
  ('gla', jnp.float32, 1e-5),  # per-key-channel decay
  ('gated_deltanet', jnp.float32, 1e-5),  # UT/WY with decay
  ('mamba2', jnp.bfloat16, 3e-2),  # scalar decay, bf16 MXU operands
  pytest.param('mamba2', jnp.float32, 1e-5, marks=pytest.mark.slow),
  pytest.param('linear_attention', jnp.float32, 1e-5, marks=pytest.mark.slow),
  pytest.param('retnet', jnp.float32, 1e-5, marks=pytest.mark.slow),
  pytest.param('deltanet', jnp.float32, 1e-5, marks=pytest.mark.slow),
  pytest.param('longhorn', jnp.float32, 1e-5, marks=pytest.mark.slow),
  pytest.param('gla', jnp.bfloat16, 3e-2, marks=pytest.mark.slow),
  pytest.param('gated_deltanet', jnp.bfloat16, 3e-2, marks=pytest.mark.slow),
]


def _setup(name, dtype, T=37, gate_range='normal'):
  rule = get_rule(name)
  inp = random_inputs(
    rule, jax.random.PRNGKey(1), B=2, H=2, T=T, dk=8, dv=8, segments=3, gate_range=gate_range
  )
  st = init_state(rule, inp['w0'], 2)
  a0 = st['A'][0] + 0.3 * jax.random.normal(jax.random.PRNGKey(2), st['A'][0].shape)
  cast = lambda x: x.astype(dtype)
  args = (cast(inp['q']), cast(inp['k']), cast(inp['v']), inp['gates'], inp['w0'], a0)
  return rule, inp, st, args


def _run(rule, st, seg, implementation):
  def fn(q, k, v, gates, w0, a0):
    y, s = memory_forward(
      rule,
      q,
      k,
      v,
      gates,
      w0=w0,
      state=dict(st, A=(a0,)),
      segment_ids=seg,
      chunk_size=8,
      implementation=implementation,
    )
    return y, s

  return fn


def _out_and_grads(fn, args):
  """Outputs, final state and the VJP of fixed random cotangents on y and the final memory,
  in one jitted call (interpret mode run eagerly is far slower)."""

  @jax.jit
  def go(*args):
    (y, s), vjp = jax.vjp(fn, *args)
    ks = jax.random.split(jax.random.PRNGKey(3), 2)
    cy = jax.random.normal(ks[0], y.shape, y.dtype)
    cs = jax.tree.map(jnp.zeros_like, s)
    cs['A'] = (jax.random.normal(ks[1], s['A'][0].shape),)
    cs['pos'] = np.zeros(s['pos'].shape, jax.dtypes.float0)
    return y, s, vjp((cy, cs))

  return go(*args)


@pytest.mark.parametrize('name,dtype,tol', CASES)
def test_kernel_equals_xla_chunked(name, dtype, tol, gate_range='normal'):
  rule, inp, st, args = _setup(name, dtype, gate_range=gate_range)
  assert kernel_for(rule) is not None
  seg = inp['segment_ids']
  y_p, s_p, g_p = _out_and_grads(_run(rule, st, seg, 'pallas'), args)
  y_x, s_x, g_x = _out_and_grads(_run(rule, st, seg, 'xla'), args)
  assert_close(y_p, y_x, tol, f'{name} y')
  assert_close(s_p['A'][0], s_x['A'][0], tol, f'{name} final state')
  np.testing.assert_array_equal(s_p['pos'], s_x['pos'])
  names = ('dq', 'dk', 'dv', 'dgates', 'dw0 (reset target)', 'da0 (initial state)')
  for n, a, b in zip(names, g_p, g_x):
    assert_tree_close(a, b, 2 * tol, f'{name} {n}')


@pytest.mark.slow
@pytest.mark.parametrize('name', ['gla', 'gated_deltanet', 'mamba2'])
def test_kernel_equals_xla_chunked_at_extreme_gates(name):
  """α ≈ 1 − 1e-6 or e^−30 per token, η from 1e-3 to 1: no overflow, no clipping needed."""
  test_kernel_equals_xla_chunked(name, jnp.float32, 1e-5, gate_range='extreme')


@pytest.mark.slow
def test_dot_product_state_continues_like_xla():
  """The Pallas path returns Wg = A for the dot-product rules (the gradient point is never read,
  memory_dispatch.py); continuing from its state on the XLA path equals continuing from the XLA
  path's own state."""
  rule, inp, st, args = _setup('mamba2', jnp.float32, T=13)
  q, k, v, gates, w0, a0 = args
  _, s_p = jax.jit(_run(rule, st, None, 'pallas'))(*args)
  _, s_x = jax.jit(_run(rule, st, None, 'xla'))(*args)
  assert not np.allclose(s_x['Wg'][0], s_x['A'][0])  # T = 13 ends mid-chunk: Wg ≠ A there
  nxt = random_inputs(rule, jax.random.PRNGKey(5), B=2, H=2, T=11, dk=8, dv=8)
  cont = jax.jit(
    lambda s: memory_forward(
      rule, nxt['q'], nxt['k'], nxt['v'], nxt['gates'], w0=w0, state=s, chunk_size=8
    )
  )
  y1, t1 = cont(s_p)
  y2, t2 = cont(s_x)
  assert_close(y1, y2, 1e-5, 'continued y')
  assert_close(t1['A'][0], t2['A'][0], 1e-5, 'continued state')


def test_unit_lower_inverse_is_exact_and_stable():
  """The blockwise inverse equals a triangular solve at a non-power-of-2 size with entries far
  beyond where a Neumann series converges, and its VJP equals the solve's."""
  c = 24
  n = jnp.tril(jax.random.normal(jax.random.PRNGKey(0), (c, c)) * 3.0, -1)
  eye = jnp.eye(c)
  ref = lambda m: jax.scipy.linalg.solve_triangular(eye + m, eye, lower=True, unit_diagonal=True)
  assert_close(unit_lower_inverse(n), ref(n), 1e-5, 'inverse')
  w = jax.random.normal(jax.random.PRNGKey(1), (c, c))
  g1 = jax.grad(lambda m: jnp.sum(jnp.tanh(unit_lower_inverse(m)) * w))(n)
  g2 = jnp.tril(jax.grad(lambda m: jnp.sum(jnp.tanh(ref(m)) * w))(n), -1)
  assert_close(g1, g2, 1e-4, 'inverse vjp')


def test_uncovered_rule_is_a_one_line_error():
  rule = get_rule('memora', retention=Retention('scalar', 'softmax_lag'))
  assert kernel_for(rule) is None and kernel_for(get_rule('moneta', form='minibatch')) is not None
  x = jnp.zeros((1, 1, 4, 8))
  w0 = tuple(w[None] for w in rule.arch.init_weights(jax.random.PRNGKey(0), 8, 8))
  with pytest.raises(ValueError, match='rule memora: no Pallas kernel'):
    memory_forward(rule, x, x, x, w0=w0, implementation='pallas')
