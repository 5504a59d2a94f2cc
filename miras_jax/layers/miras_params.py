"""The Miras layer's parameters: its data-dependent gates and the memory's outer-loop
parameters (layers/miras.py builds them in ``MirasLayer.setup`` and reads them here).

Gates (Miras §5 "data-dependent, from low-rank projections"; activations and initialisation are
not given in the paper — miras-math.md "Gates" — so these are our choices):
  η (learning rate)     η = eta_max · sigmoid(U_η D_η x + b_η), b_η = ``eta_bias_init``
                        (η ≡ 1 and no gate for rules with ``eta_style == 'one'``: linear
                        attention, RetNet, GLA).
  α (retention keep)    log α = log_sigmoid(U_α D_α x + b_α), b_α initialised per head (per key
                        channel for GLA) so that α spans ``alpha_init`` = (0.99, 0.999).
                        RetNet (``decay_style == 'fixed'``): α_h = γ_h = 1 − 2^(−5−h), a
                        constant per head with no data dependence (Sun et al. 2023, §2.2).
  μ (momentum decay)    log μ = log_sigmoid(U_μ D_μ x + b_μ), μ ≈ ``mu_init`` at init
                        (Titans eq. 10's η_t; only for momentum rules). ``momentum_form``
                        'ema' hands the core η_t (1 − μ_t) instead of η_t: the momentum is
                        then an average of the gradients, each gradient's total weight is
                        ≤ η_t instead of η_t / (1 − μ_t) (10× at μ = 0.9).
  δ (Huber threshold)   δ = softplus(U_δ D_δ x + b_δ), δ ≈ ``delta_init`` at init (Yaad), per
                        head ([B, H, T]), or per value channel with ``channel_delta``
                        ([B, H, T, D]). With Yaad's Eq. 26 (``huber_mode`` 'mask') a per-channel
                        δ switches per token on ‖e ⊘ δ_t‖ ≤ 1 and steps δ_t ⊙ sign(e) outside;
                        'clip' (Eq. 14) tests each channel; 'norm' (Eq. 15) uses δ's first
                        channel (memory/biases.py ``Huber``).
All gates are computed in float32 and passed to the memory core in log space where it wants it.

Outer-loop parameters of the memory (miras-math.md "Memory architectures"): the initial memory
``W_0`` per head (``w0_<l>`` [H, out, in]; zero for linear memories, fan-in normal for MLP ones;
Memora: ``W_0 = c · softmax(raw)`` over each row so that the memory starts on the scaled
simplex its KL retention needs, raw ~ N(0, ``simplex_w0_std``²)) and the MLP memory's LayerNorm
scale/bias (``outer_<name>`` [H, D]). Memora's logits need a spread: with near-uniform rows
(std 0.02) every output channel of the memory is the same average of its input, the
pre-LayerNorm activations vary across channels by ~1e-7 at D = 64, the memory contributes
nothing at initialisation and the LayerNorm's 1/√eps gain amplifies its gradients ~1000×;
std 2 gives a spread of 2e-2 at D = 16 and 6e-3 at D = 64 and a LayerNorm output of unit
scale (scripts/bench_bptt.py prints it).

The MLP memory's output LayerNorm, LN(z) = (z − μ)/√(var(z) + ε) (Titans §3.1, Miras §5: the
papers print no ε), uses ε = ``ln_eps`` = 1 here, not the usual 1e-6: its gain 1/√(var + ε) is
then at most 1 whatever the memory's state (issue 10 §3, benchmarks/README.md "Back-propagation
through the memory"). With 1e-6 the gain is unbounded and set by the memory's scale: at
initialisation the keys are unit vectors, so with fan-in weights the pre-LayerNorm activations
have std ≈ 1/(2√D) (gain ≈ 2√D); forgetting shrinks the last layer further (α^T, and the
LayerNorm hides it from the forward pass), and Memora's simplex rows make them nearly constant.
The inner gradient scales with the gain and its linearisation (what the outer gradient goes
back through, chunk after chunk) with its square, so the exact gradient through thousands of
tokens overflowed unless the gates forgot little; a learned gate could move back there.
With ε = 1 a shrinking memory fades into the residual (the read is k + (z − μ)/√(var + 1))
instead of being rescaled; where var(z) ≫ 1 it is the usual LayerNorm. The learned LayerNorm
scale (``outer_ln_scale``) can still raise the memory's contribution.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from miras_jax.memory.rules import MOMENTUM_FORMS, MemoryRule

SIMPLEX_MAPS = ('softmax', 'softmax_lag')  # Memora: W_0 parametrised on the scaled simplex


def _logit(p: float) -> float:
  return math.log(p) - math.log1p(-p)


def _softplus_inv(y: float) -> float:
  return math.log(math.expm1(y))


def retnet_log_gamma(num_heads: int) -> jax.Array:
  """RetNet's fixed per-head decay, log(1 − 2^(−5−h)) for h = 0..H−1 (float32 [H])."""
  h = jnp.arange(num_heads, dtype=jnp.float32)
  return jnp.log1p(-jnp.exp2(-5.0 - h))


def to_bht(g: jax.Array) -> jax.Array:
  """[B, T, H(, c)] -> [B, H, T(, c)] (and back: the swap is its own inverse)."""
  return jnp.swapaxes(g, 1, 2)


def gate_specs(
  rule: MemoryRule,
  num_heads: int,
  head_dim: int,
  *,
  eta_bias_init: float,
  alpha_init: tuple[float, float],
  mu_init: float,
  delta_init: float,
  channel_delta: bool,
) -> dict[str, tuple[int | None, jax.Array]]:
  """The learned gates of ``rule``: name -> (channels per head or None, bias init [H(, c)]),
  in the order their parameters are created ('eta', 'alpha', 'mu', 'delta')."""
  uses = rule.uses
  H, D = num_heads, head_dim
  specs = {}
  if uses['eta']:
    specs['eta'] = (None, jnp.full((H,), eta_bias_init, jnp.float32))
  if uses['log_alpha'] and rule.decay_style != 'fixed':
    lo, hi = (_logit(p) for p in alpha_init)
    if rule.retention.decay == 'channel':
      b = jnp.linspace(lo, hi, H * D, dtype=jnp.float32).reshape(H, D)
      specs['alpha'] = (D, b)
    else:
      specs['alpha'] = (None, jnp.linspace(lo, hi, H, dtype=jnp.float32))
  if uses['log_mu']:
    specs['mu'] = (None, jnp.full((H,), _logit(mu_init), jnp.float32))
  if uses['delta']:
    c = D if channel_delta else None
    shape = (H,) if c is None else (H, c)
    specs['delta'] = (c, jnp.full(shape, _softplus_inv(delta_init), jnp.float32))
  return specs


def gate_values(
  rule: MemoryRule,
  lowrank: Callable[[str], jax.Array],
  names: Any,
  eta_max: float,
  shape,
  momentum_form: str = 'sum',
) -> dict[str, jax.Array]:
  """Gates as the memory core wants them: dict of float32 [B, H, T(, c)].

  ``lowrank(name)`` is the gate's pre-activation U D x + b, float32 [B, T, H(, c)]; ``names``
  the learned gates (`gate_specs`'s keys); ``shape`` = (B, T, H); ``momentum_form`` 'ema' hands
  the core η_t (1 − μ_t) for momentum rules (the module docstring).
  """
  if momentum_form not in MOMENTUM_FORMS:
    raise ValueError(f'unknown momentum_form {momentum_form!r}; choose one of {MOMENTUM_FORMS}')
  B, T, H = shape
  g = {}
  if 'eta' in names:
    g['eta'] = to_bht(eta_max * jax.nn.sigmoid(lowrank('eta')))
  if rule.uses['log_alpha']:
    if rule.decay_style == 'fixed':
      g['log_alpha'] = jnp.broadcast_to(retnet_log_gamma(H)[None, :, None], (B, H, T))
    else:
      g['log_alpha'] = to_bht(jax.nn.log_sigmoid(lowrank('alpha')))
  if 'mu' in names:
    g['log_mu'] = to_bht(jax.nn.log_sigmoid(lowrank('mu')))
    if momentum_form == 'ema' and 'eta' in g:  # θ_t (1 − μ_t), 1 − μ = −expm1(log μ)
      g['eta'] = g['eta'] * -jnp.expm1(g['log_mu'])
  if 'delta' in names:
    g['delta'] = to_bht(jax.nn.softplus(lowrank('delta')))
  return g


def w0_initializer(rule: MemoryRule, layer: int, num_heads: int, head_dim: int, simplex_std: float):
  """Initializer of the raw initial memory ``w0_<layer>`` [H, out, in]: the architecture's
  per-head init, or Memora's logits ~ N(0, simplex_std²) (W_0 = c · softmax(raw))."""
  arch = rule.arch
  H, D = num_heads, head_dim
  softmax_w0 = rule.retention.map in SIMPLEX_MAPS

  def init(key, shape, dtype):
    if softmax_w0:  # raw logits of W_0 = c · softmax(raw), spread: see the module docstring
      return simplex_std * jax.random.normal(key, shape, dtype)
    keys = jax.random.split(key, H)
    return jax.vmap(lambda kk: arch.init_weights(kk, D, D, dtype)[layer])(keys)

  return init


def memory_params(rule: MemoryRule, w0_raw, outer) -> tuple[tuple[jax.Array, ...], dict]:
  """(W_0 per layer [H, out, in], outer params [H, D]) in float32 from the raw parameters."""
  w0 = tuple(jnp.asarray(w, jnp.float32) for w in w0_raw)
  if rule.retention.map in SIMPLEX_MAPS:
    w0 = tuple(rule.retention.scale_c * jax.nn.softmax(w, axis=-1) for w in w0)
  return w0, {n: jnp.asarray(v, jnp.float32) for n, v in outer.items()}
