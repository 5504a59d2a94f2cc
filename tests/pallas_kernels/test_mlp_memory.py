"""The deep-memory Pallas kernel (pallas_kernels/mlp_memory, TPU lowering in interpret mode on CPU)
equals the XLA chunked path through ``memory_forward(implementation='pallas')``: outputs, final
state and the gradient of every input (q, k, v, every gate, initial state, W_0, LayerNorm
parameters), at an odd length with packed documents, a non-zero initial state on a chunk boundary
and several kernel segments. Titans in the default run (interpret mode is slow); the other deep
rules behind ``-m slow``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from miras_jax.memory import get_rule, init_state, memory_forward
from miras_jax.memory.testing import (
  assert_tree_close,
  perturbed_state,
  random_inputs,
  value_and_input_grads,
)
from pallas_kernels.memory_dispatch import kernel_for

B_CHUNK = 4


def _run(rule, inp, implementation):
  # A non-trivial state at a chunk boundary (the kernel's chunks start at the call's first token).
  state = perturbed_state(rule, inp['w0'], 2, jax.random.PRNGKey(5))
  call = lambda q, k, v, gates, **kw: memory_forward(
    rule,
    q,
    k,
    v,
    gates,
    segment_ids=inp['segment_ids'],
    chunk_size=B_CHUNK,
    implementation=implementation,
    **kw,
  )
  return value_and_input_grads(call, inp, state)


def _check(name):
  rule = get_rule(name)
  assert kernel_for(rule) == 'mlp_memory'
  inp = random_inputs(rule, jax.random.PRNGKey(3), B=2, H=1, T=23, dk=8, segments=3)
  (_, (y_p, s_p)), g_p = _run(rule, inp, 'pallas')
  (_, (y_x, s_x)), g_x = _run(rule, inp, 'xla')
  # fp32: the kernel and the XLA path evaluate the same chunk math in different fusion orders.
  assert_tree_close(y_p, y_x, 1e-4, f'{name} outputs')
  assert_tree_close(s_p, s_x, 1e-4, f'{name} final state')
  for what, a, b in zip(('q', 'k', 'v', 'gates', 'state', 'w0', 'outer'), g_p, g_x):
    assert jax.tree.leaves(b), what
    assert_tree_close(a, b, 1e-4, f'{name} grad[{what}]')


def test_kernel_equals_xla_titans():
  _check('titans')


@pytest.mark.slow
@pytest.mark.parametrize('name', ['moneta', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear'])
def test_kernel_equals_xla(name):
  _check(name)


def test_mid_chunk_state_is_a_one_line_error():
  rule = get_rule('titans')
  inp = random_inputs(rule, jax.random.PRNGKey(0), B=1, H=1, T=3, dk=4)
  st = dict(init_state(rule, inp['w0'], 1), pos=jnp.full((1, 1), 2, jnp.int32))
  with pytest.raises(ValueError, match='needs a state on a chunk boundary'):
    memory_forward(
      rule,
      inp['q'],
      inp['k'],
      inp['v'],
      inp['gates'],
      w0=inp['w0'],
      state=st,
      implementation='pallas',
    )


@pytest.mark.slow
def test_gpu_lowering_interpret_equals_xla():
  """The Triton-lowering driver (pallas_gpu.py) in interpret mode: forward values and state."""
  from miras_jax.memory import chunked
  from pallas_kernels.mlp_memory.api import mlp_memory

  rule = get_rule('titans')
  inp = random_inputs(rule, jax.random.PRNGKey(1), B=1, H=2, T=21, dk=8, segments=2)
  kw = dict(w0=inp['w0'], outer=inp['outer'], segment_ids=inp['segment_ids'], chunk_size=4)
  args = (inp['q'], inp['k'], inp['v'], inp['gates'])
  ref = jax.jit(lambda q, k, v, g: chunked(rule, q, k, v, g, **kw))(*args)
  gpu = jax.jit(
    lambda q, k, v, g: mlp_memory(rule, q, k, v, g, backend='gpu', interpret=True, **kw)
  )(*args)
  assert_tree_close(gpu, ref, 1e-4, 'gpu interpret')
