"""The GPU kernels of linear_memory/ and delta_rule/ lower to Triton IR for CUDA from this CPU
machine (``platform.lower_for_cuda``): forward, and forward + backward with the backward as a
Triton kernel too, for fp32 and bf16 inputs, with and without packed documents.

This is the part of "compile for the GPU" a CPU can do: JAX's Pallas → Triton lowering runs here,
so an operation Triton has no rule for (value slices, ``custom_vjp_call``, f32 × bf16 dots — all
three were in these kernels), or a Mosaic-GPU lowering picked by default, fails in CI instead of on
the first GPU. Triton → PTX (ptxas) and the run itself still need a GPU (scripts/bench_kernels.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from pallas_kernels.delta_rule.api import delta_rule
from pallas_kernels.linear_memory.api import linear_memory
from pallas_kernels.platform import TRITON_CALL, lower_for_cuda

B, H, T, D = 1, 2, 128, 64  # a model's head dim: Triton's dots need every side >= 16


def _op(name, documents):
  def run(q, k, v, g, la, seg, h0):
    kw = dict(
      segment_ids=seg if documents else None,
      initial_state=h0,
      backend='gpu',
      interpret=False,
    )
    if name == 'linear_scalar':  # RetNet / Mamba2: a decay per head
      return linear_memory(q, k, v, g, la, **kw)
    if name == 'linear_channel':  # GLA: a decay per key channel
      return linear_memory(q, k, v, None, jnp.broadcast_to(la[..., None], q.shape), **kw)
    return delta_rule(q, k, v, g, la, **kw)  # Gated DeltaNet

  return run


def _args(dtype):
  tok = jax.ShapeDtypeStruct((B, H, T, D), dtype)
  gate = jax.ShapeDtypeStruct((B, H, T), jnp.float32)
  seg = jax.ShapeDtypeStruct((B, T), jnp.int32)
  h0 = jax.ShapeDtypeStruct((B, H, D, D), jnp.float32)
  return tok, tok, tok, gate, gate, seg, h0


CASES = [
  (name, dtype, True)
  for name in ('linear_scalar', 'linear_channel', 'delta_rule')
  for dtype in (jnp.float32, jnp.bfloat16)
] + [('linear_scalar', jnp.bfloat16, False), ('delta_rule', jnp.float32, False)]


@pytest.mark.parametrize('name,dtype,documents', CASES)
def test_gpu_kernels_lower_to_triton(name, dtype, documents):
  f = _op(name, documents)

  def loss(*a):
    y, state = f(*a)
    return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum(state * state)

  fwd = lower_for_cuda(f, *_args(dtype))
  assert fwd.count(TRITON_CALL) == 1, f'{name}: the forward is not one Triton kernel'
  # Gradients of q, k, v, both gates and the initial state: the forward (saving its residuals)
  # and the reverse pass must both be Triton kernels, not an XLA fallback.
  bwd = lower_for_cuda(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 6)), *_args(dtype))
  assert bwd.count(TRITON_CALL) == 2, f'{name}: forward + backward is not two Triton kernels'


def test_kernel_bodies_have_only_triton_primitives():
  """The rule behind the test above, stated directly: the traced bodies use no primitive that JAX's
  Triton lowering lacks (so a failure names the primitive, not a lowering stack)."""
  from jax._src.pallas.triton import lowering as triton_lowering
  from jax.extend import core as jcore

  rules = {str(p) for p in triton_lowering.triton_lowering_rules}

  def missing(jaxpr, inside, out):
    for e in jaxpr.eqns:
      if inside and str(e.primitive) not in rules:
        out.add(str(e.primitive))
      for v in e.params.values():
        for x in v if isinstance(v, (tuple, list)) else (v,):
          sub = x.jaxpr if isinstance(x, jcore.ClosedJaxpr) else x
          if isinstance(sub, jcore.Jaxpr):
            missing(sub, inside or str(e.primitive) == 'pallas_call', out)
    return out

  for name in ('linear_scalar', 'linear_channel', 'delta_rule'):
    f = _op(name, True)
    loss = lambda *a, f=f: jnp.sum(f(*a)[0].astype(jnp.float32))
    args = [jnp.zeros(a.shape, a.dtype) for a in _args(jnp.bfloat16)]
    jaxpr = jax.make_jaxpr(jax.grad(loss, argnums=(0, 1, 2, 3, 4, 6)))(*args).jaxpr
    assert not missing(jaxpr, False, set()), f'{name}: no Triton lowering for these primitives'
