"""In-kernel building blocks shared by the chunk functions (pure jnp, traceable by Pallas)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def mm(a, b, dtype):
  """a @ b with ``dtype`` operands (bf16 for bf16 inputs) and fp32 accumulation."""
  return jax.lax.dot_general(
    a.astype(dtype), b.astype(dtype), (((1,), (0,)), ((), ())), preferred_element_type=F32
  )


def mm_nt(a, b, dtype):
  """a @ bᵀ (contract the last axes)."""
  return jax.lax.dot_general(
    a.astype(dtype), b.astype(dtype), (((1,), (1,)), ((), ())), preferred_element_type=F32
  )


def mm_tn(a, b, dtype):
  """aᵀ @ b (contract the first axes)."""
  return jax.lax.dot_general(
    a.astype(dtype), b.astype(dtype), (((0,), (0,)), ((), ())), preferred_element_type=F32
  )


def masks(seg):
  """seg [c, 1] (resets so far in the chunk) → (causal same-document mask M [c, c] (i ≤ t),
  strict version (i < t), same-document-as-the-last-token column [c, 1])."""
  c = seg.shape[0]
  t = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  i = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  same = seg == seg.T
  return same & (i <= t), same & (i < t), seg == seg[c - 1 :]


def masked_exp(diff, mask):
  """exp(diff) where mask, 0 elsewhere; the masked entries never reach exp (no overflow, and
  no inf·0 in the gradient)."""
  return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)
