"""One chunk of the exact (gated) delta rule by the UT / WY transform, shared by the TPU and GPU
kernels.

Recurrence (state S [dk, dv]; Gated DeltaNet, Yang et al. 2025, eq. 10; DeltaNet α ≡ 1):
    S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   y_t = S_tᵀ q_t,
S reset to W_0 at a document start. Writing S_t = a_t B + Σ_{i ≤ t} e^{G_t − G_i} k_i u_iᵀ over a
chunk (B the chunk's base state, a_t = e^{E_t}), the new values u solve the unit lower-triangular
system (Yang et al. 2024, "Parallelizing Linear Transformers with the Delta Rule", §3.2)

    (I + Diag(β) (K Kᵀ ⊙ Γ ⊙ strict)) U = Diag(β) (V − Diag(a) K B),   Γ[t, i] = e^{G_t − G_i},

solved here by the blockwise inverse of tri_inverse.py, and then

    y = Diag(a) Q B + (Q Kᵀ ⊙ Γ ⊙ causal) U,    S_c = a_c B + (K ⊙ Γ[c, :]ᵀ)ᵀ U.

Γ and the masks also carry the document structure (only same-document pairs interact).
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels.chunk_math import F32, last_row, masked_exp, masks, mm, mm_nt, mm_tn
from pallas_kernels.tri_inverse import unit_lower_inverse


def delta_chunk(x, S0, W0, *, resets: bool, dtype):
  """x = (q [c, dk], k [c, dk], v [c, dv], β [c, 1], G [c, 1], E [c, 1], seg [c, 1]);
  S0, W0 [dk, dv] f32. Returns (y [c, dv] f32, S1 [dk, dv] f32)."""
  q, k, v, beta, G, E, seg = x
  M, strict, last = masks(seg)
  cont = seg == 0
  a = jnp.exp(E)
  sk = mm(k, S0, dtype)
  sq = mm(q, S0, dtype)
  if resets:
    sk = jnp.where(cont, sk, mm(k, W0, dtype))
    sq = jnp.where(cont, sq, mm(q, W0, dtype))
  gam = masked_exp(G - G.T, M)
  n = jnp.where(strict, beta * mm_nt(k, k, dtype) * gam, 0.0)
  rhs = beta * (v.astype(F32) - a * sk)
  # The solve stays fp32: its error feeds the state of every later token.
  U = mm(unit_lower_inverse(n), rhs, F32)
  y = a * sq + mm(mm_nt(q, k, dtype) * gam, U, dtype)
  w = masked_exp(last_row(G) - G, last)  # [c, 1]
  base = S0
  if resets:
    base = jnp.where(last_row(seg) == 0, S0, W0)
  S1 = jnp.exp(last_row(E)) * base + mm_tn(k.astype(F32) * w, U, dtype)
  return y, S1
