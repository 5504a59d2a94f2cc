"""``mlp_memory``: the deep test-time memories (Titans, Moneta, Yaad, Memora, TTT-MLP, TTT-Linear)
as one Pallas kernel per chunk segment, with the same results as the XLA chunked path
(miras_jax.memory.chunked) for the same chunk size.

XLA side (here): the memory core's front end (validated fp32 inputs, gates, resets, fresh state),
tail padding to whole segments, and the chunk-local prefix sums of the gates
(``chunked.chunk_sums``: cumulative sums stay outside the kernel as in layout.py; the gradient
reaches the gates through XLA's autodiff of them). Kernel side (pallas_tpu.py): the chunk of
chunk.py over the sequence, state on chip; it builds the [c, c] decay / momentum coefficients from
the per-token sums on chip, so nothing of size T·c leaves it.

Scope: the rules whose chunk is the general one (``chunked.recompute_backward``) except Memora's
'lag' form (its first-token step changes the coefficients inside the chunk), with any
``step_scale`` ('implicit', 'implicit_chunk': the per-token step factor, rules.step_factors, is
computed on chip from η_t and log μ_t, one more row of the per-token tile); the initial state must
sit on a chunk boundary (``pos == 0``: a fresh state, or one that ended on a boundary), since the
kernel's chunks are aligned to the call's first token.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.memory import common
from miras_jax.memory.chunked import chunk_sums, recompute_backward
from miras_jax.memory.rules import MemoryRule
from pallas_kernels import layout, platform
from pallas_kernels.mlp_memory import tuned
from pallas_kernels.mlp_memory.chunk import SUMS, TOKENS, VECTORS, Layout, as_2d, chunk_fn
from pallas_kernels.mlp_memory.pallas_tpu import BACKWARDS


def supported(rule: MemoryRule) -> bool:
  # Any step_scale: 'implicit(_chunk)' reads η_t and log μ_t per token, both rows of the kernel's
  # per-token tile (chunk.VECTORS; 'lm' only when the rule has momentum and a step scale).
  return recompute_backward(rule) and rule.retention.read_mode != 'lag'


_WEIGHTS = ('A', 'Wg', 'S', 'R')  # the state's per-layer weight-shaped entries


def _split_bias(st):
  """Every [.., o, i + 1] weight with a bias column as the pair (W [.., o, i], b [.., 1, o])
  (architectures.linear): the GPU kernel's arrays need power-of-two dims for Triton."""
  f = lambda w: (w[..., :-1], jnp.swapaxes(w[..., -1:], -1, -2))
  return {n: tuple(map(f, x)) if n in _WEIGHTS else x for n, x in st.items()}


def _join_bias(st):
  f = lambda p: jnp.concatenate([p[0], jnp.swapaxes(p[1], -1, -2)], -1)
  return {n: tuple(map(f, x)) if n in _WEIGHTS else x for n, x in st.items()}


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
  backward: str | None = None,
):
  """Same arguments and results as ``chunked`` (q, k [B, H, T, dk], v [B, H, T, dv] → y
  [B, H, T, dv] in q's dtype, final state dict [B, H, ...]); see the module doc for the scope.
  ``seg_chunks``: chunks per kernel grid step (tuned.py by default). ``backward``: the custom
  VJP's backward, 'kernel' (default: the Pallas reverse kernel; on the GPU lowering it needs
  seg_chunks=1, its default) or 'xla' (chunk_vjp.segment_backward)."""
  if not supported(rule):
    raise ValueError(
      f'rule {rule.name}: no deep-memory Pallas kernel (covered: the general chunk of the MLP '
      f"memories, any step_scale, not Memora's lag form); use implementation='xla'"
    )
  if backward is not None and backward not in BACKWARDS:  # before any work; the drivers check too
    raise ValueError(f'unknown backward {backward!r}; choose one of {BACKWARDS}')
  pos = None if state is None else state['pos']
  # Checked on the host (numpy): inside a trace, jnp on a concrete array would be staged too.
  if pos is not None and not isinstance(pos, jax.core.Tracer) and np.any(np.asarray(pos) != 0):
    raise ValueError(
      'the deep-memory Pallas kernel needs a state on a chunk boundary (pos == 0); use '
      "implementation='xla' to continue mid-chunk"
    )
  P = common.prepare(rule, q, k, v, gates, w0, outer, state, segment_ids)
  lowering, interp = platform.resolve(backend, interpret)
  # TTT's bias columns: split on GPU (the identity retention map only: φ acts on whole matrices).
  split = lowering == 'gpu' and getattr(rule.arch, 'bias', False)
  split = split and rule.retention.map == 'identity'
  if split:
    P = dict(P, state=_split_bias(P['state']), fresh=_split_bias(P['fresh']))
  B, H, T = q.shape[:3]
  c = int(chunk_size)
  n_chunks = -(-T // c)
  # GPU: a residual at every chunk start by default (R = 1), what its backward kernel walks.
  R = seg_chunks or (1 if lowering == 'gpu' else tuned.seg_chunks(lowering, interp))
  R = max(1, min(int(R), n_chunks))
  n_chunks = -(-n_chunks // R) * R
  Tp = n_chunks * c
  pad = lambda x, val=0.0: layout.pad_time(x, Tp, val)
  f32 = jnp.float32
  # TPU: bf16 q, k, v enter the kernels as given and are cast to fp32 on chip (the same values as
  # prepare's cast): fp32 copies would be materialised for the kernels and held as the backward's
  # residuals (v5p, Titans 16 heads × 64, T = 4096: fwd+bwd temporaries 354 → 253 MiB;
  # scripts/aot_mlp_memory.py).
  raw = lambda n, x: x if lowering == 'tpu' and x.dtype == jnp.bfloat16 else P[n]
  ops = {
    'q': pad(raw('q', q)),
    'k': pad(raw('k', k)),
    'v': pad(raw('v', v)),
    'active': pad(jnp.ones((B, H, T), f32)),
  }
  if P['delta'] is not None:
    ops['delta'] = pad(jnp.broadcast_to(P['delta'], (B, H, T, P['delta'].shape[-1])), 1.0)
  # The prefix sums of every chunk (chunked.chunk_sums, vmapped over B, H and chunks); the kernel
  # builds the [c, c] coefficients from them on chip (chunked.coefficients_from_sums).
  per_chunk = lambda x: None if x is None else pad(x).reshape(B, H, n_chunks, c)
  sums_fn = chunk_sums
  for _ in range(3):
    sums_fn = jax.vmap(sums_fn)
  sums = sums_fn(per_chunk(P['la']), per_chunk(P['reset']), per_chunk(P['lm']))
  ops['eta'] = pad(P['eta'])
  if rule.step_scale != 'none' and P['lm'] is not None:
    # step_factors' 1 − μ_t per token (chunk_core). Padded with log μ = 0 as chunked's slots are:
    # there η = 0, so the factor's η/(1 − μ) is 0 (the 1e-6 floor), as on the XLA path.
    ops['lm'] = pad(P['lm'])
  for n in SUMS:
    if sums[n] is not None:
      ops[n] = sums[n].reshape(B, H, Tp)
  names = tuple(n for n in TOKENS + SUMS if n in ops and n not in VECTORS)
  vec_names = tuple(n for n in VECTORS if n in ops)
  toks = tuple(layout.flat(ops[n]) for n in names)
  # Per-token scalars packed lane-dense, one [n_vec, c] tile per chunk: as [Tp, 1] columns each
  # would be padded to 128 lanes in HBM (measured: 6 × 32 MiB at 16 heads, T = 4096).
  # Rows padded with zeros to a power of two (Triton: every tensor dim is one; Mosaic pads a tile's
  # rows to 8 sublanes anyway, so this costs the TPU nothing).
  n_rows = 1 << (len(vec_names) - 1).bit_length()
  rows = [ops[n].reshape(B, H, n_chunks, c) for n in vec_names]
  rows += [jnp.zeros_like(rows[0])] * (n_rows - len(rows))
  rows = jnp.stack(rows, axis=3)
  toks += (layout.flat(rows),)

  st_leaves, st_def = _split_pos(P['state'])
  fr_leaves, fr_def = _split_pos(P['fresh'])
  out_leaves, out_def = jax.tree.flatten(P['outer'])
  bh = lambda x: jnp.broadcast_to(x[None], (B,) + x.shape)  # per-head → [B, H, ...]
  to2d = lambda x: layout.flat(x).reshape((B * H,) + as_2d(x.shape[2:]))
  h0 = tuple(to2d(x.astype(f32)) for x in st_leaves)
  consts = tuple(to2d(bh(x).astype(f32)) for x in fr_leaves + out_leaves)
  lay = Layout(
    names=names,
    vec_names=vec_names,
    state_def=st_def,
    state_shapes=tuple(x.shape[2:] for x in st_leaves),
    fresh_def=fr_def,
    fresh_shapes=tuple(x.shape[1:] for x in fr_leaves),
    outer_def=out_def,
    outer_shapes=tuple(x.shape[1:] for x in out_leaves),
    read_rows=16 if lowering == 'gpu' else 1,  # Triton's dot: operand dims >= 16
  )
  fn = chunk_fn(rule, segment_ids is not None, lay)
  if lowering == 'gpu':
    from pallas_kernels.mlp_memory.pallas_gpu import mlp_segments_gpu as segments

    # R > 1 on the GPU keeps residuals every R chunks, which only the XLA backward reads.
    default = 'kernel' if R == 1 else 'xla'
  else:
    from pallas_kernels.mlp_memory.pallas_tpu import mlp_segments as segments

    default = 'kernel'
  core = functools.partial(segments, backward=backward or default)
  y, hT = core(fn, c, R, interp, toks, h0, consts)
  y = y.reshape(B, H, Tp, -1)[:, :, :T].astype(q.dtype)
  fin = [h.reshape((B, H) + s) for h, s in zip(hT, lay.state_shapes)]
  fin = dict(jax.tree.unflatten(st_def, fin))
  if split:
    fin = _join_bias(fin)
  fin['pos'] = jnp.full((B, H), T % c, jnp.int32)
  return y, fin
