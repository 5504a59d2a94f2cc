"""A memory rule = (architecture, attentional bias, retention gate, learning algorithm).

The named zoo (miras-math.md "Named rules" and "Deep-memory rules") is a registry of
such combinations with their papers' hyper-parameters as defaults; any other combination
is built the same way and runs on the same reference and chunked code::

    rule = MemoryRule("mine", MLPMemory(depth=3), Huber(), Retention("scalar", "lq"), Momentum())

Gates (all per head, per token; produced by the layer, see miras_jax/layers):
  eta        [.., T]        learning rate η_t (β_t of the delta rules, θ_t of Titans)
  log_alpha  [.., T]        log of the retention keep factor α_t (decay 'scalar');
             [.., T, d_k]   for decay 'channel' (GLA)
  log_mu     [.., T]        log of the momentum decay μ_t (Titans' η_t)
  delta      [.., T, d_v] or [.., T]   Huber threshold δ_t
Decays are passed in log space so extreme gates (α → 0 or 1) stay exact.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp

from miras_jax.memory.algorithms import GD, Momentum
from miras_jax.memory.architectures import LinearMemory, MLPMemory
from miras_jax.memory.biases import L2, DotProduct, Huber, Lp, ValueShiftRobust
from miras_jax.memory.retention import Retention


@dataclasses.dataclass(frozen=True)
class MemoryRule:
  name: str
  arch: Any
  bias: Any
  retention: Retention
  algorithm: Any = GD()
  # 'minibatch': gradients at the chunk-start memory (Titans/TTT/Miras parallel training).
  # 'wy': the exact sequential delta rule at any kernel chunk size (UT/WY transform);
  #       only for linear memory + ℓ2 bias + identity retention (DeltaNet family).
  form: str = 'minibatch'
  eta_transform: str = 'identity'  # 'identity' | 'longhorn'
  # Where token t's gradient is taken: 'boundary' (W at the last chunk boundary; Miras,
  # Titans, TTT) or 'decayed' (α_t W_{t−1}: Gated DeltaNet's S_t = α_t S_{t−1}(I − β k kᵀ)
  # + β v kᵀ, which decays before the delta step; only with the exact 'wy' form).
  grad_point: str = 'boundary'
  # What the layer should produce (hints, not used by the core math):
  decay_style: str = 'none'  # none | fixed (RetNet γ per head) | data (per token)
  eta_style: str = 'data'  # data | one (linear attention: η ≡ 1)
  # The inner step: 'none' (the papers' η_t) or 'implicit' / 'implicit_chunk' (bounded by
  # the inner loss's curvature along it; ``step_factors``).
  step_scale: str = 'none'

  def __post_init__(self):
    if self.form not in ('minibatch', 'wy'):
      raise ValueError(f'rule {self.name}: unknown form {self.form!r}')
    if self.form == 'wy' and not (
      self.arch.is_linear
      and isinstance(self.bias, L2)
      and self.retention.map == 'identity'
      and self.retention.decay != 'channel'
      and not self.algorithm.momentum
    ):
      raise ValueError(
        f'rule {self.name}: the WY form needs linear memory, ℓ2 bias, '
        'scalar or no decay, identity retention and plain GD'
      )
    if self.form == 'wy' and self.retention.target != 'zero':
      raise ValueError(f"rule {self.name}: the WY form forgets towards zero only (target 'zero')")
    if self.grad_point not in ('boundary', 'decayed'):
      raise ValueError(f'rule {self.name}: unknown grad_point {self.grad_point!r}')
    if self.grad_point == 'decayed' and self.form != 'wy':
      raise ValueError(f"rule {self.name}: grad_point='decayed' needs form='wy'")
    if self.retention.decay == 'channel' and not self.arch.is_linear:
      raise ValueError(f'rule {self.name}: channel-wise decay needs the linear memory')
    if self.retention.decay == 'channel' and self.algorithm.momentum:
      raise ValueError(f'rule {self.name}: channel-wise decay with momentum is not supported')
    if self.retention.read_mode == 'lag' and self.retention.decay == 'channel':
      raise ValueError(f'rule {self.name}: the lag scheme needs scalar or no decay')
    if self.step_scale not in STEP_SCALES:
      raise ValueError(f'rule {self.name}: unknown step_scale {self.step_scale!r}')
    if self.step_scale != 'none' and (
      self.arch.is_linear or self.retention.read_mode not in ('identity', 'scale')
    ):
      raise ValueError(
        f'rule {self.name}: step_scale={self.step_scale!r} needs a deep memory with the '
        'identity or ℓq retention map'
      )
    if self.retention.read_mode in ('wspace', 'lag') and self.algorithm.momentum:
      raise ValueError(
        f'rule {self.name}: {self.retention.map} retention with momentum is not supported'
      )

  @property
  def uses(self) -> dict[str, bool]:
    """Which gates this rule reads."""
    return {
      'eta': self.eta_style == 'data',
      'log_alpha': self.retention.decay != 'none',
      'log_mu': self.algorithm.momentum,
      'delta': isinstance(self.bias, Huber),
    }

  def replace(self, **kw) -> 'MemoryRule':
    return dataclasses.replace(self, **kw)


# ----------------------------------------------------------------------------------
# Gates: defaults, validation and the η transform shared by every implementation.


def prepare_gates(rule: MemoryRule, gates: dict | None, q, k, v):
  """Returns fp32 (eta [..,T], log_alpha [..,T(,dk)], log_mu [..,T], delta or None)."""
  gates = dict(gates or {})
  known = {'eta', 'log_alpha', 'log_mu', 'delta'}
  unknown = set(gates) - known
  if unknown:
    raise ValueError(f'unknown gate(s) {sorted(unknown)}; expected a subset of {sorted(known)}')
  lead = q.shape[:-1]
  f32 = q.dtype

  def get(name, default, shape):
    g = gates.get(name)
    if g is None:
      return jnp.full(shape, default, f32)
    g = jnp.asarray(g, f32)
    if g.shape != shape:
      raise ValueError(f'gate {name!r} has shape {g.shape}, expected {shape}')
    return g

  eta = get('eta', 1.0, lead)
  dk, dv = k.shape[-1], v.shape[-1]
  la_shape = lead + (dk,) if rule.retention.decay == 'channel' else lead
  if rule.retention.decay == 'none':
    if gates.get('log_alpha') is not None:
      raise ValueError(f"rule {rule.name} has no retention decay but got a 'log_alpha' gate")
    la = jnp.zeros(la_shape, f32)
  else:
    la = get('log_alpha', 0.0, la_shape)
  lm = get('log_mu', 0.0, lead) if rule.algorithm.momentum else None
  delta = gates.get('delta')
  if delta is not None:
    delta = jnp.asarray(delta, f32)
    if delta.shape == lead:
      delta = delta[..., None]
    if delta.shape not in (lead + (1,), lead + (dv,)):
      raise ValueError(f"gate 'delta' has shape {delta.shape}, expected {lead} or {lead + (dv,)}")
  if rule.eta_transform == 'longhorn':
    # Longhorn (Liu et al. 2024, eq. 9): ε_t = β_t / (1 + β_t k_tᵀk_t), the closed-form
    # implicit step of the online regression objective.
    kk = jnp.sum(jnp.square(k.astype(f32)), axis=-1)
    eta = eta / (1.0 + eta * kk)
  return eta, la, lm, delta


# ----------------------------------------------------------------------------------
# The inner step's scale.

# 'none': the papers' step η_t. 'implicit': token t's step is bounded by the inner loss's
# curvature along it, as in the implicit (proximal) step of online regression (Longhorn, Liu et
# al. 2024, eq. 9: ε = β/(1 + β kᵀk)):
#     η̃_t = η_t / (1 + η̄_t λ_t),   λ_t = ‖∇_W ℓ_t‖² / ‖∂ℓ_t/∂M‖²,   η̄_t = η_t / (1 − μ_t)
# λ_t is the Rayleigh quotient of the Gauss–Newton matrix J Jᵀ (J = ∂M(k_t)/∂W at the gradient
# point) along the error direction: for a linear memory J Jᵀ = ‖k‖² I, so λ = ‖k‖² and (without
# momentum) η̃ is Longhorn's step. η̄ is the gradient's total weight over all later tokens
# (Titans eq. 10's sum form: η/(1 − μ); η without momentum), so η̃/(1 − μ) · λ < 1 whatever η, μ.
# Why (issue 10 §3): the deep memory's output LayerNorm (ε ≪ var) makes M invariant to the scale
# of its last matrix (and nearly so, through the GELU, to the others'), so λ ∝ 1/‖W‖². Forgetting
# shrinks a trained Titans memory several-fold over thousands of tokens, far beyond the training
# context; the effective step η̄ λ of the papers' rule grows with 1/‖W‖² and the exact gradient
# through 4K tokens overflows. Here η̄ λ stays below 1; where η̄ λ ≪ 1 the rule is the papers'.
# λ_t comes from token t's own gradient at the chunk-start memory, so the factor is one number
# per token and the chunked dual form stays exact (it multiplies the token's key factors).
# 'implicit_chunk': the same with b η̄_t λ_t, b the chunk size. The b tokens of a chunk take
# their gradients at one point (the chunk-start memory), so their steps add up along what their
# gradients share before any of them is seen by the next gradient; for a scale-invariant memory
# that is at least the scale direction. The chunk's summed step then has η̄ λ < 1 (b = 1:
# 'implicit'). Measured (benchmarks/README.md "Issue 10 §3"): the trained tiny Titans MAG's exact
# gradient at 4K / 8K tokens is 1.1e7 / 1.4e9 with the papers' step, 4.6e4 / 2.0e5 with
# 'implicit' and 5.9e3 / 9.1e3 with 'implicit_chunk', at the same validation loss.
STEP_SCALES = ('none', 'implicit', 'implicit_chunk')


def step_factors(rule: MemoryRule, gg, uu, eta, log_mu, chunk_size: int):
  """η̃_t / η_t (``step_scale`` 'implicit' / 'implicit_chunk'; ones for 'none'), per token:
  gg = ‖∇_W ℓ_t‖² (summed over the weight matrices), uu = ‖∂ℓ_t/∂M‖², eta = η_t, log_mu =
  log μ_t or None, all of one shape; ``chunk_size`` b of the chunk semantics."""
  if rule.step_scale == 'none':
    return jnp.ones_like(eta)
  lam = gg / jnp.where(uu > 0, uu, 1.0)  # u = 0 gives g = 0: λ = 0
  if rule.step_scale == 'implicit_chunk':
    lam = chunk_size * lam
  total = eta
  if log_mu is not None:  # η = 0 (padding) with μ = 1 gives 0
    total = eta / jnp.maximum(_one_minus_exp(log_mu), 1e-6)
  return 1.0 / (1.0 + total * lam)


def _one_minus_exp(x):
  """1 − eˣ = −expm1(x) for x ≤ 0 (here 1 − μ from log μ), as −2t/(1 − t) with t = tanh(x/2)
  (eˣ − 1 = 2 tanh(x/2)/(1 − tanh(x/2)); 1 − t ∈ [1, 2)): the Mosaic lowering has no expm1 and
  this runs inside the deep-memory kernel (pallas_kernels/mlp_memory). The same fp32 accuracy:
  max relative error against fp64 over x ∈ [−31.6, −1e-9] 3.4e-7 (expm1: 3.2e-7), no cancellation
  near x = 0 as 1 − exp(x) would have (relative error ~1e-7/|x|)."""
  t = jnp.tanh(0.5 * x)
  return -2.0 * t / (1.0 - t)


# ----------------------------------------------------------------------------------
# Memory state (per head). All leaves fp32.
#   A    accumulator (tuple of matrices)           W = φ(A) (read_mode 'lag': the weights)
#   S    momentum (tuple), if the rule has momentum
#   Wg   memory at the last chunk boundary: the point where gradients are taken
#        (read_mode 'lag': the lag token's weights after the chunk's first token)
#   sig  per-matrix read scale s(A) at the last boundary (read_mode 'scale')
#   R    current read weights (read_mode 'wspace')
#   pos  position inside the current chunk (int32); 0 at a boundary


def fresh_state(rule: MemoryRule, w0: tuple) -> dict:
  """The state of a memory that has seen nothing: W = W_0 (single head, unbatched)."""
  ret = rule.retention
  w0 = tuple(jnp.asarray(w, jnp.promote_types(w.dtype, jnp.float32)) for w in w0)
  a0 = tuple(ret.phi_inv(w) for w in w0)
  wg = tuple(ret.phi(a) for a in a0)
  st = {'A': a0, 'Wg': wg, 'pos': jnp.zeros((), jnp.int32)}
  if rule.algorithm.momentum:
    st['S'] = tuple(jnp.zeros_like(a) for a in a0)
  if ret.read_mode == 'scale':
    st['sig'] = tuple(ret.scale(a) for a in a0)
  if ret.read_mode == 'wspace':
    st['R'] = wg
  return st


def init_state(rule: MemoryRule, w0: tuple, batch_size: int) -> dict:
  """Batched fresh state [B, H, ...] from per-head initial weights w0 (each [H, o, i])."""
  per_head = jax.vmap(lambda w: fresh_state(rule, w))(tuple(w0))
  return jax.tree.map(lambda x: jnp.broadcast_to(x, (batch_size,) + x.shape), per_head)


def read_base(rule: MemoryRule, st: dict) -> tuple[tuple, tuple]:
  """(B, s): the read weights are Ŵ_t = a_t B + s ⊙ (accumulated steps) in a chunk."""
  mode = rule.retention.read_mode
  if mode in ('identity', 'lag'):
    return st['A'], tuple(jnp.ones((), jnp.float32) for _ in st['A'])
  if mode == 'scale':
    return tuple(s * a for s, a in zip(st['sig'], st['A'])), st['sig']
  return st['R'], tuple(jnp.ones((), jnp.float32) for _ in st['A'])


# ----------------------------------------------------------------------------------
# The named zoo.

_MLP2 = dict(depth=2, expansion=4)


def _zoo() -> dict[str, Callable[..., MemoryRule]]:
  def make(name, arch, bias, ret, alg=GD(), **kw):
    def factory(**overrides):
      return MemoryRule(name, arch, bias, ret, alg, **kw).replace(**overrides)

    return factory

  lin = LinearMemory()
  return {
    # Katharopoulos et al. 2020: W_t = W_{t−1} + v_t k_tᵀ.
    'linear_attention': make(
      'linear_attention', lin, DotProduct(), Retention('none'), eta_style='one'
    ),
    # Sun et al. 2023 (RetNet): fixed decay γ per head.
    'retnet': make(
      'retnet', lin, DotProduct(), Retention('scalar'), decay_style='fixed', eta_style='one'
    ),
    # Dao & Gu 2024 (Mamba2 / SSD): data-dependent scalar decay, η = Δ_t.
    'mamba2': make('mamba2', lin, DotProduct(), Retention('scalar'), decay_style='data'),
    # Yang et al. 2024 (GLA): channel-wise (key) decay.
    'gla': make(
      'gla', lin, DotProduct(), Retention('channel'), decay_style='data', eta_style='one'
    ),
    # Schlag et al. 2021 / Yang et al. 2024 (DeltaNet).
    'deltanet': make('deltanet', lin, L2(), Retention('none'), form='wy'),
    # Yang et al. 2025 (Gated DeltaNet).
    'gated_deltanet': make(
      'gated_deltanet',
      lin,
      L2(),
      Retention('scalar'),
      form='wy',
      grad_point='decayed',
      decay_style='data',
    ),
    # Liu et al. 2024 (Longhorn): implicit online regression step.
    'longhorn': make('longhorn', lin, L2(), Retention('none'), form='wy', eta_transform='longhorn'),
    # Sun et al. 2024 (TTT): inner model x + LN(f(x)) with biases (f(x) = Wx + b for
    # TTT-Linear, a 2-layer GELU MLP with biases for TTT-MLP); no retention; mini-batch GD.
    'ttt_linear': make('ttt_linear', MLPMemory(depth=1, bias=True), L2(), Retention('none')),
    'ttt_mlp': make('ttt_mlp', MLPMemory(**_MLP2, bias=True), L2(), Retention('none')),
    # Behrouz et al. 2025 (Titans LMM): deep memory, momentum, weight decay.
    'titans': make(
      'titans', MLPMemory(**_MLP2), L2(), Retention('scalar'), Momentum(), decay_style='data'
    ),
    # Miras (Behrouz et al. 2025): Moneta (p, q) = (3, 4), Yaad (Huber), Memora (KL).
    'moneta': make(
      'moneta', MLPMemory(**_MLP2), Lp(p=3.0), Retention('scalar', 'lq', q=4.0), decay_style='data'
    ),
    # Yaad: Huber bias as Eq. 26 (per-token ℓ2 / ℓ1 switch; biases.Huber 'mask').
    'yaad': make('yaad', MLPMemory(**_MLP2), Huber(), Retention('scalar'), decay_style='data'),
    'memora': make(
      'memora', MLPMemory(**_MLP2), L2(), Retention('scalar', 'softmax'), decay_style='data'
    ),
  }


RULES: dict[str, Callable[..., MemoryRule]] = _zoo()

# ----------------------------------------------------------------------------------
# Rule options: the variants a model config selects by name (models/config.py). Each applies
# only to the rules that have the component (an option a rule lacks is ignored), so one config
# can hold them all.

MEMORA_FORMS = ('logits', 'lag')
# How the layer scales the momentum rules' step (layers/miras_params.py ``gate_values``).
MOMENTUM_FORMS = ('sum', 'ema')


def with_options(
  rule: MemoryRule,
  *,
  huber_mode: str | None = None,
  memora_form: str | None = None,
  ln_eps: float | None = None,
  retention_target: str | None = None,
  step_scale: str | None = None,
) -> MemoryRule:
  """``rule`` with its variant options applied.

  huber_mode   Yaad's bias (biases.Huber): 'mask' (Miras Eq. 26, the default), 'clip'
               (Eq. 14, per channel) or 'norm' (Eq. 15).
  memora_form  Memora's KL retention: 'logits' (the exact linear recurrence on the logits,
               reads linear steps inside a chunk) or 'lag' (the paper's chunked lag scheme,
               Eq. 30–32; retention.py). Identical at chunk size 1.
  ln_eps       the ε of an MLP memory's output LayerNorm, LN(z) = (z − μ)/√(var(z) + ε):
               it bounds the LayerNorm's gain by 1/√ε (architectures.MLPMemory).
  retention_target  what the scalar decay forgets towards: 'zero' (the papers: α_t A) or
               'initial' (α_t A + (1 − α_t) A_0, retention.py); for rules with a scalar decay
               and the identity or ℓq map (Titans, Moneta, Yaad).
  step_scale   the inner step: 'none' (the papers' η_t), 'implicit' (η_t/(1 + η̄_t λ_t), λ_t
               the curvature along the step) or 'implicit_chunk' (η_t/(1 + b η̄_t λ_t));
               ``step_factors``; for the deep memories with the identity or ℓq map (Titans,
               Moneta, Yaad, TTT).
  """
  if step_scale is not None and step_scale not in STEP_SCALES:
    raise ValueError(f'unknown step_scale {step_scale!r}; choose one of {STEP_SCALES}')
  if huber_mode is not None and isinstance(rule.bias, Huber):
    rule = rule.replace(bias=dataclasses.replace(rule.bias, mode=huber_mode))
  if memora_form is not None and rule.retention.map in ('softmax', 'softmax_lag'):
    if memora_form not in MEMORA_FORMS:
      raise ValueError(f'unknown memora_form {memora_form!r}; choose one of {MEMORA_FORMS}')
    m = 'softmax' if memora_form == 'logits' else 'softmax_lag'
    rule = rule.replace(retention=dataclasses.replace(rule.retention, map=m))
  if ln_eps is not None and getattr(rule.arch, 'layer_norm', False):
    if not ln_eps > 0:
      raise ValueError(f'ln_eps must be positive, got {ln_eps}')
    rule = rule.replace(arch=dataclasses.replace(rule.arch, ln_eps=float(ln_eps)))
  ret = rule.retention
  if (
    retention_target is not None
    and ret.decay == 'scalar'
    and ret.read_mode in ('identity', 'scale')
    and not rule.arch.is_linear
  ):
    rule = rule.replace(retention=dataclasses.replace(ret, target=retention_target))
  ok_map = rule.retention.read_mode in ('identity', 'scale')
  if step_scale is not None and not rule.arch.is_linear and ok_map:
    rule = rule.replace(step_scale=step_scale)
  return rule


def get_rule(name: str, **overrides) -> MemoryRule:
  if name not in RULES:
    raise ValueError(f'unknown memory rule {name!r}; known: {", ".join(sorted(RULES))}')
  return RULES[name](**overrides)


def list_rules() -> list[str]:
  return sorted(RULES)


__all__ = [
  'MemoryRule',
  'RULES',
  'get_rule',
  'list_rules',
  'with_options',
  'MEMORA_FORMS',
  'MOMENTUM_FORMS',
  'STEP_SCALES',
  'step_factors',
  'init_state',
  'fresh_state',
  'prepare_gates',
  'read_base',
  'LinearMemory',
  'MLPMemory',
  'DotProduct',
  'L2',
  'Lp',
  'Huber',
  'ValueShiftRobust',
  'Retention',
  'GD',
  'Momentum',
]
