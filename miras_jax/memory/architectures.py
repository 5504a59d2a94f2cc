"""Memory architectures: the function M(W; x) whose weights W are learned at test time.

A memory is a stack of weight matrices ``W_1 … W_L`` (``W_l``: [d_out_l, d_in_l]):
    h_0 = x;  z_l = W_l h_{l−1};  h_l = σ(z_l) for l < L;  M(x) = final(z_L, x)
- ``LinearMemory``: L = 1, final = identity (M(x) = W x).
- ``MLPMemory``: final(z, x) = x + LN(z) (residual + LayerNorm, Titans/TTT), depth L ≥ 1
  with hidden width ``expansion · d_k`` and GELU. Depth 1 is TTT-Linear's inner model.
  LayerNorm's scale/shift are *outer* parameters (``outer``), not memory state.
  ``bias=True`` gives every layer a bias learned at test time, z_l = W_l h_{l−1} + b_l (TTT's
  inner model f(x) = x + LN(Wx + b), Sun et al. 2024 §2): stored as the last column of W_l,
  [d_out, d_in + 1], acting on the layer input with a constant 1 appended (``layer_in``), so
  every gradient keeps the outer-product form below.

The weight gradient of any bias is Σ over tokens of outer products ``δ_l h_{l−1}ᵀ``
(back-propagated error × layer input), which is what makes the chunked dual form
possible (DESIGN §4, TTT §2.7). ``keys_forward`` and ``backprop`` return exactly those
factors for a batch of keys; the reference path instead uses ``jax.vjp`` of ``apply``.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp

Weights = tuple  # tuple of [d_out, d_in] arrays


def _layer_norm(z, scale, bias, eps):
  mu = jnp.mean(z, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(z - mu), axis=-1, keepdims=True)
  return (z - mu) * jax.lax.rsqrt(var + eps) * scale + bias


@dataclasses.dataclass(frozen=True)
class LinearMemory:
  """M(W; x) = W x, W: [d_v, d_k]."""

  name: str = 'linear'
  is_linear: bool = True

  def shapes(self, dk: int, dv: int) -> Sequence[tuple[int, int]]:
    return ((dv, dk),)

  def init_outer(self, dv: int, dtype=jnp.float32):
    return {}

  def init_weights(self, key, dk, dv, dtype=jnp.float32, scale=0.0):
    """Zero by default: linear-RNN memories start empty."""
    return tuple(scale * jax.random.normal(key, s, dtype) for s in self.shapes(dk, dv))

  def act(self, z):
    return z

  def layer_in(self, h):
    return h

  def final(self, z, x, outer):
    del x, outer
    return z

  @property
  def depth(self):
    return 1

  def apply(self, w: Weights, x, outer=None):
    return x @ w[0].T


@dataclasses.dataclass(frozen=True)
class MLPMemory:
  """M(x) = x + LN(W_L σ(… σ(W_1 x))) (Titans §3.1, Miras §5; TTT-Linear when depth=1)."""

  depth: int = 2
  expansion: int = 4
  residual: bool = True
  layer_norm: bool = True
  ln_eps: float = 1e-6
  bias: bool = False
  name: str = 'mlp'
  is_linear: bool = False

  def shapes(self, dk: int, dv: int):
    e = int(self.bias)  # the bias column
    if self.depth == 1:
      return ((dv, dk + e),)
    h = self.expansion * dk
    return ((h, dk + e),) + ((h, h + e),) * (self.depth - 2) + ((dv, h + e),)

  def init_outer(self, dv: int, dtype=jnp.float32):
    if not self.layer_norm:
      return {}
    return {'ln_scale': jnp.ones((dv,), dtype), 'ln_bias': jnp.zeros((dv,), dtype)}

  def init_weights(self, key, dk, dv, dtype=jnp.float32, scale=None):
    keys = jax.random.split(key, self.depth)
    out = []
    e = int(self.bias)
    for kk, (o, i) in zip(keys, self.shapes(dk, dv)):
      s = (1.0 / (i - e)) ** 0.5 if scale is None else scale
      w = s * jax.random.normal(kk, (o, i), dtype)
      out.append(w.at[:, i - e :].set(0.0) if e else w)  # biases start at zero
    return tuple(out)

  def act(self, z):
    return jax.nn.gelu(z, approximate=True)

  def layer_in(self, h):
    """The input a layer's weight matrix multiplies: h, or [h, 1] with a bias column."""
    if not self.bias:
      return h
    return jnp.concatenate([h, jnp.ones(h.shape[:-1] + (1,), h.dtype)], axis=-1)

  def final(self, z, x, outer):
    y = z
    if self.layer_norm:
      y = _layer_norm(z, outer['ln_scale'], outer['ln_bias'], self.ln_eps)
    if self.residual:
      y = x + y
    return y

  def apply(self, w: Weights, x, outer=None):
    h = x
    for l, wl in enumerate(w):
      z = linear(layer_input(self, h, wl), wl)
      h = self.act(z) if l < len(w) - 1 else z
    return self.final(h, x, outer)


# A layer's weight with a bias column may also be held *split*, as the pair (W [o, i], b [1, o])
# meaning [W | bᵀ]: the deep-memory GPU kernel (pallas_kernels/mlp_memory) does, since Triton needs
# every array dim a power of two and [o, i + 1] is not one. The helpers below take either form;
# on the [o, i + 1] matrix they are the plain products (same values as before the split existed).


def layer_input(arch, h, w):
  """What the weight w multiplies: [h, 1] for a bias column (``layer_in``), h if w is split."""
  return h if isinstance(w, tuple) else arch.layer_in(h)


def linear(x, w):
  """x wᵀ for a layer input x [n, ·] (``layer_input``): [n, o]."""
  if isinstance(w, tuple):
    return x @ w[0].T + w[1]
  return x @ w.T


def input_gram(x, xk, w):
  """x xkᵀ [n, m] of layer inputs for weight w's layer ([h, 1][hk, 1]ᵀ = h hkᵀ + 1 if split)."""
  g = x @ xk.T
  return g + 1.0 if isinstance(w, tuple) else g


def outer_sum(d, x, w):
  """Σ_n d_n ⊗ x_n = dᵀ x for d [n, o], layer inputs x [n, ·], in weight w's form."""
  if isinstance(w, tuple):
    return (d.T @ x, jnp.sum(d, axis=0, keepdims=True))
  return d.T @ x


def keys_forward(arch, w: Weights, x, outer):
  """Forward a batch of keys x [n, d_k]; returns (p [n, d_v], cache) for ``backprop``."""
  hs, zs = [layer_input(arch, x, w[0])], []
  for l, wl in enumerate(w):
    z = linear(hs[-1], wl)
    zs.append(z)
    if l < len(w) - 1:
      hs.append(layer_input(arch, arch.act(z), w[l + 1]))
  return arch.final(zs[-1], x, outer), (hs, zs)


def backprop(arch, w: Weights, x, outer, cache, u):
  """Back-propagate u = ∂ℓ/∂p to the layers: returns (deltas, inputs), lists over layers.

  ∇_{W_l} ℓ = Σ_n deltas[l][n] ⊗ inputs[l][n]  (the factored per-token gradient; the inputs
  carry the constant 1 of a bias column).
  """
  hs, zs = cache
  _, vjp_final = jax.vjp(lambda z: arch.final(z, x, outer), zs[-1])
  (d,) = vjp_final(u)
  deltas = [d]
  for l in range(len(w) - 1, 0, -1):
    if isinstance(w[l], tuple):  # split: no bias column
      back = d @ w[l][0]
    else:
      back = (d @ w[l])[:, : zs[l - 1].shape[-1]]  # drop the bias column's row
    _, vjp_act = jax.vjp(arch.act, zs[l - 1])
    (d,) = vjp_act(back)
    deltas.append(d)
  return deltas[::-1], hs


ARCHITECTURES = {'linear': LinearMemory, 'mlp': MLPMemory}
