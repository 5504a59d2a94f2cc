"""Normalisation layers: RMSNorm and an ℓ2 normaliser.

RMSNorm follows Zhang & Sennrich, "Root Mean Square Layer Normalization" (2019), as used in
Llama: no mean subtraction, no bias, a learnable per-feature scale. Statistics are computed in
float32 whatever the input dtype (bf16 mean-of-squares loses too much precision), then the result
is cast to the compute dtype.

`l2_normalize` is the q/k normaliser of the Miras layer (DESIGN.md §5: "ℓ2-normalised q and k");
it is the same ``x / sqrt(sum(x²) + eps)`` form that linear-attention / DeltaNet implementations
use so that the memory's inner learning rate stays well scaled.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  """Scale ``x`` to unit ℓ2 norm along ``axis``.

  Computes ``x / sqrt(sum(x**2, axis) + eps)`` in float32 and returns ``x.dtype``.

  Args:
      x: any shape, e.g. ``[B, T, H, D]``.
      axis: the axis to normalise over (default the last, the head dimension).
      eps: added inside the square root; keeps the gradient finite at ``x = 0``.

  Returns:
      An array of the same shape and dtype as ``x``.
  """
  x32 = x.astype(jnp.float32)
  inv = jax.lax.rsqrt(jnp.sum(jnp.square(x32), axis=axis, keepdims=True) + eps)
  return (x32 * inv).astype(x.dtype)


def rms_norm(x: jax.Array, scale: jax.Array | None, eps: float = 1e-6) -> jax.Array:
  """Pure RMSNorm over the last axis, in float32.

  Args:
      x: ``[..., C]``.
      scale: ``[C]`` or None (no scale).
      eps: added to the mean of squares.

  Returns:
      ``[..., C]`` float32.
  """
  x32 = x.astype(jnp.float32)
  y = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)
  if scale is not None:
    y = y * scale.astype(jnp.float32)
  return y


class RMSNorm(nn.Module):
  """RMSNorm over the last axis with a learnable scale (initialised to 1).

  Shapes: ``[..., C] -> [..., C]``.

  Attributes:
      epsilon: added to the mean of squares.
      dtype: output (compute) dtype; None keeps the input's dtype. Internals are always float32.
      param_dtype: dtype of the scale parameter (float32).
      use_scale: whether to learn a scale.
      scale_axis_name: logical axis name of the scale, ``'embed'`` by default; a caller that
          normalises per head (``[..., head_dim]``) may pass ``'head_dim'``.
  """

  epsilon: float = 1e-6
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  use_scale: bool = True
  scale_axis_name: str | None = 'embed'

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = None
    if self.use_scale:
      scale = self.param(
        'scale',
        nn.with_logical_partitioning(nn.initializers.ones_init(), (self.scale_axis_name,)),
        (x.shape[-1],),
        self.param_dtype,
      )
    out_dtype = x.dtype if self.dtype is None else self.dtype
    return rms_norm(x, scale, self.epsilon).astype(out_dtype)
