"""The reference memory: token by token with ``lax.scan``, fp32 — the definition that
every fast path is tested against (DESIGN §3).

With chunk size b the reference reproduces the papers' parallel-training semantics
exactly, one token at a time (miras-math.md, "Chunk-parallel semantics"):
- the gradient of token t is taken at ``Wg``, the memory at the last chunk boundary;
- the accumulator recurrences (retention decay, GD / momentum) are applied every token;
- token t reads ``Ŵ_t`` (see retention.py ``read_mode``); at a chunk's last token the
  boundary is crossed: ``Wg ← φ(A)`` and the read is the exact ``φ(A_t)``;
- b = 1 is the plain sequential rule of the papers' equations.
A new document (``segment_ids`` change) resets the memory to its initial weights W_0;
the chunk grid stays that of the row.
The weight gradient here comes from ``jax.vjp`` of the memory function, independently of
the factored back-propagation the chunked path uses.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.memory import common
from miras_jax.memory.rules import MemoryRule, step_factors


def step(rule: MemoryRule, b: int, st: dict, x: dict, fresh: dict, outer):
  """One token for one head. x: q [dk], k [dk], v [dv], eta [], la [] or [dk], lm [],
  delta [dv] or None, reset []. Returns (new state, y [dv])."""
  arch, bias, ret = rule.arch, rule.bias, rule.retention
  pos = st['pos']
  if x.get('cut') is not None:  # truncated BPTT (common.gradient_cuts)
    st = common.stop_gradient_where(x['cut'], st)
  st = common.tree_where(x['reset'] > 0, fresh, st)
  st = dict(st, pos=pos)
  wg = st['Wg']
  alpha = jnp.exp(x['la'])  # scalar, or [dk] for channel decay (W Diag(α))
  decay = lambda m: m * alpha
  if ret.target == 'initial':  # forget towards the initial accumulator A_0 (retention.py)
    decay_a = lambda m, m0: m * alpha + (1.0 - alpha) * m0
  else:
    decay_a = lambda m, m0: decay(m)

  # 'decayed' (Gated DeltaNet, b = 1): the delta step is taken at α_t W_{t−1}.
  wpt = tuple(decay(w) for w in wg) if rule.grad_point == 'decayed' else wg
  p = arch.apply(wpt, x['k'], outer)
  u = bias.grad(p, x['v'], x['delta'])
  _, vjp = jax.vjp(lambda w: arch.apply(w, x['k'], outer), wpt)
  (g,) = vjp(u)
  if rule.step_scale != 'none':  # η̃_t = η_t · factor (rules.py step_factors)
    gg = sum(jnp.sum(jnp.square(gi)) for gi in g)
    f = step_factors(rule, gg, jnp.sum(jnp.square(u)), x['eta'], x['lm'], b)
    g = tuple(f * gi for gi in g)
  eta = x['eta']
  new = dict(st)
  mode = ret.read_mode
  if mode == 'lag':
    # Memora's lag scheme (retention.py): the chunk's first token takes the exact KL step from
    # the boundary memory and becomes the gradient point; later tokens take linear steps.
    lag = pos == 0
    w_lag = tuple(ret.lag_step(w, x['la'], eta, gi) for w, gi in zip(wg, g))
    lin = tuple(decay(a) - eta * gi for a, gi in zip(st['A'], g))
    new['A'] = common.tree_where(lag, w_lag, lin)
    wg = common.tree_where(lag, w_lag, wg)
  elif rule.algorithm.momentum:
    mu = jnp.exp(x['lm'])
    new['S'] = tuple(mu * s - eta * gi for s, gi in zip(st['S'], g))
    new['A'] = tuple(decay_a(a, a0) + s for a, a0, s in zip(st['A'], fresh['A'], new['S']))
  else:
    new['A'] = tuple(decay_a(a, a0) - eta * gi for a, a0, gi in zip(st['A'], fresh['A'], g))

  boundary = pos == b - 1
  phi_a = tuple(ret.phi(a) for a in new['A'])
  new['Wg'] = common.tree_where(boundary, phi_a, wg)
  if mode == 'identity':
    w_read = new['A']
  elif mode == 'lag':
    new['A'] = common.tree_where(boundary, phi_a, new['A'])
    w_read = new['A']
  elif mode == 'scale':
    new['sig'] = common.tree_where(boundary, tuple(ret.scale(a) for a in new['A']), st['sig'])
    w_read = tuple(s * a for s, a in zip(new['sig'], new['A']))
  else:
    r = tuple(decay(ri) - eta * gi for ri, gi in zip(st['R'], g))
    new['R'] = common.tree_where(boundary, phi_a, r)
    w_read = new['R']
  y = arch.apply(w_read, x['q'], outer)
  new['pos'] = jnp.where(boundary, 0, pos + 1).astype(jnp.int32)
  return new, y


def _scan_one(rule, b, tok, head, st):
  fresh, outer = head

  def body(carry, x):
    return step(rule, b, carry, x, fresh, outer)

  st, ys = jax.lax.scan(body, st, tok)
  return ys, st


def reference(
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
  chunk_size: int = 1,
  grad_horizon: int | None = None,
):
  """Token-by-token memory. q, k [B, H, T, dk], v [B, H, T, dv]; w0: tuple of [H, o, i].

  ``grad_horizon``: None for exact gradients, else truncated BPTT (common.gradient_cuts).
  Returns (y [B, H, T, dv] in q's dtype, final state [B, H, ...]).
  """
  b = common.semantic_chunk(rule, chunk_size)
  cut = common.gradient_cuts(grad_horizon, chunk_size, state, q.shape[:3])
  P = common.prepare(rule, q, k, v, gates, w0, outer, state, segment_ids)
  # Scan over time: move T to the front of each per-token input (after B, H vmaps).
  tok = {n: P[n] for n in ('q', 'k', 'v', 'eta', 'la', 'lm', 'delta', 'reset')}
  tok['cut'] = cut
  tok = jax.tree.map(lambda x: jnp.moveaxis(x, 2, 0) if x is not None else None, tok)

  def one(tok_bh, head, st):
    return _scan_one(rule, b, tok_bh, head, st)

  # vmap over B then H with time leading: in_axes=1 for (T, B, H, ...) tokens.
  def per_b(tok_b, head, st_b):
    return jax.vmap(one, in_axes=(1, 0, 0), out_axes=(1, 0))(tok_b, head, st_b)

  ys, st = jax.vmap(per_b, in_axes=(1, None, 0), out_axes=(1, 0))(
    tok, (P['fresh'], P['outer']), P['state']
  )
  y = jnp.moveaxis(ys, 0, 2)  # (T, B, H, dv) → (B, H, T, dv)
  return y.astype(q.dtype), st


def memory_step(
  rule: MemoryRule, q, k, v, gates=None, *, w0, state, outer=None, reset=None, chunk_size: int = 1
):
  """One decoding step with the carried state: q, k [B, H, dk], v [B, H, dv].

  Reproduces the chunk semantics exactly (the state holds the position in the chunk), so
  prefill + steps equals one full pass. Returns (y [B, H, dv], new state)."""
  y, st = reference(
    rule,
    q[:, :, None],
    k[:, :, None],
    v[:, :, None],
    None
    if gates is None
    else {n: (g[:, :, None] if g is not None else None) for n, g in gates.items()},
    w0=w0,
    outer=outer,
    state=state,
    chunk_size=chunk_size,
  )
  return y[:, :, 0], st
