"""The deep-memory GPU kernels (pallas_kernels/mlp_memory/pallas_gpu.py) lower to Triton IR from
this CPU host (``platform.lower_for_cuda``: JAX's Pallas → Triton lowering runs here, so an
unsupported primitive or a non-power-of-two array fails now, as it would on a GPU): the forward is
one Triton custom call, forward + backward two (the backward kernel's count would drop to one if
the gradient fell back to XLA). The GPU backward kernel equals the XLA chunked path in interpret
mode (outputs, final state, every input gradient). NOT a GPU run: PTX assembly and the kernels'
speed are checked only on a GPU (scripts/bench_kernels.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from miras_jax.memory import chunked, get_rule, with_options
from miras_jax.memory.testing import (
  assert_tree_close,
  perturbed_state,
  random_inputs,
  value_and_input_grads,
)
from pallas_kernels import platform
from pallas_kernels.mlp_memory.api import mlp_memory

RULES = ('titans', 'moneta', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear')
# Triton's smallest legal sizes: dot operands need every dim >= 16 (head dim, chunk).
DK, C = 16, 16


def _lowered(name, dtype, grad, dk, c, options):
  rule = with_options(get_rule(name), **options)
  inp = random_inputs(rule, jax.random.PRNGKey(0), B=1, H=2, T=2 * c, dk=dk, segments=2)
  kw = dict(outer=inp['outer'], segment_ids=inp['segment_ids'], chunk_size=c, backend='gpu')

  def fwd(q, k, v, gates, w0):
    return mlp_memory(rule, q, k, v, gates, w0=w0, interpret=False, **kw)

  def loss(*a):
    y, fin = fwd(*a)
    leaves = jax.tree.leaves({n: x for n, x in fin.items() if n != 'pos'})
    return jnp.sum(jnp.sin(y.astype(jnp.float32))) + sum(jnp.sum(jnp.cos(x)) for x in leaves)

  f = jax.grad(loss, argnums=tuple(range(5))) if grad else fwd
  qkv = tuple(inp[n].astype(dtype) for n in 'qkv')
  return platform.lower_for_cuda(f, *qkv, inp['gates'], inp['w0'])


def _check(name, dtype=jnp.float32, dk=DK, c=C, **options):
  """``options``: rules.with_options' (step_scale=...)."""
  text = _lowered(name, dtype, False, dk, c, options)
  assert text.count(platform.TRITON_CALL) == 1, 'forward: one Triton kernel'
  text = _lowered(name, dtype, True, dk, c, options)
  # The forward kernel (saving residuals) and the backward kernel; 1 = an XLA backward.
  assert text.count(platform.TRITON_CALL) == 2, 'forward + backward: two Triton kernels'


# In the default run: Titans (momentum), Moneta (ℓq read scale, the chunk-end read), Memora
# (softmax map, the read state R), TTT-MLP (bias columns: split weights on GPU). ~2 s each.
DEFAULT = ('titans', 'moneta', 'memora', 'ttt_mlp')


@pytest.mark.parametrize('name', DEFAULT)
def test_lowers_to_triton(name):
  _check(name)


def test_lowers_to_triton_bf16_inputs():
  _check('titans', jnp.bfloat16)


def test_lowers_to_triton_implicit_chunk_step():
  # The per-token step factor on chip (rules.step_factors: 1 − μ from the per-token log μ row).
  _check('titans', step_scale='implicit_chunk')


@pytest.mark.slow
@pytest.mark.parametrize('name', [r for r in RULES if r not in DEFAULT])
def test_lowers_to_triton_slow(name):
  _check(name)


@pytest.mark.slow
@pytest.mark.parametrize('name', RULES)
def test_lowers_to_triton_head_dim_128(name):
  _check(name, dk=128, c=64)  # a real model's sizes: head dim 128 (MLP hidden 512), chunk 64


def _interpret_vs_xla(name, **options):
  rule = with_options(get_rule(name), **options)
  inp = random_inputs(rule, jax.random.PRNGKey(1), B=1, H=1, T=11, dk=4, segments=2)
  state = perturbed_state(rule, inp['w0'], 1, jax.random.PRNGKey(5))

  def run(gpu):
    def call(q, k, v, gates, **kw):
      kw |= dict(segment_ids=inp['segment_ids'], chunk_size=4)
      if gpu:
        return mlp_memory(rule, q, k, v, gates, backend='gpu', interpret=True, **kw)
      return chunked(rule, q, k, v, gates, **kw)

    return call

  (_, got), grads = value_and_input_grads(run(True), inp, state)
  (_, want), want_grads = value_and_input_grads(run(False), inp, state)
  assert_tree_close(got, want, 1e-4, f'{name} outputs, final state')
  for i, (g, w) in enumerate(zip(grads, want_grads)):
    assert jax.tree.leaves(w), i
    assert_tree_close(g, w, 1e-4, f'{name} gradient of input {i}')


def test_gpu_backward_kernel_interpret_equals_xla_titans():
  """The GPU backward kernel (not its XLA fallback: checked in the jaxpr) in interpret mode."""
  rule = get_rule('titans')
  inp = random_inputs(rule, jax.random.PRNGKey(1), B=1, H=1, T=11, dk=4)
  g = lambda q: mlp_memory(
    rule, q, inp['k'], inp['v'], inp['gates'], w0=inp['w0'], chunk_size=4, backend='gpu'
  )[0].sum()
  assert 'mlp_memory_gpu_bwd' in str(jax.make_jaxpr(jax.grad(g))(inp['q']))
  _interpret_vs_xla('titans')


# id → (rule, with_options kwargs)
SLOW_CASES = {r: (r, {}) for r in RULES if r != 'titans'} | {
  'titans_implicit_chunk': ('titans', {'step_scale': 'implicit_chunk'}),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', list(SLOW_CASES))
def test_gpu_backward_kernel_interpret_equals_xla(case):
  name, options = SLOW_CASES[case]
  _interpret_vs_xla(name, **options)
