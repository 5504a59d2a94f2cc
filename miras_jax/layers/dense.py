"""Bias-free N-D projections whose kernels are created in their N-D shape (``DenseND``, and
``HeadsToEmbed``, the per-head output projection of the Miras layer).

``nn.DenseGeneral`` builds multi-axis kernels flat and reshapes them after the initializer,
so an initializer boxed with ``nn.with_logical_partitioning(init, ('embed', 'heads',
'head_dim'))`` is asked to constrain a 2-D array with three axis names, which fails as soon
as a mesh is set (``jax.set_mesh``). Here the *reshaping* initializer is boxed, so the box has
the kernel's real shape; the fan-in of ``kernel_init`` is still the product of the
contracted dimensions (as DenseGeneral computes it). Parameter name and shape match
DenseGeneral's ('kernel', in_shape + features).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype


class DenseND(nn.Module):
  """y[..., *features] = Σ_{axis} x[..., *in] kernel[*in, *features]."""

  features: int | Sequence[int]
  axis: int | Sequence[int] = -1
  kernel_axes: Sequence[str | None] = ()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Any = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x):
    features = (self.features,) if isinstance(self.features, int) else tuple(self.features)
    axis = (self.axis,) if isinstance(self.axis, int) else tuple(self.axis)
    axis = tuple(a % x.ndim for a in axis)
    in_shape = tuple(x.shape[a] for a in axis)
    shape = in_shape + features
    if self.kernel_axes and len(self.kernel_axes) != len(shape):
      raise ValueError(f'kernel_axes {tuple(self.kernel_axes)} do not match kernel shape {shape}')

    def init(rng, shape_, dtype=self.param_dtype):
      flat = (math.prod(in_shape), math.prod(features))
      return self.kernel_init(rng, flat, dtype).reshape(shape_)

    boxed = (
      nn.with_logical_partitioning(init, tuple(self.kernel_axes)) if self.kernel_axes else init
    )
    kernel = self.param('kernel', boxed, shape, self.param_dtype)
    x, kernel = promote_dtype(x, kernel, dtype=self.dtype)
    dims = ((axis, tuple(range(len(axis)))), ((), ()))
    y = jax.lax.dot_general(x, kernel, dims)
    # dot_general puts x's free axes first (in order), then the kernel's feature axes —
    # the same layout as DenseGeneral when the contracted axes are trailing.
    return y


class HeadsToEmbed(nn.Module):
  """Output projection ``[B, T, H, D] -> [B, T, E]``; kernel ``[H, D, E]`` ('heads',
  'head_dim', 'embed'), fan-in H·D. E is a call argument (known only from the layer input)."""

  dtype: Any = None
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, y: jax.Array, embed: int) -> jax.Array:
    init = nn.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal', in_axis=(0, 1), out_axis=2
    )
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(init, ('heads', 'head_dim', 'embed')),
      y.shape[-2:] + (embed,),
      self.param_dtype,
    )
    dtype = y.dtype if self.dtype is None else self.dtype
    return jnp.einsum('bthd,hde->bte', y.astype(dtype), kernel.astype(dtype))
