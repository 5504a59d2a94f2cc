"""In-kernel building blocks shared by the chunk functions (pure jnp, traceable by Pallas)."""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from miras_jax.memory.common import take_row

F32 = jnp.float32


_NN = (((1,), (0,)), ((), ()))  # a @ b
_NT = (((1,), (1,)), ((), ()))  # a @ bᵀ
_TN = (((0,), (0,)), ((), ()))  # aᵀ @ b


class Operands(NamedTuple):
  """What ``dtype`` may also be in mm / mm_nt / mm_tn: the operand dtype, and the dtype in which
  the *backward's* products (cotangent × operand) run. ``tangent=F32`` is plain autodiff (f32
  cotangent × ``dtype`` operand: Mosaic takes it, and needs 32-bit results). Triton's dot needs
  equal operand types, so the GPU kernels pass ``Operands(bf16, bf16)``: the cotangent is rounded
  to bf16 before each backward dot (accumulation stays fp32 inside Triton's dot), as the
  backward kernels of flash-attention and fla cast dO / dS before their dots."""

  dtype: Any
  tangent: Any = F32


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _mm_low_tangent(a, b, ops, dims):
  return jax.lax.dot_general(
    a.astype(ops.dtype), b.astype(ops.dtype), dims, preferred_element_type=F32
  )


@_mm_low_tangent.defjvp
def _mm_low_tangent_jvp(ops, dims, primals, tangents):
  # Product rule with the tangent products in ``ops.tangent``: linear in (da, db), so JAX
  # transposes each into a dot of two ``ops.tangent`` operands (see Operands).
  a, b = primals
  da, db = tangents
  lo = lambda x, y: jax.lax.dot_general(
    x.astype(ops.tangent), y.astype(ops.tangent), dims, preferred_element_type=ops.tangent
  ).astype(F32)
  return _mm_low_tangent(a, b, ops, dims), lo(da, b) + lo(a, db)


def _mm(a, b, dtype, dims):
  ops = dtype if isinstance(dtype, Operands) else Operands(dtype)
  if jnp.dtype(ops.tangent) == F32:  # plain autodiff
    return jax.lax.dot_general(
      a.astype(ops.dtype), b.astype(ops.dtype), dims, preferred_element_type=F32
    )
  return _mm_low_tangent(a, b, Operands(jnp.dtype(ops.dtype), jnp.dtype(ops.tangent)), dims)


def mm(a, b, dtype):
  """a @ b with ``dtype`` operands (bf16 for bf16 inputs) and fp32 accumulation; ``dtype`` a
  dtype or ``Operands``."""
  return _mm(a, b, dtype, _NN)


def mm_nt(a, b, dtype):
  """a @ bᵀ (contract the last axes)."""
  return _mm(a, b, dtype, _NT)


def mm_tn(a, b, dtype):
  """aᵀ @ b (contract the first axes)."""
  return _mm(a, b, dtype, _TN)


def masks(seg):
  """seg [c, 1] (resets so far in the chunk) → (causal same-document mask M [c, c] (i ≤ t),
  strict version (i < t), same-document-as-the-last-token column [c, 1])."""
  c = seg.shape[0]
  t = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  i = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  same = seg == seg.T
  return same & (i <= t), same & (i < t), seg == last_row(seg)


def row(x, t):
  """x[t : t + 1] ([1, d]), slice-free: Triton has no value slicing (common.take_row)."""
  return take_row(x, t, keepdims=True)


def last_row(x):
  """x[-1:] ([1, d]) by ``row``: once per chunk, so the masked sum costs nothing that matters."""
  return row(x, x.shape[0] - 1)


def masked_exp(diff, mask):
  """exp(diff) where mask, 0 elsewhere; the masked entries never reach exp (no overflow, and
  no inf·0 in the gradient)."""
  return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)
