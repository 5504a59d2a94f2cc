"""One chunk of the linear matrix memory, shared by the TPU and GPU kernels.

Recurrence (state S [dk, dv], the transpose of the XLA path's A [dv, dk]):
    S_t = Diag(α_t) S_{t−1} + k_t v̂_tᵀ,   y_t = S_tᵀ q_t,   v̂_t = η_t v_t,
α_t a scalar per head (linear attention α ≡ 1, RetNet, Mamba2) or a vector over the key
channels (GLA), and S reset to W_0 at a document start. Over a chunk (layout.py for G, E, seg):

    y_t  = exp(E_t) ⊙ q_t · B_t + Σ_{i ≤ t, same doc} (Σ_c q_tc k_ic e^{G_tc − G_ic}) v̂_i
    S_c  = exp(E_c) ⊙ B_c + Σ_{i same doc as c} (k_i ⊙ e^{G_c − G_i}) ⊗ v̂_i

with B_t the carried state S0 (no reset yet in the chunk) or W_0 (Yang et al. 2024, GLA §4;
Dao & Gu 2024, SSD §6, for the scalar case). Every exponent is a non-positive difference (stable
without clipping); the channel case computes its scores row by row (VPU, c²·dk per chunk), so its
chunk is kept small (tuned.py).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from pallas_kernels.chunk_math import F32, last_row, masked_exp, masks, mm, mm_nt, mm_tn, row


def _channel_scores_t(q, k, G, seg, slicing):
  """Pᵀ [c, c] with P[t, i] = Σ_ch q_t,ch k_i,ch e^{G_t,ch − G_i,ch} for same-document i ≤ t.

  One query row at a time (a static loop over the chunk) so every value stays 2-D: Mosaic does
  not lay out the [c, c, dk] decay tensor. Column t of Pᵀ is built with a lane mask. VPU work
  c²·dk per chunk; fla's two-level chunk_gla moves the off-diagonal sub-blocks onto the MXU with
  a reference point between them (fla-org/flash-linear-attention fla/ops/gla/chunk.py) — the
  tuning step for the GPU/TPU session. ``slicing=False`` (Triton) takes each row t by
  ``chunk_math.row``, a masked sum: 2·c·dk more VPU work per row, exact."""
  c = q.shape[0]
  take = (lambda x, t: x[t : t + 1]) if slicing else row
  i_col = jax.lax.broadcasted_iota(jnp.int32, (c, 1), 0)
  lane = jax.lax.broadcasted_iota(jnp.int32, (c, c), 1)
  PT = jnp.zeros((c, c), F32)
  for t in range(c):
    m = (i_col <= t) & (seg == take(seg, t))  # [c, 1]: tokens i that t reads
    kd = k * masked_exp(take(G, t) - G, m)
    col = jnp.sum(kd * take(q, t), axis=1, keepdims=True)  # [c, 1] = P[t, :]ᵀ
    PT = PT + jnp.where(lane == t, col, 0.0)
  return PT


def linear_chunk(x, S0, W0, *, channel: bool, resets: bool, dtype, slicing: bool = True):
  """x = (q [c, dk], k [c, dk], v̂ [c, dv], G [c, g], E [c, g], seg [c, 1]); S0, W0 [dk, dv] f32.
  g = dk (channel decay) or 1. Returns (y [c, dv] f32, S1 [dk, dv] f32). ``slicing``: whether the
  lowering slices values (Mosaic, XLA: yes; Triton: no)."""
  q, k, vh, G, E, seg = x
  M, _, last = masks(seg)
  cont = seg == 0
  a = jnp.exp(E)
  if channel:
    qa = q.astype(F32) * a
    yb = mm(qa, S0, dtype)
    if resets:
      yb = jnp.where(cont, yb, mm(qa, W0, dtype))
    PT = _channel_scores_t(q.astype(F32), k.astype(F32), G, seg, slicing)
  else:
    yb = mm(q, S0, dtype)
    if resets:
      yb = jnp.where(cont, yb, mm(q, W0, dtype))
    yb = a * yb
    P = mm_nt(q, k, dtype) * masked_exp(G - G.T, M)
  y = yb + (mm_tn(PT, vh, dtype) if channel else mm(P, vh, dtype))

  w = masked_exp(last_row(G) - G, last)  # decay from token i to the chunk end, [c, g]
  base = S0
  if resets:
    base = jnp.where(last_row(seg) == 0, S0, W0)
  ae = jnp.exp(last_row(E))  # [1, g]
  decayed = base * (ae.T if channel else ae)
  S1 = decayed + mm_tn(k.astype(F32) * w, vh, dtype)
  return y, S1
