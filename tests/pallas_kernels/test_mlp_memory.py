"""The deep-memory Pallas kernel (pallas_kernels/mlp_memory, TPU lowering in interpret mode on CPU)
equals the XLA chunked path through ``memory_forward(implementation='pallas')``: outputs, final
state and the gradient of every input (q, k, v, every gate, initial state, W_0, LayerNorm
parameters), at an odd length with packed documents, a non-zero initial state on a chunk boundary
and several kernel segments; the kernel's default backward (the Pallas backward kernel) also
equals its ``backward='xla'`` (chunk_vjp's pass) on all of these. Under ``-m slow`` both fp32 paths
are measured against the XLA path in fp64 (``_check``). Titans in the default run (interpret mode
is slow); the other deep rules, and Titans (momentum: the per-token log μ row) and Yaad (none) with
``step_scale='implicit_chunk'`` (the per-token step factor computed on chip), behind ``-m slow``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import pytest

from miras_jax.memory import get_rule, init_state, memory_forward, with_options
from miras_jax.memory.testing import (
  assert_close,
  assert_tree_close,
  perturbed_state,
  random_inputs,
  rel_err,
  value_and_input_grads,
)
from pallas_kernels.memory_dispatch import kernel_for
from pallas_kernels.mlp_memory.api import mlp_memory

B_CHUNK = 4


GRADS = tuple(f'grad[{w}]' for w in ('q', 'k', 'v', 'gates', 'state', 'w0', 'outer'))


def _run(rule, inp, state, implementation, backward=None):
  """Outputs, final state and input gradients; ``backward`` ('kernel' | 'xla'): the deep-memory
  kernel with that custom-VJP backward, called directly (memory_forward takes its default)."""
  if backward is None:
    op = functools.partial(memory_forward, implementation=implementation)
  else:
    assert implementation == 'pallas'
    op = functools.partial(mlp_memory, backward=backward)
  call = lambda q, k, v, gates, **kw: op(
    rule, q, k, v, gates, segment_ids=inp['segment_ids'], chunk_size=B_CHUNK, **kw
  )
  (_, (y, final)), grads = value_and_input_grads(call, inp, state)
  return {'outputs': y, 'final state': final} | dict(zip(GRADS, grads))


def _check(name, fp64=True, **options):
  """``options``: rules.with_options' (step_scale=...)."""
  rule = with_options(get_rule(name), **options)
  assert kernel_for(rule) == 'mlp_memory'
  inp = random_inputs(rule, jax.random.PRNGKey(3), B=2, H=1, T=23, dk=8, segments=3)
  # A non-trivial state at a chunk boundary (the kernel's chunks start at the call's first token).
  state = perturbed_state(rule, inp['w0'], 2, jax.random.PRNGKey(5))
  kernel = _run(rule, inp, state, 'pallas')  # the default backward: the Pallas kernel
  xla = _run(rule, inp, state, 'xla')
  # The same forward kernel with the XLA backward (chunk_vjp.segment_backward): the same
  # reverse-recompute pass, so the two backwards agree to fp32 round-off.
  xla_bwd = _run(rule, inp, state, 'pallas', backward='xla')
  for what, ref in xla_bwd.items():
    assert jax.tree.leaves(ref), what
    assert_tree_close(kernel[what], ref, 1e-5, f'{name} {what} (kernel vs xla backward)')
  if not fp64:  # the default run (CI budget: the fp64 pass costs ~15 s): fp32 paths within 1e-4
    for what, ref in xla.items():
      assert jax.tree.leaves(ref), what
      assert_tree_close(kernel[what], ref, 1e-4, f'{name} {what}')
    return
  with jax.enable_x64(True):
    f64 = lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
    exact = _run(rule, *jax.tree.map(f64, (inp, state)), 'xla')
  # Both fp32 paths are compared with the same math in fp64 (the kernel computes in fp32 only).
  # They evaluate it in different fusion orders, each a few 1e-5 from fp64 in most leaves. Memora's
  # softmax retention amplifies the round-off of the gate gradients: measured (this input), the
  # XLA path's fp32 gradient of η is 4.1e-4 from fp64 and the kernel's 2.1e-4 (2.4e-4 from each
  # other), so a fixed 1e-4 between the two fp32 paths failed on round-off, not on an error.
  # Bound per leaf: the kernel is within 1e-4 of fp64, or no further from it than twice the XLA
  # path's own fp32 error.
  for what, ref in exact.items():
    leaves = [jax.tree_util.tree_flatten_with_path(r)[0] for r in (kernel[what], xla[what], ref)]
    assert leaves[2], what
    for (path, k), (_, x), (_, e) in zip(*leaves):
      tol = max(1e-4, 2 * rel_err(x, e))
      assert_close(k, e, tol, f'{name} {what}{jax.tree_util.keystr(path)} (kernel vs fp64)')


def test_kernel_equals_xla_titans(monkeypatch):
  # 16 "lanes": Titans' W_1 [32, 8] at dk = 8 is saved transposed as a residual, as [256, 64] is
  # on a TPU (pallas_tpu._flip); the slow grid keeps 128 (nothing transposed at these sizes).
  from pallas_kernels.mlp_memory import pallas_tpu

  monkeypatch.setattr(pallas_tpu, '_LANES', 16)
  assert pallas_tpu._flip((32, 8)) and not pallas_tpu._flip((8, 32))
  _check('titans', fp64=False)


_IMPLICIT = {'step_scale': 'implicit_chunk'}
# id → (rule, with_options kwargs). ~40 s each in interpret mode (+ ~15 s fp64): all slow.
CASES = {n: (n, {}) for n in ('titans', 'moneta', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear')} | {
  'titans_implicit_chunk': ('titans', _IMPLICIT),
  'yaad_implicit_chunk': ('yaad', _IMPLICIT),
}


@pytest.mark.slow
@pytest.mark.parametrize('case', list(CASES))
def test_kernel_equals_xla(case):
  name, options = CASES[case]
  _check(name, **options)


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


@pytest.mark.parametrize(
  'backend,backward,seg_chunks,match',
  [('tpu', 'pallas', None, 'unknown backward'), ('gpu', 'kernel', 2, 'seg_chunks=1')],
)
def test_backward_choice_is_checked(backend, backward, seg_chunks, match):
  rule = get_rule('titans')
  inp = random_inputs(rule, jax.random.PRNGKey(0), B=1, H=1, T=4, dk=4)
  with pytest.raises(ValueError, match=match):
    mlp_memory(
      rule,
      inp['q'],
      inp['k'],
      inp['v'],
      inp['gates'],
      w0=inp['w0'],
      chunk_size=2,
      seg_chunks=seg_chunks,
      backend=backend,
      interpret=True,
      backward=backward,
    )


@pytest.mark.slow
@pytest.mark.parametrize('step_scale', ['none', 'implicit_chunk'])
def test_gpu_lowering_interpret_equals_xla(step_scale):
  """The Triton-lowering driver (pallas_gpu.py) in interpret mode: forward values and state."""
  from miras_jax.memory import chunked

  rule = with_options(get_rule('titans'), step_scale=step_scale)
  inp = random_inputs(rule, jax.random.PRNGKey(1), B=1, H=2, T=21, dk=8, segments=2)
  kw = dict(w0=inp['w0'], outer=inp['outer'], segment_ids=inp['segment_ids'], chunk_size=4)
  args = (inp['q'], inp['k'], inp['v'], inp['gates'])
  ref = jax.jit(lambda q, k, v, g: chunked(rule, q, k, v, g, **kw))(*args)
  gpu = jax.jit(
    lambda q, k, v, g: mlp_memory(rule, q, k, v, g, backend='gpu', interpret=True, **kw)
  )(*args)
  assert_tree_close(gpu, ref, 1e-4, 'gpu interpret')
