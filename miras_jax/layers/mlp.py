"""SwiGLU feed-forward block.

Shazeer, "GLU Variants Improve Transformer" (2020); the Llama MLP:
``down(silu(gate(x)) * up(x))``, no biases.
"""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any
Initializer = Callable[..., jax.Array]


class SwiGLU(nn.Module):
  """Gated MLP: ``[B, T, E] -> [B, T, E]`` through a hidden width ``hidden_dim``.

  Parameters (logical axes):
      ``gate/kernel``, ``up/kernel``: ``[E, hidden_dim]`` ('embed', 'mlp');
      ``down/kernel``: ``[hidden_dim, E]`` ('mlp', 'embed').

  Attributes:
      hidden_dim: width of the hidden layer (e.g. 8/3·E rounded, as in Llama).
      dtype: compute dtype of the matmuls and the output (e.g. bfloat16); None keeps the input's.
      param_dtype: parameter dtype (float32 master weights).
      kernel_init: initializer for all three kernels (fan-in scaled).
  """

  hidden_dim: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    embed = x.shape[-1]

    def dense(features: int, axes: tuple[str, str], name: str) -> nn.Dense:
      return nn.Dense(
        features,
        use_bias=False,
        dtype=self.dtype,
        param_dtype=self.param_dtype,
        kernel_init=nn.with_logical_partitioning(self.kernel_init, axes),
        name=name,
      )

    gate = dense(self.hidden_dim, ('embed', 'mlp'), 'gate')(x)
    up = dense(self.hidden_dim, ('embed', 'mlp'), 'up')(x)
    return dense(embed, ('mlp', 'embed'), 'down')(nn.silu(gate) * up)
