"""``mlp_memory``: the deep test-time memories (Titans, Moneta, Yaad, Memora, TTT-MLP, TTT-Linear)
as one Pallas kernel per chunk segment, with the same results as the XLA chunked path
(miras_jax.memory.chunked) for the same chunk size.

XLA side (here): the memory core's front end (validated fp32 inputs, gates, resets, fresh state),
tail padding to whole segments, and the in-chunk decay / momentum coefficients
(``chunked.coefficients``: cumulative sums, which stay outside the kernel as in layout.py; the
gradient reaches the gates through XLA's autodiff of them). Kernel side (pallas_tpu.py): the chunk
of chunk.py over the sequence, state on chip.

Scope: the rules whose chunk is the general one (``chunked.recompute_backward``) except Memora's
'lag' form (its first-token step changes the coefficients inside the chunk); the initial state must
sit on a chunk boundary (``pos == 0``: a fresh state, or one that ended on a boundary), since the
kernel's chunks are aligned to the call's first token.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from miras_jax.memory import common
from miras_jax.memory.chunked import coefficients, recompute_backward
from miras_jax.memory.rules import MemoryRule
from pallas_kernels import layout, platform
from pallas_kernels.mlp_memory import tuned
from pallas_kernels.mlp_memory.chunk import COEFFS, VECTORS, Layout, as_2d, chunk_fn


def supported(rule: MemoryRule) -> bool:
  return recompute_backward(rule) and rule.retention.read_mode != 'lag'


def _split_pos(tree):
  tree = dict(tree)
  tree.pop('pos')
  return jax.tree.flatten(tree)


def mlp_memory(
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
  seg_chunks: int | None = None,
  backend: str = 'auto',
  interpret: bool | None = None,
):
  """Same arguments and results as ``chunked`` (q, k [B, H, T, dk], v [B, H, T, dv] → y
  [B, H, T, dv] in q's dtype, final state dict [B, H, ...]); see the module doc for the scope.
  ``seg_chunks``: chunks per kernel grid step (tuned.py by default)."""
  if not supported(rule):
    raise ValueError(
      f'rule {rule.name}: no deep-memory Pallas kernel (covered: the general chunk of the MLP '
      f"memories, not Memora's lag form); use implementation='xla'"
    )
  P = common.prepare(rule, q, k, v, gates, w0, outer, state, segment_ids)
  lowering, interp = platform.resolve(backend, interpret)
  B, H, T = q.shape[:3]
  c = int(chunk_size)
  n_chunks = -(-T // c)
  R = max(1, min(int(seg_chunks or tuned.seg_chunks(lowering, interp)), n_chunks))
  n_chunks = -(-n_chunks // R) * R
  Tp = n_chunks * c
  pad = lambda x, val=0.0: layout.pad_time(x, Tp, val)
  f32 = jnp.float32
  ops = {
    'q': pad(P['q']),
    'k': pad(P['k']),
    'v': pad(P['v']),
    'active': pad(jnp.ones((B, H, T), f32)),
  }
  if P['delta'] is not None:
    ops['delta'] = pad(jnp.broadcast_to(P['delta'], (B, H, T, P['delta'].shape[-1])), 1.0)
  # The coefficients of every chunk (chunked.coefficients, vmapped over B, H and chunks).
  per_chunk = lambda x: None if x is None else pad(x).reshape(B, H, n_chunks, c)
  gate_args = [per_chunk(P[n]) for n in ('la', 'eta', 'reset')] + [per_chunk(ops['active'])]
  gate_args.append(per_chunk(P['lm']))
  co_fn = lambda la, eta, r, act, lm: coefficients(la, eta, r, act, lm)
  for _ in range(3):
    co_fn = jax.vmap(co_fn)
  co = co_fn(*gate_args)
  co['cont'] = co['cont'].astype(f32)
  for n in COEFFS:
    if n in co:
      ops[n] = co[n].reshape(B, H, Tp, -1)
  names = tuple(n for n in ('q', 'k', 'v', 'active', 'delta') + COEFFS if n in ops)
  toks = tuple(
    layout.flat(ops[n][..., None] if n in VECTORS and ops[n].ndim == 3 else ops[n]) for n in names
  )

  st_leaves, st_def = _split_pos(P['state'])
  fr_leaves, fr_def = _split_pos(P['fresh'])
  out_leaves, out_def = jax.tree.flatten(P['outer'])
  bh = lambda x: jnp.broadcast_to(x[None], (B,) + x.shape)  # per-head → [B, H, ...]
  to2d = lambda x: layout.flat(x).reshape((B * H,) + as_2d(x.shape[2:]))
  h0 = tuple(to2d(x.astype(f32)) for x in st_leaves)
  consts = tuple(to2d(bh(x).astype(f32)) for x in fr_leaves + out_leaves)
  lay = Layout(
    names=names,
    state_def=st_def,
    state_shapes=tuple(x.shape[2:] for x in st_leaves),
    fresh_def=fr_def,
    fresh_shapes=tuple(x.shape[1:] for x in fr_leaves),
    outer_def=out_def,
    outer_shapes=tuple(x.shape[1:] for x in out_leaves),
  )
  fn = chunk_fn(rule, segment_ids is not None, lay)
  if lowering == 'gpu':
    from pallas_kernels.mlp_memory.pallas_gpu import mlp_segments_gpu as core
  else:
    from pallas_kernels.mlp_memory.pallas_tpu import mlp_segments as core
  y, hT = core(fn, c, R, interp, toks, h0, consts)
  y = y.reshape(B, H, Tp, -1)[:, :, :T].astype(q.dtype)
  fin = [h.reshape((B, H) + s) for h, s in zip(hT, lay.state_shapes)]
  fin = dict(jax.tree.unflatten(st_def, fin))
  fin['pos'] = jnp.full((B, H), T % c, jnp.int32)
  return y, fin
