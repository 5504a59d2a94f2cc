"""The associative-scan form of the general chunk's in-chunk steps (issue 13, "Scope"), and the
per-platform choice between it and the masked-matmul (dual) form.

Inside a chunk every gradient is taken at the chunk-start memory (chunked.py), so the steps
taken since the segment's base obey linear first-order recurrences in the per-token gradients
g_t = δ_t ⊗ h_t (one [o, i] matrix per layer and token):

    plain GD   M_t = α'_t M_{t−1} − η_t g_t
    momentum   S_t = μ'_t S_{t−1} − η_t g_t,   M_t = α'_t M_{t−1} + act_t S_t    (Titans' rule)

with α'_t = α_t (1 − reset_t), μ'_t = μ_t (1 − reset_t): a document start zeroes the decay gates
(as google-deepmind/recurrentgemma does for its RG-LRU at segment starts), so no step crosses a
reset and the carried momentum S' is dropped there; act_t is 0 on padding slots (μ = 1 there, so
S stands still but must not be summed again). M_0 = 0 and S_{−1} = S' (the carried momentum),
i.e. M_t = Σ_i C[t, i] g_i + d_t S' of chunked.py's dual form. Each token is an affine map of
the pair (M, S) with the scalar upper-triangular transition [[α', act·μ'], [0, μ']]; their
composition is associative, so ``jax.lax.associative_scan`` gives every M_t (and S_t) in log
depth (Blelloch 1990). The read of token t is then M_t h_t — per-token weights, where the
matmul form forms (C ⊙ H_q H_kᵀ) Δ without them (ttt-lm-jax's dual form); the chunk's last M, S
are the primal update.

Which rules: every rule of the general chunk (chunked.py ``_chunk_general``: Titans, Moneta,
Yaad, Memora in both forms, TTT-Linear / TTT-MLP, and the linear memories with a scalar or no
decay — linear attention, RetNet, Mamba2). Their non-linear retention maps (Moneta's ℓq, Memora's
softmax) act only at chunk boundaries; inside a chunk the read is linear in M_t (rules.py
``read_base``), and Memora's lag token is taken before the linear rest (chunked._lag_token). Not
covered: the WY delta rules (DeltaNet, Gated DeltaNet, Longhorn), whose gradient is taken at the
current memory, so the map W ↦ W (I − β k kᵀ) + β v kᵀ has a [d, d] matrix transition (a scan
would compose d × d matrices, O(d³) per combine, where the UT transform solves one triangular
system), and GLA's channel-wise decay (its own chunk, chunked._chunk_channel, already tiled).

Cost: the scan materialises b per-token step matrices per layer (b·o·i floats, twice with
momentum) and does ≈ 2b combines of them, against the matmul form's [b, b] products; which is
faster is a property of the platform (``AUTO``, measured by ``scripts/bench_memory.py
--compare_inner_form``; on CPU the scan form is 35–70× slower, benchmarks/README.md).

The Pallas deep-memory kernel (pallas_kernels/mlp_memory) keeps the matmul form:
``jax.lax.associative_scan`` inside a Mosaic kernel does not lower (tried for v5e, b = 16: its
odd/even recursion makes zero-size slices, "vector types must have positive constant sizes"), and
the kernel's operands carry the gates' prefix sums, not the per-token gates the scan needs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

INNER_FORMS = ('auto', 'matmul', 'scan')

# 'auto' per platform (the key is jax.default_backend(); 'tpu' also when compiling ahead of time
# for a TPU from another host). CPU: measured, benchmarks/README.md "In-chunk form" (T = 2048,
# head dim 64, chunk 16 and 64). GPU, TPU: NOT MEASURED, so the established matmul form.
AUTO = {
  'cpu': 'matmul',
  'gpu': 'matmul',  # unmeasured
  'tpu': 'matmul',  # unmeasured
}


def resolve_inner_form(inner_form: str) -> str:
  """'matmul' | 'scan' for a call: ``inner_form`` itself, or the platform's entry of ``AUTO``."""
  if inner_form not in INNER_FORMS:
    raise ValueError(f'unknown inner_form {inner_form!r}; choose one of {INNER_FORMS}')
  if inner_form != 'auto':
    return inner_form
  # Lazy: miras_jax.layers imports the memory core.
  from miras_jax.layers.attention_backends.pallas_tpu.interpret import COMPILE_FOR_TPU

  platform = 'tpu' if COMPILE_FOR_TPU.get() else jax.default_backend()
  return AUTO.get(platform, 'matmul')


def _col(c):
  return c[:, None]


def _compose_gd(e, l):
  """Maps e (earlier tokens) then l (later): M ↦ α_l (α_e M + M_e) + M_l."""
  (a_e, m_e), (a_l, m_l) = e, l
  return a_l * a_e, _col(a_l) * m_e + m_l


def _compose_momentum(e, l):
  """The same for (M, S) with the transition [[α, c], [0, μ]] (module doc)."""
  (a_e, c_e, u_e, m_e, s_e), (a_l, c_l, u_l, m_l, s_l) = e, l
  m = _col(a_l) * m_e + _col(c_l) * s_e + m_l
  s = _col(u_l) * s_e + s_l
  return a_l * a_e, a_l * c_e + c_l * u_e, u_l * u_e, m, s


def chunk_steps(deltas, inputs, eta, la, reset, active, lm=None, s0=None):
  """Per-token steps of one chunk by an associative scan over its tokens.

  deltas, inputs: per layer, [b, o] and [b, i] (g_t = δ_t ⊗ h_t at the gradient point);
  eta, la, reset, active, lm: [b] (η, log α, document start, real token, log μ or None);
  s0: per layer [o, i], the carried momentum S' (with ``lm``).
  Returns (M, S): per layer [b, o, i], M_t = Σ_i C[t, i] g_i + d_t S' (chunked.py), and the
  momentum S_t (None without momentum)."""
  b = eta.shape[0]
  shapes = [(d.shape[1], h.shape[1]) for d, h in zip(deltas, inputs)]
  # All layers' step matrices side by side as one [b, Σ o·i] array: the scan's element-wise
  # combines then run once per level, not once per layer (fewer, larger ops).
  flat = lambda ms: jnp.concatenate([m.reshape(m.shape[0], -1) for m in ms], axis=1)

  def unflat(x):
    out, at = [], 0
    for o, i in shapes:
      out.append(x[:, at : at + o * i].reshape(b, o, i))
      at += o * i
    return out

  keep = 1.0 - reset
  alpha = jnp.exp(la) * keep
  u = _col(-eta) * flat([d[:, :, None] * h[:, None, :] for d, h in zip(deltas, inputs)])
  if lm is None:
    _, m = jax.lax.associative_scan(_compose_gd, (alpha, u))
    return unflat(m), None
  mu = jnp.exp(lm) * keep
  # The carried momentum enters as token 0's increment (S_0 = μ'_0 S' − η_0 g_0), so the scan's
  # prefix of increments is the state itself. A row mask, not a scatter (Mosaic has none).
  first = jax.lax.broadcasted_iota(jnp.int32, mu.shape, 0) == 0
  mu_0 = jnp.where(first, mu, 0.0)
  s_inc = u + _col(mu_0) * flat([s[None] for s in s0])
  m_inc = _col(active) * s_inc
  _, _, _, m, s = jax.lax.associative_scan(
    _compose_momentum, (alpha, active * mu, mu, m_inc, s_inc)
  )
  return unflat(m), unflat(s)
