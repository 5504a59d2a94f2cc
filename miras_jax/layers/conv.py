"""Causal depthwise (per-channel) short convolution, with decoding continuation (`extend`).

The Miras layer (DESIGN.md §5) runs its q, k, v projections through a kernel-4 depthwise causal
convolution, as Mamba / H3 ("short convolution") and the DeltaNet family do. Written as a sum of
K shifted copies of the input rather than ``lax.conv_general_dilated``: with K = 4 that is four
fused multiply-adds, and the shifted form is what makes packed documents easy — a tap that would
reach back across a document boundary is simply zeroed, the convolutional analogue of resetting a
recurrent state at a segment start (recurrentgemma resets its Conv1D the same way).

Convention (cross-correlation, like PyTorch's ``Conv1d``): with kernel ``w[j]``, ``j = 0..K-1``,

    y[t, c] = sum_j w[j, c] * x[t - (K - 1) + j, c]  (+ b[c])

so ``w[K-1]`` multiplies the current token and ``w[0]`` the oldest one; out-of-range inputs are 0.

Decoding keeps the last ``K - 1`` inputs, oldest first, as ``conv_state: [B, K - 1, C]``.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from miras_jax.layers import sequence_parallel

Dtype = Any
Initializer = Callable[..., jax.Array]


def causal_depthwise_conv(
  x: jax.Array,
  kernel: jax.Array,
  bias: jax.Array | None = None,
  segment_ids: jax.Array | None = None,
  dtype: Dtype | None = None,
) -> jax.Array:
  """Pure causal depthwise convolution over time.

  Args:
      x: ``[B, T, C]``.
      kernel: ``[K, C]``; ``kernel[K-1]`` applies to the current token.
      bias: ``[C]`` or None.
      segment_ids: integer ``[B, T]`` or None. When given, tap ``x[t - s]`` contributes to
          ``y[t]`` only if ``segment_ids[t - s] == segment_ids[t]``: no mixing across packed
          documents.
      dtype: output dtype; None means ``x.dtype``. Accumulation is float32.

  Returns:
      ``[B, T, C]``.
  """
  k_size = kernel.shape[0]
  seq_len = x.shape[1]
  out_dtype = x.dtype if dtype is None else dtype
  x32 = x.astype(jnp.float32)
  w32 = kernel.astype(jnp.float32)
  x_pad = jnp.pad(x32, ((0, 0), (k_size - 1, 0), (0, 0)))
  if segment_ids is not None:
    # The id given to the left padding does not matter: padded inputs are zero anyway.
    seg_pad = jnp.pad(segment_ids, ((0, 0), (k_size - 1, 0)))
  y = jnp.zeros_like(x32)
  # Oldest tap first.
  for j in range(k_size):
    shift = k_size - 1 - j  # tap j reads x[t - shift]
    start = k_size - 1 - shift
    x_shift = x_pad[:, start : start + seq_len]
    if segment_ids is not None and shift > 0:
      same = seg_pad[:, start : start + seq_len] == segment_ids
      x_shift = jnp.where(same[..., None], x_shift, 0.0)
    y = y + x_shift * w32[j]
  if bias is not None:
    y = y + bias.astype(jnp.float32)
  return y.astype(out_dtype)


def init_conv_state(batch: int, kernel_size: int, channels: int, dtype: Dtype) -> jax.Array:
  """Zeros ``[batch, K - 1, channels]``: the decoding state at the start of a document."""
  return jnp.zeros((batch, kernel_size - 1, channels), dtype)


class CausalDepthwiseConv1D(nn.Module):
  """Per-channel causal 1-D convolution over time, ``[B, T, C] -> [B, T, C]``.

  Parameters: ``kernel [K, C]`` with logical axes ``kernel_axes`` (default ``(None, 'embed')``:
  the tap axis is never sharded), and ``bias [C]`` if ``use_bias``.

  Attributes:
      kernel_size: K (4 by default).
      use_bias: add a per-channel bias.
      dtype: output dtype; None keeps the input's. Accumulation is float32.
      param_dtype: parameter dtype.
      kernel_init: initializer for ``[K, C]``; default fan-in ``K`` (each output sees K inputs).
      kernel_axes: logical axis names of the kernel; a caller convolving ``heads * head_dim``
          channels may pass ``(None, 'heads')``.

  Methods:
      ``__call__(x, segment_ids=None) -> y``: a whole sequence (training).
      ``extend(x, conv_state) -> (y, new_state)``: continue a document by ``T_new`` tokens
      (a prefill or one-token decoding steps) from the state `init_conv_state` gives at its
      start; identical to ``__call__`` over the whole document.
  """

  kernel_size: int = 4
  use_bias: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0, 'fan_in', 'normal', in_axis=0, out_axis=1
  )
  kernel_axes: tuple[str | None, str | None] = (None, 'embed')

  @nn.compact
  def _params(self, channels: int) -> tuple[jax.Array, jax.Array | None]:
    # The weights, created for the input's channel count on first use.
    kernel = self.param(
      'kernel',
      nn.with_logical_partitioning(self.kernel_init, self.kernel_axes),
      (self.kernel_size, channels),
      self.param_dtype,
    )
    bias = None
    if self.use_bias:
      bias = self.param(
        'bias',
        nn.with_logical_partitioning(nn.initializers.zeros_init(), self.kernel_axes[1:]),
        (channels,),
        self.param_dtype,
      )
    return kernel, bias

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """``x [B, T, C]``, optional integer ``segment_ids [B, T]`` -> ``[B, T, C]``."""
    kernel, bias = self._params(x.shape[-1])
    axis = sequence_parallel.axis_for(x.shape[1])
    if axis:  # the sequence is split over a mesh axis: a halo from the left neighbour
      args = (x, kernel, bias, segment_ids, self.dtype, axis)
      return sequence_parallel.causal_conv(causal_depthwise_conv, *args)
    return causal_depthwise_conv(x, kernel, bias, segment_ids, self.dtype)

  def extend(self, x: jax.Array, conv_state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``x [B, T_new, C]``, ``conv_state [B, K-1, C]`` (the previous ``K - 1`` inputs, oldest
    first) -> ``(y [B, T_new, C], new_state [B, K-1, C])``; the state keeps its dtype."""
    k = self.kernel_size
    cat = jnp.concatenate([conv_state.astype(x.dtype), x], axis=1)  # [B, K−1+T_new, C]
    return self(cat)[:, k - 1 :], cat[:, cat.shape[1] - (k - 1) :].astype(conv_state.dtype)
