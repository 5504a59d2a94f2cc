"""In-chunk coefficients of the chunk-parallel memory (memory/chunked.py, DESIGN §4).

For token t of a chunk, A_t = a_t A' + d_t S' + Σ_{i ≤ t} C[t, i] g_i: the decay ``a`` from
the segment's base, the coefficients ``C`` (and with momentum ``d``, ``Cs``, ``sdec``), built
from per-token prefix sums of the gates in log space, so every exponent is a difference
cum_t − cum_i ≤ 0 and extreme gates cannot overflow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ['coefficients', 'chunk_sums', 'coefficients_from_sums']


def _masked_exp(diff, mask):
  # exp only where the mask holds: masked entries get exp(0)·0, never exp(±large), so
  # neither the value nor its gradient can overflow.
  return jnp.where(mask, jnp.exp(jnp.where(mask, diff, 0.0)), 0.0)


def coefficients(la, eta, reset, active, lm=None):
  """In-chunk coefficients. la [b] or [b, dk] (log keep factor), eta [b], reset [b],
  active [b], lm [b] (log momentum decay) or None.

  Returns a dict: cont [b] (token continues the carried segment), M [b, b] (same segment
  and i ≤ t), a [b](, dk) (decay from the segment's base), Dw [b, b](, dk) (decay i → t),
  C [b, b] (coefficient of g_i in A_t), and with momentum d [b] (coefficient of S'),
  Cs [b, b], sdec [b] (the same for S_t).
  """
  return coefficients_from_sums(chunk_sums(la, reset, lm), eta, active)


def chunk_sums(la, reset, lm=None):
  """The prefix sums behind ``coefficients``, per token: segl [b] (resets up to t), cum
  [b](, dk) (Σ_{i ≤ t} log α_i), log_a [b](, dk) (log decay from t's segment base), cm [b] or
  None (Σ_{i ≤ t} log μ_i). The Pallas deep-memory kernel takes these as inputs and builds the
  [b, b] coefficients on chip (``coefficients_from_sums``)."""
  b = reset.shape[0]
  idx = jnp.arange(b)
  segl = jnp.cumsum(reset)
  M = (segl[:, None] == segl[None, :]) & (idx[None, :] <= idx[:, None])
  is_start = (reset > 0) | (idx == 0)
  cum = jnp.cumsum(la, axis=0)
  cum_ex = cum - la
  start_sel = M & is_start[None, :]
  start_sel = start_sel[..., None] if la.ndim == 2 else start_sel
  start_ex = jnp.sum(jnp.where(start_sel, cum_ex[None], 0.0), axis=1)
  cm = None if lm is None else jnp.cumsum(lm)
  return dict(segl=segl, cum=cum, log_a=cum - start_ex, cm=cm)


def coefficients_from_sums(sums, eta, active):
  """``coefficients`` from ``chunk_sums``: element-wise ops, iota masks and matmuls only (so it
  also runs inside a Mosaic kernel)."""
  segl, cum = sums['segl'], sums['cum']
  b = segl.shape[0]
  t_idx = jax.lax.broadcasted_iota(jnp.int32, (b, b), 0)
  i_idx = jax.lax.broadcasted_iota(jnp.int32, (b, b), 1)
  cont = segl == 0
  M = (segl[:, None] == segl[None, :]) & (i_idx <= t_idx)
  chan = cum.ndim == 2
  Mx = M[..., None] if chan else M
  a = jnp.exp(sums['log_a'])
  Dw = _masked_exp(cum[:, None] - cum[None, :], Mx)
  out = dict(cont=cont, M=M, a=a, Dw=Dw)
  if chan:
    return out
  if sums['cm'] is None:
    out['C'] = Dw * (-eta)[None, :]
    return out
  cm = sums['cm']
  Ds = _masked_exp(cm[:, None] - cm[None, :], M)
  Cs = Ds * (-eta)[None, :]
  sdec = jnp.exp(cm) * cont
  DwA = Dw * active[None, :]
  # d = DwA · sdec as a masked row sum, not a matrix-vector product (the same c² products, summed
  # in another order): the VJP of a matvec is an outer product (a dot_general with no contracting
  # dimension), which Mosaic cannot lower, and Triton's dot takes 2-D operands only — the deep-
  # memory kernels build these coefficients on chip and trace their VJP there (jax 0.10.2).
  out.update(C=DwA @ Cs, d=jnp.sum(DwA * sdec[None, :], axis=1), Cs=Cs, sdec=sdec)
  return out
