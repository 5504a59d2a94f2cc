"""Random inputs for memory tests and benchmarks (shared so both use the same gates), a perturbed
initial state and the all-input gradient of a memory call; the comparison helpers are
miras_jax/testing.py's (re-exported here)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.memory.rules import MemoryRule, init_state
from miras_jax.testing import assert_close, assert_tree_close, rel_err  # noqa: F401 (re-exported)


def random_w0(rule: MemoryRule, key, H: int, dk: int, dv: int, scale: float | None = None):
  """A non-trivial initial memory per head, valid for the rule's retention map."""
  keys = jax.random.split(key, H)
  ws = jax.vmap(
    lambda kk: rule.arch.init_weights(
      kk, dk, dv, scale=scale if scale is not None else (None if not rule.arch.is_linear else 0.3)
    )
  )(keys)
  if rule.retention.map == 'softmax':
    ws = tuple(rule.retention.scale_c * jax.nn.softmax(w, axis=-1) for w in ws)
  return tuple(ws)


def random_inputs(
  rule: MemoryRule,
  key,
  B=2,
  H=2,
  T=37,
  dk=12,
  dv=None,
  dtype=jnp.float32,
  gate_range: str = 'normal',
  segments: int = 0,
):
  """q, k (ℓ2-normalised), v, gates, w0, outer, segment_ids for a rule.

  gate_range: 'normal' | 'extreme' (α and μ near 0 and near 1, η spanning 1e-3…1).
  """
  dv = dv or dk
  ks = jax.random.split(key, 12)
  q = jax.random.normal(ks[0], (B, H, T, dk))
  k = jax.random.normal(ks[1], (B, H, T, dk))
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  v = jax.random.normal(ks[2], (B, H, T, dv)) * 0.5
  uses = rule.uses
  gates = {}
  if gate_range == 'extreme':
    # Half the tokens keep nearly everything (α ≈ 1 − 1e-6), half forget nearly all
    # (α ≈ e^−30): exercises log-space decays at both ends.
    pick = jax.random.bernoulli(ks[3], 0.5, (B, H, T))
    la_s = jnp.where(pick, -1e-6, -30.0)
    eta = jnp.exp(jax.random.uniform(ks[4], (B, H, T), minval=jnp.log(1e-3), maxval=0.0))
  else:
    la_s = jax.nn.log_sigmoid(jax.random.normal(ks[3], (B, H, T)) + 2.5)
    eta = jax.nn.sigmoid(jax.random.normal(ks[4], (B, H, T)) - 0.5)
  if uses['eta']:
    gates['eta'] = eta
  if uses['log_alpha']:
    if rule.retention.decay == 'channel':
      base = jax.random.normal(ks[5], (B, H, T, dk))
      if gate_range == 'extreme':
        gates['log_alpha'] = jnp.where(base > 0, -1e-6, -30.0)
      else:
        gates['log_alpha'] = jax.nn.log_sigmoid(base + 2.5)
    else:
      gates['log_alpha'] = la_s
  if uses['log_mu']:
    lm = jax.nn.log_sigmoid(jax.random.normal(ks[6], (B, H, T)) + 1.0)
    if gate_range == 'extreme':
      lm = jnp.where(jax.random.bernoulli(ks[7], 0.5, (B, H, T)), -1e-6, -30.0)
    gates['log_mu'] = lm
  if uses['delta']:
    gates['delta'] = jax.nn.softplus(jax.random.normal(ks[8], (B, H, T, dv))) * 0.3
  w0 = random_w0(rule, ks[9], H, dk, dv)
  outer = jax.vmap(lambda _: rule.arch.init_outer(dv))(jnp.arange(H))
  if outer:
    outer = jax.tree.map(lambda x: x + 0.1 * jax.random.normal(ks[10], x.shape), outer)
  seg = None
  if segments:
    # Random document boundaries: `segments` documents per row.
    cuts = jax.random.choice(ks[11], jnp.arange(1, T), (B, segments - 1), replace=False)
    seg = jnp.sum(jnp.arange(T)[None, :, None] >= cuts[:, None, :], axis=-1).astype(jnp.int32)
  cast = lambda x: x.astype(dtype)
  return dict(q=cast(q), k=cast(k), v=cast(v), gates=gates, w0=w0, outer=outer, segment_ids=seg)


def perturbed_state(rule: MemoryRule, w0, batch: int, key, pos: int = 0, scale: float = 0.1):
  """A non-trivial initial state: the fresh state of ``batch`` rows with every float leaf
  perturbed (so the weights, the momentum and the gradient point all differ), at in-chunk
  position ``pos``."""
  fresh = init_state(rule, w0, batch)
  keys = iter(jax.random.split(key, 16))
  noise = lambda x: x + scale * jax.random.normal(next(keys), x.shape, x.dtype)
  state = {n: jax.tree.map(noise, x) for n, x in fresh.items() if n != 'pos'}
  state['pos'] = jnp.full_like(fresh['pos'], pos)
  return state


def value_and_input_grads(call, inp, state):
  """``call(q, k, v, gates, w0=, outer=, state=) -> (y, final state)``; returns
  ``((loss, (y, final)), grads)`` with the gradients of q, k, v, gates, the state's float leaves,
  W_0 and the outer (LayerNorm) parameters, of a non-linear loss of every output (the cotangents
  differ per element): sum sin(y) + sum cos(final state)."""
  pos = state['pos']
  floats = {n: x for n, x in state.items() if n != 'pos'}

  def loss(q, k, v, gates, st, w0, outer):
    y, fin = call(q, k, v, gates, w0=w0, outer=outer, state=dict(st, pos=pos))
    leaves = jax.tree.leaves({n: x for n, x in fin.items() if n != 'pos'})
    return jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(x)) for x in leaves), (y, fin)

  args = (inp['q'], inp['k'], inp['v'], inp['gates'], floats, inp['w0'], inp['outer'])
  return jax.jit(jax.value_and_grad(loss, argnums=tuple(range(7)), has_aux=True))(*args)
