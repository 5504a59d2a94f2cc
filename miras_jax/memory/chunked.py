"""Chunk-parallel memory (the ``xla`` implementation, DESIGN §4).

The sequence is cut into chunks of b tokens. Inside a chunk every accumulator recurrence
is linear with gradients taken at the chunk-start memory, so for token t of a chunk

    A_t = a_t A' + d_t S' + Σ_{i ≤ t} C[t, i] g_i,     g_i = Σ_l δ_l,i ⊗ h_l−1,i

with a_t, d_t, C built from the gates in log space (every exponent is a difference
cum_t − cum_i ≤ 0, so extreme gates cannot overflow). The memory read at the query is
then computed layer by layer *without materialising per-token weights* (TTT "dual form"):

    z_l = a ⊙ (H_q B_lᵀ) + s_l · [ d ⊙ (H_q S_lᵀ) + (C ⊙ H_q H_kᵀ) Δ_l ]

and the state is updated once per chunk in primal form. (``inner_form='scan'``: the same steps
M_t = Σ_i C[t, i] g_i + d_t S' as per-token matrices by an associative scan over the chunk's
tokens, chunk_scan.py; the read is then M_t h_t. Same values; the faster form is per platform.)
A ``lax.scan`` runs over chunks in segments of ``remat_group`` chunks whose start states are the
backward's only residuals, so activation memory grows as T/(b·group): the deep memories
(``recompute_backward``) by the reverse-recompute VJP of chunk_vjp.py, the linear ones by autodiff
of ``jax.checkpoint``ed groups.

Documents: tokens after a reset in a chunk take their gradients at, and read from, the
initial memory W_0 and never see earlier tokens (segment-equality mask in C). Inactive
slots (front padding to continue a state mid-chunk, tail padding to a whole chunk) have
η = 0, log α = 0 and add nothing, so the state at the last real token is exact.

Three chunk kernels: ``_chunk_general`` (any architecture / bias / scalar retention /
momentum), ``_chunk_channel`` (linear memory with channel-wise decay, GLA) and
``_chunk_wy`` (the exact delta rule by the UT/WY transform).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.scipy.linalg import solve_triangular

from miras_jax.memory import common
from miras_jax.memory.architectures import (
  backprop,
  input_gram,
  keys_forward,
  layer_input,
  linear,
  outer_sum,
)
from miras_jax.memory.chunk_scan import chunk_steps, resolve_inner_form
from miras_jax.memory.chunk_vjp import segment_scan
from miras_jax.memory.coefficients import (  # noqa: F401 (re-exported: pallas_kernels/mlp_memory)
  chunk_sums,
  coefficients,
  coefficients_from_sums,
)
from miras_jax.memory.rules import MemoryRule, read_base, step_factors


def _last(x):
  """``x[-1]`` (along axis 0), slice-free (common.take_row: this runs inside the GPU kernel)."""
  return common.take_row(x, x.shape[0] - 1)


def _sel(cont, x_c, x_0):
  return jnp.where(cont.reshape(cont.shape + (1,) * (x_c.ndim - 1)), x_c, x_0)


def _key_factors(rule, wg, w0g, k, v, delta, outer, cont, resets):
  """Per-token gradient factors at the token's gradient point (Wg, or W_0 after a reset).

  Returns (deltas, inputs) lists over layers, each [b, d], and the output gradients u [b, dv]."""
  arch, bias = rule.arch, rule.bias

  def at(w):
    p, cache = keys_forward(arch, w, k, outer)
    u = bias.grad(p, v, delta)
    return backprop(arch, w, k, outer, cache, u) + (u,)

  dl, hl, u = at(wg)
  if resets:
    dl0, hl0, u0 = at(w0g)
    dl = [_sel(cont, x, y) for x, y in zip(dl, dl0)]
    hl = [_sel(cont, x, y) for x, y in zip(hl, hl0)]
    u = _sel(cont, u, u0)
  return dl, hl, u


def _lag_token(rule: MemoryRule, st, x, fresh, outer):
  """Memora's lag scheme (retention.py 'lag'): the chunk's first slot takes the exact KL step
  from the boundary memory when the chunk starts here (state at pos 0, slot active).

  Returns (st, x) for the linear dual form of the rest: the state's weights and gradient
  point become the lag weights W_s, and slot 0 no longer decays or writes (its step is in W_s).
  A reset at slot 0 is applied to the state first (the lag step then starts from W_0).
  """
  arch, ret = rule.arch, rule.retention
  st = common.tree_where(x['reset'][0] > 0, dict(fresh, pos=st['pos']), st)
  lag = (st['pos'] == 0) & (x['active'][0] > 0)
  k0, v0 = x['k'][:1], x['v'][:1]
  d0 = None if x['delta'] is None else x['delta'][:1]
  p, cache = keys_forward(arch, st['Wg'], k0, outer)
  deltas, hs = backprop(arch, st['Wg'], k0, outer, cache, rule.bias.grad(p, v0, d0))
  w_lag = tuple(
    ret.lag_step(w, x['la'][0], x['eta'][0], d.T @ h) for w, d, h in zip(st['Wg'], deltas, hs)
  )
  st = dict(
    st, A=common.tree_where(lag, w_lag, st['A']), Wg=common.tree_where(lag, w_lag, st['Wg'])
  )
  off = lambda z: z.at[0].set(jnp.where(lag, 0.0, z[0]))
  x = dict(x, reset=x['reset'].at[0].set(0.0), la=off(x['la']), eta=off(x['eta']))
  return st, x


def _finish(rule, st, fresh, e_cont, a_end, s_end, r_end, active, y, q, outer, read_rows=1):
  """New carry after a chunk, and the exact boundary read of the chunk's last token.

  The chunk ends on a boundary when its real tokens fill it up to the last slot. ``read_rows``:
  that read runs on this many identical copies of the last query (so its result is the same): 16
  in the Triton kernel, whose dot needs every operand dim ≥ 16; 1 elsewhere (the XLA path: 16 rows
  cost Moneta's chunk +5 % FLOPs)."""
  ret, arch = rule.retention, rule.arch
  n_active = jnp.sum(active).astype(jnp.int32)
  boundary = st['pos'] + n_active == q.shape[0]
  new = {}
  phi_a = tuple(ret.phi(a) for a in a_end)
  # 'lag': the state holds the weights, mapped back onto the simplex at the chunk's end.
  new['A'] = common.tree_where(boundary, phi_a, a_end) if ret.read_mode == 'lag' else a_end
  wg_last = common.tree_where(e_cont, st['Wg'], fresh['Wg'])
  new['Wg'] = common.tree_where(boundary, phi_a, wg_last)
  if 'S' in st:
    new['S'] = s_end
  if 'sig' in st:
    sig_last = common.tree_where(e_cont, st['sig'], fresh['sig'])
    new['sig'] = common.tree_where(boundary, tuple(ret.scale(a) for a in a_end), sig_last)
  if 'R' in st:
    new['R'] = common.tree_where(boundary, phi_a, r_end)
  new['pos'] = jnp.where(boundary, 0, st['pos'] + n_active).astype(jnp.int32)
  if ret.read_mode != 'identity':
    # The last token of a chunk reads the exact φ(A) (a chunk boundary). A row mask, not a
    # scatter: the same code runs inside the Mosaic kernel (pallas_kernels/mlp_memory).
    q_last = jnp.broadcast_to(_last(q)[None], (read_rows, q.shape[-1]))
    y_last = _last(arch.apply(phi_a, q_last, outer))[None]
    last = jax.lax.broadcasted_iota(jnp.int32, y.shape, 0) == y.shape[0] - 1
    y = jnp.where(last & boundary, y_last, y)
  return new, y


def _chunk_general(rule: MemoryRule, resets: bool, st, x, fresh, outer, inner_form='matmul'):
  if rule.retention.read_mode == 'lag':
    st, x = _lag_token(rule, st, x, fresh, outer)
  co = coefficients(x['la'], x['eta'], x['reset'], x['active'], x['lm'])
  return chunk_core(rule, resets, st, x, co, fresh, outer, inner_form)


def chunk_core(
  rule: MemoryRule, resets: bool, st, x, co, fresh, outer, inner_form='matmul', read_rows=1
):
  """The general chunk given its coefficients ``co`` (``coefficients``; after the lag token):
  key factors, reads, primal update. Shared with pallas_kernels/mlp_memory, which computes
  ``co`` outside the kernel. ``inner_form``: 'matmul' (the dual form: masked [b, b] products) or
  'scan' (per-token steps by chunk_scan.chunk_steps; needs x's gates la, reset, lm). ``read_rows``:
  ``_finish``'s. Returns (new state, y [b, dv])."""
  arch = rule.arch
  q, k, v = x['q'], x['k'], x['v']
  cont, a, C = co['cont'], co['a'], co['C']
  momentum = 'S' in st
  scan = inner_form == 'scan'

  deltas, hk, u = _key_factors(rule, st['Wg'], fresh['Wg'], k, v, x['delta'], outer, cont, resets)
  if rule.step_scale != 'none':
    # η̃_i = η_i · factor_i (rules.py step_factors): one number per token, from its own gradient
    # ‖g_i‖² = Σ_l ‖δ_l,i‖² ‖h_l,i‖² (outer products), so it multiplies the key factors.
    gg = sum(jnp.sum(jnp.square(d), -1) * jnp.sum(jnp.square(h), -1) for d, h in zip(deltas, hk))
    f = step_factors(rule, gg, jnp.sum(jnp.square(u), -1), x['eta'], x['lm'], q.shape[0])
    deltas = [d * f[:, None] for d in deltas]
  if scan:
    lm, s0 = (x['lm'], st['S']) if momentum else (None, None)
    steps, moms = chunk_steps(deltas, hk, x['eta'], x['la'], x['reset'], x['active'], lm, s0)
  base_c, s_c = read_base(rule, st)
  base_0, s_0 = read_base(rule, fresh)
  # Retention towards A_0 (retention.py 'initial'): A_t = A_0 + a_t (A' − A_0) + Σ C g, so the
  # read adds (1 − a_t) s · A_0 to the decayed base a_t B (s: the read scale, 1 or Moneta's).
  anchor = rule.retention.target == 'initial'

  L = len(deltas)
  z = q
  for l in range(L):
    h = layer_input(arch, arch.act(z) if l else q, base_c[l])
    zb = linear(h, base_c[l])
    s_tok = jnp.full(cont.shape, s_c[l])
    if resets:
      zb = _sel(cont, zb, linear(h, base_0[l]))
      s_tok = jnp.where(cont, s_c[l], s_0[l])
    if scan:  # M_t h_t: the steps' coefficient of S' is in M_t (chunk_scan)
      upd = jnp.einsum('toi,ti->to', steps[l], h)
    else:
      upd = (input_gram(h, hk[l], base_c[l]) * C) @ deltas[l]
      if momentum:
        upd = upd + co['d'][:, None] * linear(h, st['S'][l])
    if anchor:
      upd = upd + (1.0 - a)[:, None] * linear(h, fresh['A'][l])
    z = a[:, None] * zb + s_tok[:, None] * upd
  y = arch.final(z, q, outer)

  # Primal update to the chunk's last slot (the last real token: padding adds nothing). Weights
  # may be split pairs (architectures.linear), hence tree maps for the weight-shaped sums.
  tm = jax.tree.map
  e_cont = _last(cont)
  a_base = common.tree_where(e_cont, st['A'], fresh['A'])
  a_end, s_end, r_end = [], [], []
  a_e, c_e = _last(a), (None if scan else _last(C))
  if momentum and not scan:
    d_e, sdec_e, cs_e = _last(co['d']), _last(co['sdec']), _last(co['Cs'])
  for l in range(L):
    # 'scan': the last M includes d S' (momentum; then there is no R, rules.py).
    step = steps[l][-1] if scan else outer_sum(c_e[:, None] * deltas[l], hk[l], a_base[l])
    acc = tm(lambda x, s: a_e * x + s, a_base[l], step)
    if anchor:
      acc = tm(lambda x, w: x + (1.0 - a_e) * w, acc, fresh['A'][l])
    if momentum and scan:
      s_end.append(moms[l][-1])
    elif momentum:
      acc = tm(lambda x, m: x + d_e * m, acc, st['S'][l])
      g_s = outer_sum(cs_e[:, None] * deltas[l], hk[l], a_base[l])
      s_end.append(tm(lambda m, g: sdec_e * m + g, st['S'][l], g_s))
    a_end.append(acc)
    if 'R' in st:
      r_base = common.tree_where(e_cont, base_c[l], base_0[l])
      r_end.append(tm(lambda x, s: a_e * x + s, r_base, step))
  return _finish(
    rule,
    st,
    fresh,
    e_cont,
    tuple(a_end),
    tuple(s_end),
    tuple(r_end),
    x['active'],
    y,
    q,
    outer,
    read_rows,
  )


_CHANNEL_TILE = 16


def _chunk_channel(rule: MemoryRule, resets: bool, st, x, fresh, outer):
  """Linear memory with channel-wise (key) decay: W_t = W_{t−1} Diag(α_t) − η_t g_t.

  The intra-chunk decay tensor is [b, b, d_k], so a chunk is processed in sequential tiles
  of ≤ 16 tokens (gradients still at the chunk-start memory Wg): past 16 the tensor costs
  more than the parallelism saves (CPU, T=2048, d=64, fwd+bwd: 113 ms with 8-token chunks,
  143 with 16, 267 with 32, 739 with 64, against 399 for the token-by-token reference).
  """
  b = x['q'].shape[0]
  tile = _CHANNEL_TILE if b % _CHANNEL_TILE == 0 else b
  (wg,), (w0,) = st['Wg'], fresh['Wg']
  (a_cur,), (a0,) = st['A'], fresh['A']
  reset = x['reset']
  # Tokens before the chunk's first reset take their gradient at Wg, later ones at W_0.
  cont_chunk = jnp.cumsum(reset) == 0
  ys = []
  for s0 in range(0, b, tile):
    xt = {n: (None if val is None else val[s0 : s0 + tile]) for n, val in x.items()}
    co = coefficients(xt['la'], xt['eta'], xt['reset'], xt['active'])
    cont, a, Dw = co['cont'], co['a'], co['Dw']  # a [t, dk], Dw [t, t, dk]
    q, k, v, eta = xt['q'], xt['k'], xt['v'], xt['eta']
    p = k @ wg.T
    if resets:
      p = _sel(cont_chunk[s0 : s0 + tile], p, k @ w0.T)
    u = rule.bias.grad(p, v, xt['delta']) * (-eta)[:, None]  # token i writes −η_i u_i
    yb = (q * a) @ a_cur.T
    if resets:
      yb = _sel(cont, yb, (q * a) @ a0.T)
    P = jnp.einsum('tc,ic,tic->ti', q, k, Dw)
    ys.append(yb + P @ u)
    a_base = jnp.where(cont[-1], a_cur, a0)
    a_cur = a_base * a[-1][None, :] + u.T @ (k * Dw[-1])
  y = jnp.concatenate(ys, 0)
  e_cont = cont_chunk[-1]
  return _finish(rule, st, fresh, e_cont, (a_cur,), (), (), x['active'], y, x['q'], outer)


def _unit_lower_inverse(n):
  """(I + n)⁻¹ for strictly lower-triangular n [b, b], in n's dtype, by recursive 2×2 block
  inversion: [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹CA⁻¹, D⁻¹]], block size s = 1, 2, 4, …, i.e.
  X ← X − X (n ⊙ Off_s) X with Off_s the sub-diagonal s×s block of each 2s×2s diagonal block
  (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., §14.2.2). ⌈log₂ b⌉ levels of
  two b×b matmuls, differentiated by autodiff (pallas_kernels/tri_inverse.py is the fp32 kernel
  twin, with an analytic VJP)."""
  b = n.shape[0]
  row, col = jnp.arange(b)[:, None], jnp.arange(b)[None, :]
  x = jnp.eye(b, dtype=n.dtype)
  s = 1
  while s < b:
    off = (row // s == col // s + 1) & ((row // s) % 2 == 1)
    x = x - x @ jnp.where(off, n, 0) @ x
    s *= 2
  return x


def _unit_lower_solve(n, rhs):
  """(I + n)⁻¹ rhs for strictly lower-triangular n [b, b]; rhs [b, dv].

  On CPU by the blockwise inverse above, not LAPACK: jaxlib 0.10's CPU LAPACK kernels (here
  ``lapack_strsm_ffi``) split their batch over XLA:CPU's intra-op thread pool and block the
  calling pool thread until the pieces finish (jaxlib/cpu/lapack_kernels.cc ``ParallelBatchMap``,
  new in JAX 0.10.0; only when batch × b²·dv ≥ 2e5). Once as many such calls run at once as the
  pool has threads (the backward holds two independent solves with this matrix), every worker
  waits on work queued behind it and XLA:CPU deadlocks: mqar_study.py's DeltaNet hung on 2 cores
  (benchmarks/README.md, "deadlock"). Upstream removed that parallel path from open-source builds
  after JAX 0.11.0 (jax commit 859992407d, jax-ml/jax#36927). Other platforms keep the
  triangular solve (cuBLAS, XLA's expander).
  """
  eye = jnp.eye(n.shape[0], dtype=n.dtype)
  return jax.lax.platform_dependent(
    n,
    rhs,
    cpu=lambda n, r: _unit_lower_inverse(n) @ r,
    default=lambda n, r: solve_triangular(eye + n, r, lower=True, unit_diagonal=True),
  )


def _chunk_wy(rule: MemoryRule, resets: bool, st, x, fresh, outer):
  """Exact (gated) delta rule over a chunk by the UT / WY transform.

  With S_t = α_t S_{t−1}(I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, write S_t = a_t S' + Σ_i
  Dw[t,i] u_i k_iᵀ. Then u_t = β_t (v_t − a_t S' k_t − Σ_{i<t} Dw[t,i](k_iᵀk_t) u_i), i.e.
  (I + Diag(β) Λ) U = Diag(β)(V − Diag(a) K S'ᵀ) with Λ strictly lower triangular — one
  unit-triangular solve per chunk (Yang et al. 2024, "Parallelizing Linear Transformers
  with the Delta Rule", §3; flash-linear-attention ops/gated_delta_rule/chunk).
  """
  q, k, v, beta = x['q'], x['k'], x['v'], x['eta']
  co = coefficients(x['la'], beta, x['reset'], x['active'])
  cont, a, Dw = co['cont'], co['a'], co['Dw']
  b = q.shape[0]
  (ac,), (a0,) = st['A'], fresh['A']
  sk = k @ ac.T
  sq = q @ ac.T
  if resets:
    sk = _sel(cont, sk, k @ a0.T)
    sq = _sel(cont, sq, q @ a0.T)
  strict = jnp.tril(jnp.ones((b, b), bool), -1)
  lam = (k @ k.T) * Dw * strict
  rhs = beta[:, None] * (v - a[:, None] * sk)
  U = _unit_lower_solve(beta[:, None] * lam, rhs)  # (I + Diag(β) Λ) U = rhs
  y = a[:, None] * sq + ((q @ k.T) * Dw) @ U
  e_cont = cont[-1]
  a_base = jnp.where(e_cont, ac, a0)
  a_end = a[-1] * a_base + (Dw[-1][:, None] * U).T @ k
  new = {'A': (a_end,), 'Wg': (a_end,), 'pos': jnp.zeros((), jnp.int32)}
  return new, y


def _kernel(rule: MemoryRule):
  if rule.form == 'wy':
    return _chunk_wy
  if rule.retention.decay == 'channel':
    return _chunk_channel
  return _chunk_general


BACKWARDS = ('auto', 'recompute', 'autodiff')


def recompute_backward(rule: MemoryRule) -> bool:
  """The deep memories' chunk scan differentiates by chunk_vjp.segment_scan (segment-start
  residuals, reverse recompute); the linear memories keep autodiff through ``jax.checkpoint``ed
  groups of chunks (their chunk is cheap to store, and the WY / channel kernels were measured so)."""
  return not rule.arch.is_linear and _kernel(rule) is _chunk_general


def has_scan_form(rule: MemoryRule) -> bool:
  """Whether the rule's chunk has the associative-scan form (chunk_scan.py: the general chunk)."""
  return _kernel(rule) is _chunk_general


def _check_scan_form(rule: MemoryRule):
  if not has_scan_form(rule):
    raise ValueError(
      f'rule {rule.name}: no associative-scan inner form (only the general chunk has one: not '
      "the WY delta rules nor channel-wise decay); use inner_form='matmul' or 'auto'"
    )


def chunk_step(rule: MemoryRule, resets: bool, inner_form: str = 'matmul'):
  """The scan body over chunks, ``(carry, x, (fresh, outer)) -> (carry, y)`` for one (batch,
  head); x holds one chunk's slots of q, k, v, eta, la, lm, delta, reset, active and cut.
  ``inner_form`` 'matmul' | 'scan' (chunk_core; 'scan' only where ``has_scan_form``)."""
  kern = _kernel(rule)
  if inner_form == 'scan':
    _check_scan_form(rule)
    kern = functools.partial(_chunk_general, inner_form='scan')
  return functools.partial(_chunk_body, kern, rule, resets)


def _chunk_body(kern, rule, resets, carry, xc, consts):
  fresh, outer = consts
  xc = dict(xc)
  cut = xc.pop('cut')
  if cut is not None:  # truncated BPTT: cuts fall on chunk starts (common.gradient_cuts)
    carry = common.stop_gradient_where(cut[0], carry)
  return kern(rule, resets, carry, xc, fresh, outer)


def _run_one(rule, b, group, resets, aligned, n_chunks, recompute, inner_form, tok, head, st):
  """One (batch, head): lay tokens into chunk slots, scan, read back."""
  fresh, outer = head
  T = tok['q'].shape[0]
  slots = n_chunks * b
  offset = jnp.zeros((), jnp.int32) if aligned else st['pos']

  def lay(x, fill=0.0):
    if x is None:
      return None
    buf = jnp.full((slots,) + x.shape[1:], fill, x.dtype)
    return jax.lax.dynamic_update_slice_in_dim(buf, x, offset, axis=0)

  xs = {n: lay(tok[n]) for n in ('q', 'k', 'v', 'eta', 'la', 'lm', 'delta', 'reset', 'cut')}
  if xs['delta'] is not None:
    xs['delta'] = lay(tok['delta'], 1.0)
  xs['active'] = lay(jnp.ones((T,), jnp.float32))
  xs = jax.tree.map(lambda x: x.reshape((n_chunks // group, group, b) + x.shape[1:]), xs)

  body = chunk_step(rule, resets, inner_form)
  if recompute:
    st, ys = segment_scan(body, st, xs, (fresh, outer))
  else:

    @jax.checkpoint
    def group_body(carry, xg):
      return jax.lax.scan(lambda c, x: body(c, x, (fresh, outer)), carry, xg)

    st, ys = jax.lax.scan(group_body, st, xs)
  ys = ys.reshape((slots,) + ys.shape[3:])
  y = jax.lax.dynamic_slice_in_dim(ys, offset, T, axis=0)
  return y, st


def chunked(
  rule: MemoryRule,
  q,
  k,
  v,
  gates=None,
  *,
  w0,
  outer=None,
  state=None,
  segment_ids=None,
  chunk_size: int = 64,
  remat_group: int = 4,
  aligned: bool | None = None,
  grad_horizon: int | None = None,
  backward: str = 'auto',
  inner_form: str = 'auto',
):
  """Chunk-parallel memory; same signature and results as ``reference`` with the same b.

  q, k [B, H, T, dk]; v [B, H, T, dv]; gates: dict of [B, H, T(, d)] (rules.py);
  w0: tuple of [H, o, i] (initial memory, also the reset target); outer: per-head outer
  parameters of the architecture (LayerNorm) or None for defaults; state: [B, H, ...]
  from a previous call or None; segment_ids [B, T] for packed rows.
  ``aligned``: the state is at a chunk boundary (pos == 0); default True when no state is
  passed. Unaligned states cost one extra chunk (front padding). ``grad_horizon``: None for
  exact gradients, else truncated BPTT (common.gradient_cuts). ``backward``: 'recompute'
  (chunk_vjp.segment_scan: segment-start residuals, ``remat_group`` chunks per segment),
  'autodiff' (autodiff through ``jax.checkpoint`` groups of ``remat_group`` chunks) or 'auto'
  (``recompute_backward(rule)``); identical values and gradients. ``inner_form``: how the general
  chunk forms its in-chunk steps, 'matmul' (masked [b, b] products, the dual form), 'scan'
  (associative scan over the tokens, chunk_scan.py) or 'auto' (chunk_scan.AUTO for the platform;
  'matmul' for the rules without a scan form); identical values and gradients.
  Returns (y [B, H, T, dv] in q's dtype, final state).
  """
  if backward not in BACKWARDS:
    raise ValueError(f'unknown backward {backward!r}; choose one of {BACKWARDS}')
  form = resolve_inner_form(inner_form)
  if inner_form == 'scan':
    _check_scan_form(rule)
  elif not has_scan_form(rule):
    form = 'matmul'  # 'auto'
  cut = common.gradient_cuts(grad_horizon, chunk_size, state, q.shape[:3])
  P = common.prepare(rule, q, k, v, gates, w0, outer, state, segment_ids)
  b = int(chunk_size)
  if rule.form == 'wy':
    aligned = True  # exact sequential semantics: the chunk grid is immaterial
  if aligned is None:
    aligned = state is None
  T = q.shape[2]
  n_chunks = -(-(T + (0 if aligned else b - 1)) // b)
  group = max(1, min(int(remat_group), n_chunks))
  n_chunks = -(-n_chunks // group) * group
  resets = segment_ids is not None
  tok = {n: P[n] for n in ('q', 'k', 'v', 'eta', 'la', 'lm', 'delta', 'reset')}
  tok['cut'] = cut
  recompute = recompute_backward(rule) if backward == 'auto' else backward == 'recompute'
  fn = functools.partial(_run_one, rule, b, group, resets, aligned, n_chunks, recompute, form)
  y, st = common.vmap_bh(fn)(tok, (P['fresh'], P['outer']), P['state'])
  return y.astype(q.dtype), st
