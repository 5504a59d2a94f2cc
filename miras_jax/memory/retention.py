"""Retention gates: how much of the old memory is kept, and in what geometry.

Every retention here is a *decay* of an accumulator ``A`` (kept in fp32) followed by a
map ``φ`` from the accumulator to the memory's weights, ``W = φ(A)``:

  decay   'none'    A_t = A_{t−1} + …                (linear attention, DeltaNet, TTT)
          'scalar'  A_t = α_t A_{t−1} + …            (α_t per head; RetNet, Mamba2, GDN, Titans)
          'channel' A_t = A_{t−1} Diag(α_t) + …      (α_t ∈ R^{d_k}; GLA; linear memory only)
  map φ   'identity' W = A                           (ℓ2 retention: the plain gated rules)
          'lq'       W = A / ‖A‖_q^{q−2}             (Moneta, ℓq normalisation, per matrix)
          'softmax'  W = c · softmax_row(A)          (Memora, KL retention: A are the logits,
                                                      the memory lives on a scaled simplex)
          'softmax_lag' W = c · softmax_row(log⁺ A)  (Memora's chunked "lag" scheme, Miras
                                                      Eq. 30–32: A holds the weights themselves)
          'elastic'  W = soft_threshold(A, λ)        (elastic net: ℓ1 + ℓ2 retention in its
                                                      dual-averaging / FTRL form)

Memora's rule W_t = c·Softmax(α_t log W_{t−1} − η_t g_t) is exactly the linear recurrence
A_t = α_t A_{t−1} − η_t g_t on the logits A, since log W_{t−1} = A_{t−1} + (row constant)
and softmax ignores row constants. So all three non-linear retentions keep a linear
accumulator and differ only in φ — which is what lets one chunked kernel serve all.

How a non-linear φ is read *inside* a chunk (``read_mode``; b = 1 makes all exact):
  'identity'  Ŵ_t = A_t.
  'scale'     Ŵ_t = s · A_t with the scale s = 1/‖A‖_q^{q−2} of the last chunk boundary
              (Moneta "normalises A once per chunk"; the accumulator itself is exact).
  'wspace'    Ŵ_t = linear GD steps in weight space from the boundary weights
              (Memora's "linear steps for the rest"; elastic net likewise).
  'lag'       Memora's lag scheme (Miras Eq. 30–32, §5.4): the first ("lag") token s of each
              chunk makes the exact KL step W_s = c·Softmax(α_s log W' − η_s ∇ℓ(W'; k_s, v_s))
              from the boundary memory W'; W_s is the gradient point of the rest of the chunk,
              whose tokens take linear steps W_t = α_t W_{t−1} − η_t ∇ℓ(W_s; k_t, v_t); the
              chunk's end maps back onto the simplex, W ← c·Softmax(log⁺ W). The state A holds
              these weights (φ^{-1} = identity). A document that starts mid-chunk has no lag
              token: it takes linear steps from W_0 with gradients at W_0 until the boundary.
  and the last token of every chunk reads the exact φ(A_t) (a boundary).

What the decay forgets towards (``target``):
  'zero'     A_t = α_t A_{t−1} + …   (the papers: the global retention term ½‖W‖², Miras §4)
  'initial'  A_t = α_t A_{t−1} + (1 − α_t) A_0 + …   (towards the learned initial memory:
             the term ½‖W − W_0‖²; A_0 = φ^{-1}(W_0), the state a reset returns to)
'initial' is the same linear recurrence on A − A_0, so the chunked form only adds (1 − a_t) A_0
to the decayed base (chunked.py); it is defined for a scalar decay with the identity or ℓq map.
Why (issue 10 §3, benchmarks/README.md): at the training length (128 tokens) the memory stays
near its learned W_0; over thousands of tokens forgetting towards zero moves its scale where
training never saw it. Moneta's printed map inverts the scale (‖φ(A)‖_q = ‖A‖_q^{3−q} = 1/‖A‖_q
at q = 4), so forgetting *grows* its weights, up to the norm floor, and a step that shrinks A
grows W; Titans' memory shrinks, and its output LayerNorm (ε = 1e-6) is scale-invariant, so
its effective step grows as 1/‖W‖². Either way the exact gradient through 4K–8K tokens
overflowed after training. Towards W_0 the memory keeps the scale it was trained at.

log⁺ is the guard for non-positive entries, which the linear steps can produce: log⁺ x =
log max(x, clamp_min), so such an entry leaves the chunk end with weight ≈ clamp_min/row sum
(≈ 0) and no gradient, never NaN.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax import lax

# Guard of Moneta's map (``Retention.norm_floor``): ‖A‖_q is clamped below, so that a memory
# that has forgotten everything (α → 0 drives A → 0) cannot blow up W = A/‖A‖_q^{q−2}
# (‖W‖_q = 1/‖A‖_q). The paper prints no guard. At 1e-2 the read scale stays ≤ 1e4 for q = 4;
# with 1e-6 extreme gates produced scales of 1e11 and outputs no longer reproducible across
# evaluation orders even in fp64.
_NORM_EPS = 1e-2
MAPS = ('identity', 'lq', 'softmax', 'softmax_lag', 'elastic')
# What the decay forgets towards (``Retention.target``): 'zero' (the papers) or 'initial'.
TARGETS = ('zero', 'initial')


@dataclasses.dataclass(frozen=True)
class Retention:
  decay: str = 'none'  # none | scalar | channel
  map: str = 'identity'  # identity | lq | softmax | softmax_lag | elastic
  q: float = 4.0  # Moneta's ℓq (paper: q = 4)
  scale_c: float = 1.0  # Memora's simplex scale c
  l1: float = 1e-3  # elastic net threshold λ
  clamp_min: float = 1e-12  # Memora: clamp before log (the log⁺ guard)
  norm_floor: float = _NORM_EPS  # Moneta: ‖A‖_q ≥ norm_floor in W = A/‖A‖_q^{q−2}
  target: str = 'zero'  # zero | initial: A_t = α_t A_{t−1} + (1 − α_t) A_0 + … (module doc)

  def __post_init__(self):
    if self.decay not in ('none', 'scalar', 'channel'):
      raise ValueError(f'unknown retention decay {self.decay!r}')
    if self.map not in MAPS:
      raise ValueError(f'unknown retention map {self.map!r}')
    if self.map == 'lq' and self.q == 3.0:
      raise ValueError('ℓq retention with q = 3 is not invertible (‖W‖_q = 1 always)')
    if self.target not in TARGETS:
      raise ValueError(f'unknown retention target {self.target!r}; choose one of {TARGETS}')
    if self.target == 'initial' and (
      self.decay != 'scalar' or self.read_mode not in ('identity', 'scale')
    ):
      raise ValueError(
        "retention target 'initial' needs a scalar decay and the identity or ℓq map "
        f'(got decay {self.decay!r}, map {self.map!r})'
      )

  @property
  def read_mode(self) -> str:
    return {
      'identity': 'identity',
      'lq': 'scale',
      'softmax': 'wspace',
      'softmax_lag': 'lag',
      'elastic': 'wspace',
    }[self.map]

  # --- the map φ and its (right) inverse, per weight matrix --------------------
  def _qnorm_pow(self, a, r):
    """max(‖A‖_q, norm_floor)^r, a scalar.

    Written as exp(r/q · log max(Σ|A|^q, floor^q)) on a [1, 1] array: Mosaic (the TPU Pallas
    compiler) has no scalar ``powf``, and the deep-memory kernel runs this function on chip.
    Same value as the direct power; the floor also keeps log finite (and its gradient) at A = 0.
    """
    absq = jnp.abs(a)
    absq = lax.integer_pow(absq, int(self.q)) if float(self.q).is_integer() else absq**self.q
    total = jnp.sum(absq.reshape(-1, absq.shape[-1]), keepdims=True)  # [1, 1]
    total = jnp.maximum(total, self.norm_floor**self.q)
    return jnp.exp((r / self.q) * jnp.log(total)).reshape(())

  def scale(self, a):
    """s(A) with φ(A) = s(A)·A for 'lq' (a scalar); 1 otherwise."""
    if self.map != 'lq':
      return jnp.ones((), a.dtype)
    return self._qnorm_pow(a, -(self.q - 2.0))

  def phi(self, a):
    if self.map == 'identity':
      return a
    if self.map == 'lq':
      return self.scale(a) * a
    if self.map == 'softmax':
      return self.scale_c * jax.nn.softmax(a, axis=-1)
    if self.map == 'softmax_lag':
      return self.scale_c * jax.nn.softmax(self.log_plus(a), axis=-1)
    return jnp.sign(a) * jnp.maximum(jnp.abs(a) - self.l1, 0.0)

  def log_plus(self, w):
    """log⁺ w = log max(w, clamp_min): the guarded log of Memora's weights."""
    return jnp.log(jnp.maximum(w, self.clamp_min))

  def lag_step(self, w, log_alpha, eta, g):
    """Memora's exact KL step from weights w (Miras Eq. 30): c·Softmax(α log⁺ w − η g)."""
    return self.scale_c * jax.nn.softmax(jnp.exp(log_alpha) * self.log_plus(w) - eta * g, axis=-1)

  def phi_inv(self, w):
    """An accumulator A with φ(A) = W (the learned initial memory W_0 → A_0)."""
    if self.map in ('identity', 'softmax_lag'):
      return w
    if self.map == 'lq':
      # ‖φ(A)‖_q = ‖A‖_q^{3−q}  ⇒  A = W · ‖W‖_q^{(q−2)/(3−q)}
      return w * self._qnorm_pow(w, (self.q - 2.0) / (3.0 - self.q))
    if self.map == 'softmax':
      return jnp.log(jnp.maximum(w / self.scale_c, self.clamp_min))
    return w + self.l1 * jnp.sign(w)
