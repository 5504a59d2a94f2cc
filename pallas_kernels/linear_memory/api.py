"""``linear_memory``: chunked matrix-memory recurrence with scalar or per-key-channel decay.

    S_t = Diag(α_t) S_{t−1} + η_t k_t v_tᵀ,   y_t = S_tᵀ q_t        (S reset to W_0 at a new doc)

covers linear attention (α ≡ 1, η ≡ 1), RetNet (fixed α per head), Mamba2 / SSD (data-dependent
scalar α, η = Δ), GLA (α ∈ R^{d_k} per token). One public function; the platform picks the
lowering (platform.py). Gradients for every input by the kernels' custom VJP.
"""

from __future__ import annotations

import jax.numpy as jnp

from pallas_kernels import layout, platform
from pallas_kernels.linear_memory import tuned


def linear_memory(
  q,
  k,
  v,
  eta=None,
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
  """q, k [B, H, T, dk], v [B, H, T, dv]; eta [B, H, T] (None: 1); log_alpha [B, H, T] (scalar)
  or [B, H, T, dk] (channel) or None (no decay); segment_ids [B, T] or reset [B, H, T] (1 at a
  document start; position 0 never resets); initial_state [B, H, dk, dv] (None: zeros);
  reset_state W_0 [H, dk, dv] (None: zeros).
  Returns (y [B, H, T, dv] in q's dtype, final state [B, H, dk, dv] fp32).
  Matmul operands are in q's dtype (bf16 in → bf16 MXU inputs), accumulation and state fp32.
  ``state_passing``: 'sequential' (the Pallas kernel: state on chip, chunk after chunk) or
  'associative' (log-depth ``jax.lax.associative_scan`` over chunk states, XLA; state_passing.py).
  """
  if state_passing not in ('sequential', 'associative'):
    raise ValueError(f"state_passing must be 'sequential' or 'associative', got {state_passing!r}")
  B, H, T, dk = q.shape
  dv = v.shape[-1]
  if k.shape != q.shape or v.shape[:3] != q.shape[:3]:
    raise ValueError(f'q, k, v must be [B, H, T, d]; got {q.shape}, {k.shape}, {v.shape}')
  lowering, interp = platform.resolve(backend, interpret)
  channel = log_alpha is not None and log_alpha.ndim == 4
  if channel and log_alpha.shape != (B, H, T, dk):
    raise ValueError(f'log_alpha has shape {log_alpha.shape}, expected {(B, H, T, dk)}')
  c0, R0 = tuned.block_sizes(channel, lowering, interp)
  c, R, Tp = layout.plan(T, chunk_size or c0, seg_chunks or R0)
  if reset is None:
    reset = layout.resets_from_segments(segment_ids, B, H, T)
  resets = reset is not None
  f32 = jnp.float32
  vh = v.astype(f32) if eta is None else v.astype(f32) * eta.astype(f32)[..., None]
  la = jnp.zeros((B, H, T, 1), f32) if log_alpha is None else log_alpha.astype(f32)
  if not channel:
    la = la.reshape(B, H, T, 1)
  pad = lambda x: layout.pad_time(x, Tp)
  G, E, seg = layout.chunk_gates(pad(la), None if reset is None else pad(reset), c)
  h0 = jnp.zeros((B, H, dk, dv), f32) if initial_state is None else initial_state.astype(f32)
  w0 = jnp.zeros((H, dk, dv), f32) if reset_state is None else reset_state.astype(f32)
  w0 = jnp.broadcast_to(w0[None], (B, H, dk, dv))
  toks = [pad(q), pad(k).astype(q.dtype), pad(vh).astype(q.dtype), G, E, seg]
  toks = [layout.flat(x) for x in toks]
  if state_passing == 'associative':
    from pallas_kernels.linear_memory.state_passing import chunk_scan

    core = lambda *a, R, interpret, **kw: chunk_scan(*a, **kw)
  elif lowering == 'gpu':
    from pallas_kernels.linear_memory.pallas_gpu import linear_memory_gpu as core
  else:
    from pallas_kernels.linear_memory.pallas_tpu import linear_memory_tpu as core
  y, hT = core(
    *toks,
    layout.flat(h0),
    layout.flat(w0),
    c=c,
    R=R,
    channel=channel,
    resets=resets,
    interpret=interp,
  )
  y = y.reshape(B, H, Tp, dv)[:, :, :T].astype(q.dtype)
  return y, hT.reshape(B, H, dk, dv)
