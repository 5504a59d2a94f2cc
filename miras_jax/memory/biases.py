"""Attentional biases: the inner objective ℓ(p; v) a memory minimises at test time.

Each bias is given by its gradient with respect to the memory's prediction
``p = M(W; k)`` (``u = ∂ℓ/∂p``); the weight gradient is then the back-propagation of
``u`` through the memory (``∇_W ℓ = J_Wᵀ u``), which is how both the reference and the
chunked paths use it (miras-math.md, "Attentional biases").

Convention (constant factors folded into η, identical in every implementation):
  dot-product   ℓ = −⟨p, v⟩                    u = −v          (η = 1 → linear attention)
  ℓ2            ℓ = ½‖p − v‖²                  u = e           (η = β → DeltaNet)
  ℓp            ℓ = (1/p)‖p − v‖_p^p          u = sign(e)|e|^{p−1}, smoothed
  Huber         ℓ = Σ_j H_δj(e_j)              u_j = e_j if |e_j| ≤ δ_j else δ_j sign(e_j)
  value-shift   ℓ = ½‖e‖² + Δ‖e‖               u = e + Δ e/‖e‖
with ``e = p − v``. The (1/p) normalisation makes ℓp with p = 2 coincide with ℓ2.
All functions act on the last axis and broadcast over leading axes.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DotProduct:
  """Hebbian bias ℓ = −⟨p, v⟩: the gradient does not depend on the memory."""

  name: str = 'dot'
  depends_on_memory: bool = False

  def grad(self, p, v, delta=None):
    del delta
    return jnp.broadcast_to(-v, jnp.broadcast_shapes(p.shape, v.shape))

  def loss(self, p, v, delta=None):
    del delta
    return -jnp.sum(p * v, axis=-1)


@dataclasses.dataclass(frozen=True)
class L2:
  """Regression bias ℓ = ½‖p − v‖² (delta rule)."""

  name: str = 'l2'
  depends_on_memory: bool = True

  def grad(self, p, v, delta=None):
    del delta
    return p - v

  def loss(self, p, v, delta=None):
    del delta
    return 0.5 * jnp.sum(jnp.square(p - v), axis=-1)


@dataclasses.dataclass(frozen=True)
class Lp:
  """ℓp bias (Moneta), with the smoothing of miras-math.md.

  sign(x) ≈ tanh(a·x) and |x| ≈ sqrt(x² + ε) keep the gradient smooth at e = 0 (for
  p < 2 the exact gradient is unbounded there). ``a`` = ``sharpness``.
  """

  p: float = 3.0
  sharpness: float = 10.0
  eps: float = 1e-6
  name: str = 'lp'
  depends_on_memory: bool = True

  def grad(self, p, v, delta=None):
    del delta
    e = p - v
    mag = jnp.power(jnp.square(e) + self.eps, 0.5 * (self.p - 1.0))
    return jnp.tanh(self.sharpness * e) * mag

  def loss(self, p, v, delta=None):
    del delta
    e = p - v
    return jnp.sum(jnp.power(jnp.square(e) + self.eps, 0.5 * self.p), axis=-1) / self.p


@dataclasses.dataclass(frozen=True)
class Huber:
  """Huber bias (Yaad) with a data-dependent, channel-wise threshold δ_t.

  ``per_channel=True`` (default) tests each channel |e_j| ≤ δ_j; ``False`` uses the
  paper's norm test ‖e‖ ≤ δ (δ then a scalar per token): ℓ2 gradient inside,
  δ·e/‖e‖ outside.
  """

  per_channel: bool = True
  default_delta: float = 1.0
  name: str = 'huber'
  depends_on_memory: bool = True

  def _delta(self, delta, e):
    if delta is None:
      return jnp.asarray(self.default_delta, e.dtype)
    return delta

  def grad(self, p, v, delta=None):
    e = p - v
    d = self._delta(delta, e)
    if self.per_channel:
      return jnp.clip(e, -d, d)  # == e inside, δ·sign(e) outside
    d = d[..., 0] if jnp.ndim(d) == jnp.ndim(e) else d
    n = jnp.sqrt(jnp.sum(jnp.square(e), axis=-1) + 1e-12)
    scale = jnp.where(n <= d, 1.0, d / n)
    return e * scale[..., None]

  def loss(self, p, v, delta=None):
    e = p - v
    d = self._delta(delta, e)
    if self.per_channel:
      a = jnp.abs(e)
      return jnp.sum(jnp.where(a <= d, 0.5 * e * e, d * (a - 0.5 * d)), axis=-1)
    d = d[..., 0] if jnp.ndim(d) == jnp.ndim(e) else d
    n = jnp.sqrt(jnp.sum(jnp.square(e), axis=-1) + 1e-12)
    return jnp.where(n <= d, 0.5 * n * n, d * (n - 0.5 * d))


@dataclasses.dataclass(frozen=True)
class ValueShiftRobust:
  """ℓ = ½‖e‖² + Δ‖e‖: robust to a shift of the values of size Δ (miras-math.md)."""

  shift: float = 0.1
  eps: float = 1e-6
  name: str = 'value_shift'
  depends_on_memory: bool = True

  def grad(self, p, v, delta=None):
    del delta
    e = p - v
    n = jnp.sqrt(jnp.sum(jnp.square(e), axis=-1, keepdims=True) + self.eps)
    return e + self.shift * e / n

  def loss(self, p, v, delta=None):
    del delta
    e = p - v
    n2 = jnp.sum(jnp.square(e), axis=-1)
    return 0.5 * n2 + self.shift * jnp.sqrt(n2 + self.eps)


BIASES = {
  'dot': DotProduct,
  'l2': L2,
  'lp': Lp,
  'huber': Huber,
  'value_shift': ValueShiftRobust,
}
