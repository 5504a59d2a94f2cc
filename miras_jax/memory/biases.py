"""Attentional biases: the inner objective ℓ(p; v) a memory minimises at test time.

Each bias is given by its gradient with respect to the memory's prediction
``p = M(W; k)`` (``u = ∂ℓ/∂p``); the weight gradient is then the back-propagation of
``u`` through the memory (``∇_W ℓ = J_Wᵀ u``), which is how both the reference and the
chunked paths use it (miras-math.md, "Attentional biases").

Convention (constant factors folded into η, identical in every implementation):
  dot-product   ℓ = −⟨p, v⟩                    u = −v          (η = 1 → linear attention)
  ℓ2            ℓ = ½‖p − v‖²                  u = e           (η = β → DeltaNet)
  ℓp            ℓ = (1/p)‖p − v‖_p^p          u = sign(e)|e|^{p−1}, smoothed
  Huber 'mask'  ℓ = ½‖e‖² or δ‖e‖_1 (Eq. 26)    u = e if ‖e‖ ≤ δ else δ sign(e)   (Yaad default)
  Huber 'clip'  ℓ = Σ_j H_δj(e_j) (Eq. 14)      u_j = e_j if |e_j| ≤ δ_j else δ_j sign(e_j)
  Huber 'norm'  ℓ = H_δ(‖e‖) (Eq. 15)           u = e if ‖e‖ ≤ δ else δ e/‖e‖
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


HUBER_MODES = ('mask', 'clip', 'norm')


@dataclasses.dataclass(frozen=True)
class Huber:
  """Huber-type bias (Yaad) with a data-dependent threshold δ_t; three variants (``mode``).

  ``'mask'`` (default, Miras Eq. 26 and §5.4): a per-token switch between the ℓ2 and the ℓ1
      gradient, u = e where ‖e‖ ≤ δ_t, else δ_t · sign(e) (the gradient of δ_t‖e‖_1).
      With a per-channel δ_t ∈ R^d the test is ‖e ⊘ δ_t‖ ≤ 1 (an ellipsoid; the scalar test
      when all δ_j are equal) and the outside gradient δ_t ⊙ sign(e).
  ``'clip'`` (Eq. 14): per channel, u_j = e_j if |e_j| ≤ δ_j else δ_j sign(e_j).
  ``'norm'`` (Eq. 15): ℓ2 gradient inside ‖e‖ ≤ δ_t, δ_t · e/‖e‖ outside (δ_t a scalar; a
      per-channel δ uses its first channel).
  δ_t: None (``default_delta``), [..., 1] or [..., d] (the last two broadcast against e).
  The switch is not differentiated (a measure-zero set); the outer gradient reaches δ_t
  through the outside branch. ``per_channel`` is the former spelling: True = 'clip',
  False = 'norm'.
  """

  mode: str = 'mask'
  default_delta: float = 1.0
  per_channel: bool | None = None
  name: str = 'huber'
  depends_on_memory: bool = True

  def __post_init__(self):
    if self.per_channel is not None:
      object.__setattr__(self, 'mode', 'clip' if self.per_channel else 'norm')
      object.__setattr__(self, 'per_channel', None)
    if self.mode not in HUBER_MODES:
      raise ValueError(f'unknown Huber mode {self.mode!r}; choose one of {HUBER_MODES}')

  def _delta(self, delta, e):
    if delta is None:
      return jnp.full(e.shape[:-1] + (1,), self.default_delta, e.dtype)
    return delta

  def _inside(self, e, d):
    """[...] bool: token inside the ℓ2 region."""
    if self.mode == 'mask':
      return jnp.sum(jnp.square(e / d), axis=-1) <= 1.0
    d0 = d[..., 0]
    return jnp.sum(jnp.square(e), axis=-1) <= jnp.square(d0)

  def grad(self, p, v, delta=None):
    e = p - v
    d = self._delta(delta, e)
    if self.mode == 'clip':
      return jnp.clip(e, -d, d)  # == e inside, δ·sign(e) outside
    inside = self._inside(e, d)[..., None]
    if self.mode == 'mask':
      return jnp.where(inside, e, d * jnp.sign(e))
    n = jnp.sqrt(jnp.sum(jnp.square(e), axis=-1, keepdims=True) + 1e-12)
    return jnp.where(inside, e, e * (d[..., :1] / n))

  def loss(self, p, v, delta=None):
    """The objective whose gradient ``grad`` is, per token (continuous for 'clip', 'norm')."""
    e = p - v
    d = self._delta(delta, e)
    if self.mode == 'clip':
      a = jnp.abs(e)
      return jnp.sum(jnp.where(a <= d, 0.5 * e * e, d * (a - 0.5 * d)), axis=-1)
    inside = self._inside(e, d)
    n2 = jnp.sum(jnp.square(e), axis=-1)
    if self.mode == 'mask':
      return jnp.where(inside, 0.5 * n2, jnp.sum(d * jnp.abs(e), axis=-1))
    d0 = d[..., 0]
    n = jnp.sqrt(n2 + 1e-12)
    return jnp.where(inside, 0.5 * n2, d0 * (n - 0.5 * d0))


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
