"""``delta_rule``: the exact chunked (gated) delta rule — DeltaNet, Gated DeltaNet, Longhorn.

    S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ,   y_t = S_tᵀ q_t   (S reset to W_0 at a doc)

α_t a scalar per head and token (log_alpha None: α ≡ 1, DeltaNet). Longhorn is β_t = ε_t, the
caller's transformed step (miras_jax.memory.rules.prepare_gates). Exact for any chunk size.
One public function; the platform picks the lowering (platform.py).
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels import layout, platform
from pallas_kernels.delta_rule import tuned


def delta_rule(
  q,
  k,
  v,
  beta,
  log_alpha=None,
  *,
  segment_ids=None,
  reset=None,
  initial_state=None,
  reset_state=None,
  chunk_size: int | None = None,
  seg_chunks: int | None = None,
  backend: str = 'auto',
  interpret: bool | None = None,
  state_passing: str = 'sequential',
):
  """q, k [B, H, T, dk], v [B, H, T, dv], beta [B, H, T]; log_alpha [B, H, T] or None;
  segment_ids [B, T] or reset [B, H, T]; initial_state [B, H, dk, dv]; reset_state [H, dk, dv].
  Returns (y [B, H, T, dv] in q's dtype, final state [B, H, dk, dv] fp32).
  ``state_passing``: 'sequential' (the Pallas kernel: state on chip, chunk after chunk) or
  'associative' (log-depth ``jax.lax.associative_scan`` over the chunks' affine state maps, XLA;
  state_passing.py)."""
  if state_passing not in ('sequential', 'associative'):
    raise ValueError(f"state_passing must be 'sequential' or 'associative', got {state_passing!r}")
  B, H, T, dk = q.shape
  dv = v.shape[-1]
  if k.shape != q.shape or v.shape[:3] != q.shape[:3] or beta.shape != q.shape[:3]:
    raise ValueError(
      f'q, k, v must be [B, H, T, d] and beta [B, H, T]; '
      f'got {q.shape}, {k.shape}, {v.shape}, {beta.shape}'
    )
  if log_alpha is not None and log_alpha.shape != q.shape[:3]:
    raise ValueError(f'log_alpha has shape {log_alpha.shape}, expected {q.shape[:3]}')
  lowering, interp = platform.resolve(backend, interpret)
  c0, R0 = tuned.block_sizes(lowering, interp)
  c, R, Tp = layout.plan(T, chunk_size or c0, seg_chunks or R0)
  if reset is None:
    reset = layout.resets_from_segments(segment_ids, B, H, T)
  f32 = jnp.float32
  la = jnp.zeros((B, H, T), f32) if log_alpha is None else log_alpha.astype(f32)
  pad = lambda x: layout.pad_time(x, Tp)
  G, E, seg = layout.chunk_gates(pad(la[..., None]), None if reset is None else pad(reset), c)
  h0 = jnp.zeros((B, H, dk, dv), f32) if initial_state is None else initial_state.astype(f32)
  w0 = jnp.zeros((H, dk, dv), f32) if reset_state is None else reset_state.astype(f32)
  w0 = jnp.broadcast_to(w0[None], (B, H, dk, dv))
  toks = [pad(q), pad(k).astype(q.dtype), pad(v).astype(q.dtype)]
  toks += [pad(beta.astype(f32)[..., None]), G, E, seg]
  toks = [layout.flat(x) for x in toks]
  if state_passing == 'associative':
    from pallas_kernels.delta_rule.state_passing import chunk_scan

    core = lambda *a, R, interpret, **kw: chunk_scan(*a, **kw)
  elif lowering == 'gpu':
    from pallas_kernels.delta_rule.pallas_gpu import delta_rule_gpu as core
  else:
    from pallas_kernels.delta_rule.pallas_tpu import delta_rule_tpu as core
  y, hT = core(
    *toks,
    layout.flat(h0),
    layout.flat(w0),
    c=c,
    R=R,
    resets=reset is not None,
    interpret=interp,
  )
  y = y.reshape(B, H, Tp, dv)[:, :, :T].astype(q.dtype)
  return y, hT.reshape(B, H, dk, dv)
