"""The GPU (Triton-lowering) drivers, in interpret mode on CPU, equal the TPU drivers (which
test_pallas_equivalence.py holds equal to the XLA chunked path): outputs, final state and every
input gradient, with packed documents, an initial state and channel / scalar decay.
Interpret mode does not check Triton's lowering constraints (test_triton_lowering.py lowers them
for CUDA); the GPU kernels are NOT done until run on a GPU (scripts/bench_kernels.py checks them
there)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from miras_jax.testing import assert_close, outputs_and_vjp, rel_err
from pallas_kernels.delta_rule.api import delta_rule
from pallas_kernels.linear_memory.api import linear_memory

B, H, T, D = 1, 2, 37, 8


def _inputs():
  ks = jax.random.split(jax.random.PRNGKey(0), 7)
  q, k, v = (jax.random.normal(ks[i], (B, H, T, D)) for i in range(3))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  eta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, H, T)))
  la = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, H, T, D)) + 2.0)
  h0 = jax.random.normal(ks[5], (B, H, D, D))
  w0 = jax.random.normal(ks[6], (H, D, D))
  seg = (jnp.arange(T) >= 20).astype(jnp.int32)[None]
  return (q, k, v, eta, la, h0, w0), seg


def _ops(seg):
  def lin(backend, q, k, v, eta, la, h0, w0):
    kw = dict(segment_ids=seg, initial_state=h0, reset_state=w0, backend=backend)
    return linear_memory(q, k, v, eta, la, **kw)

  def delta(backend, q, k, v, eta, la, h0, w0):
    kw = dict(segment_ids=seg, initial_state=h0, reset_state=w0, backend=backend)
    return delta_rule(q, k, v, eta, la[..., 0], **kw)

  return {'linear_memory': lin, 'delta_rule': delta}


@pytest.mark.slow
@pytest.mark.parametrize('op', ['linear_memory', 'delta_rule'])
def test_gpu_driver_equals_tpu_driver(op):
  args, seg = _inputs()
  f = _ops(seg)[op]

  got = outputs_and_vjp(lambda *x: f('gpu', *x), *args)
  want = outputs_and_vjp(lambda *x: f('tpu', *x), *args)
  for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    assert_close(a, b, 1e-5, f'{op} leaf {i}')


@pytest.mark.slow
@pytest.mark.parametrize('op', ['linear_memory', 'delta_rule'])
def test_gpu_driver_bf16_within_bf16_error(op):
  """bf16 q, k, v: the GPU chunk's backward rounds every cotangent to bf16 before its dots
  (chunk_math.Operands, for Triton); outputs, state and every gradient stay within bf16 error of
  the fp32 result, as the TPU driver's (plain autodiff) do."""
  args, seg = _inputs()
  f = _ops(seg)[op]
  lo = tuple(x.astype(jnp.bfloat16) for x in args[:3]) + args[3:]
  want = jax.tree.leaves(outputs_and_vjp(lambda *x: f('tpu', *x), *args))
  got = jax.tree.leaves(outputs_and_vjp(lambda *x: f('gpu', *x), *lo))
  tpu = jax.tree.leaves(outputs_and_vjp(lambda *x: f('tpu', *x), *lo))
  for i, (a, t, b) in enumerate(zip(got, tpu, want)):
    # Within bf16 error, and not worse than the TPU driver's bf16 result by more than rounding.
    assert_close(a, b, 3e-2, f'{op} leaf {i}')
    assert rel_err(a, b) <= 1.5 * rel_err(t, b) + 1e-3, f'{op} leaf {i}'
