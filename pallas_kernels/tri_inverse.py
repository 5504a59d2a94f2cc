"""(I + N)⁻¹ for strictly lower-triangular N by recursive 2×2 block inversion, loop-free.

For a unit lower-triangular block matrix [[A, 0], [C, D]] the inverse is
[[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]]. Starting from the inverse of the block diagonal with 1×1 blocks
(the identity) and doubling the block size s = 1, 2, 4, … gives, at every level,

    X ← X − X (N ⊙ Off_s) X,

where Off_s selects the sub-diagonal s×s block of each 2s×2s diagonal block (X is block diagonal,
so the product lands exactly there). ⌈log₂ c⌉ levels of two c×c matmuls; every step multiplies
already-inverted blocks, never raw powers of N — this is the blockwise triangular inversion of
Higham, *Accuracy and Stability of Numerical Algorithms* (2nd ed.) §14.2.2, not a Neumann series
(whose product form (I − N)(I + N²)(I + N⁴)… grows with ‖N‖ and was rejected for that reason),
and it needs no exponent clipping. It is exact in exact arithmetic for any c (not only powers of 2).

The derivative is the analytic one, dX = −X dN X (dN restricted to the strictly lower triangle),
given as a custom JVP: it is linear in dN, so JAX transposes it into the VJP N̄ = −Xᵀ X̄ Xᵀ
(strictly lower part) without differentiating the log c levels. A JVP rather than a VJP because
JAX 0.10.2's Triton lowering has a rule for ``custom_jvp_call`` but none for ``custom_vjp_call``
(the GPU kernels trace this inside the kernel).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

F32 = jnp.float32


def _dot(a, b):
  return jax.lax.dot_general(a, b, (((1,), (0,)), ((), ())), preferred_element_type=F32)


def _dot_tn(a, b):
  return jax.lax.dot_general(a, b, (((0,), (0,)), ((), ())), preferred_element_type=F32)


def _dot_nt(a, b):
  return jax.lax.dot_general(a, b, (((1,), (1,)), ((), ())), preferred_element_type=F32)


@jax.custom_jvp
def unit_lower_inverse(n):
  """n [c, c] fp32, strictly lower triangular → (I + n)⁻¹ [c, c]."""
  c = n.shape[0]
  r = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  col = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  x = (r == col).astype(F32)
  s, level = 1, 0
  while s < c:
    rb = jax.lax.shift_right_logical(r, level)
    cb = jax.lax.shift_right_logical(col, level)
    off = (rb == cb + 1) & ((rb & 1) == 1)
    x = x - _dot(_dot(x, jnp.where(off, n, 0.0)), x)
    s, level = 2 * s, level + 1
  return x


@unit_lower_inverse.defjvp
def _jvp(primals, tangents):
  (n,), (dn,) = primals, tangents
  x = unit_lower_inverse(n)
  c = n.shape[0]
  r = jax.lax.broadcasted_iota(jnp.int32, (c, c), 0)
  col = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  # d(I + N)⁻¹ = −X dN X; only N's strictly lower triangle is an input.
  return x, -_dot(_dot(x, jnp.where(col < r, dn, 0.0)), x)
