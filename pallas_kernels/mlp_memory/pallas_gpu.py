"""The deep-memory chunk segment on GPU (Pallas' Triton lowering), forward and backward kernels.
NOT YET RUN ON A GPU. Checked from CPU: both kernels *lower to Triton IR* for all six rules
(Titans, Moneta, Yaad, Memora, TTT-MLP, TTT-Linear; fp32 and bf16 inputs, head dim 16 / 64 / 128,
chunk 16 / 64; ``platform.lower_for_cuda``, tests/pallas_kernels/test_mlp_memory_triton.py), and
equal the XLA chunked path in interpret mode; PTX assembly, register pressure and speed are
unmeasured (the GPU session runs the tests and scripts/bench_kernels.py first).

As chunkwise_gpu.py: grid ``(N,)``, one program per (batch, head) walks every chunk of the
sequence with the state tuple in registers (Triton has no scratch persisting across grid steps),
and writes the state at every segment start (``R`` chunks) as the residual.

What Triton needs of the chunk (chunk.py, ``chunked.chunk_core``): no ``slice`` / ``pad`` (the
last row of a chunk is a masked sum, ``chunked._last``; the per-token scalar tile's rows too,
its row count padded to a power of two), every array dim a power of two (TTT's weights with a
bias column, [o, i + 1], go in split as (W, b) pairs: api.py ``_split_bias``,
architectures.linear), dot operands of rank 2 with dims >= 16 (the chunk-end read runs on 16
copies of the last query, ``Layout.read_rows``), so head dim and chunk >= 16.

Backward (``_backward``): one kernel, grid ``(N,)``, one program per (batch, head) walks the
chunks in reverse applying ``jax.vjp`` of the chunk function traced inside the kernel (so the
second-order terms of the inner gradient — LayerNorm, GELU — are Triton code too), from the state
saved at *every* chunk start (R = 1, api.py's GPU default), as chunkwise_gpu.py and
flash-linear-attention's ``chunk_fwd_h`` do. Why not recompute the chunk starts of longer
segments: a program cannot re-read what its own threads just wrote to global memory without a
barrier, and holding R states live in registers is out of the question (one Titans state is
already 6 × 16 K floats at head dim 64). Memory cost: n_chunks · |state| per (batch, head): Titans,
head dim 64 (A, Wg, momentum S: 6 matrices [256, 64] / [64, 256], 384 KiB fp32), T = 4096, c = 64
→ 24 MiB per (batch, head), 4× the TPU default (R = 4). With ``seg_chunks`` R > 1 only
``backward='xla'`` (the XLA reverse-recompute pass, pallas_tpu.xla_backward) is possible.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels.chunkwise_gpu import per_sequence_call
from pallas_kernels.mlp_memory.pallas_tpu import BACKWARDS, out_dim, xla_backward

F32 = jnp.float32


def _forward(chunk_fn, c, R, dv, interpret, toks, h0, consts):
  N, Tp = toks[0].shape[:2]
  n_seg = Tp // (c * R)
  nt, ns = len(toks), len(h0)
  shapes = [h.shape[1:] for h in h0]

  def kernel(*refs):
    tok_refs, h0_refs = refs[:nt], refs[nt : nt + ns]
    const_refs = refs[nt + ns : nt + ns + len(consts)]
    outs = refs[nt + ns + len(consts) :]
    y_ref, hT_refs, res_refs = outs[0], outs[1 : 1 + ns], outs[1 + ns :]
    K = tuple(r[...].astype(F32) for r in const_refs)

    def chunk(j, S):
      sl = pl.ds(j * c, c)
      y, S = chunk_fn(S, tuple(r[sl, :] for r in tok_refs[:-1]) + (tok_refs[-1][j],), K)
      y_ref[sl, :] = y.astype(y_ref.dtype)
      return S

    def segment(s, S):
      for rr, v in zip(res_refs, S):
        rr[s] = v
      return jax.lax.fori_loop(s * R, (s + 1) * R, chunk, S)

    S = jax.lax.fori_loop(0, n_seg, segment, tuple(r[...].astype(F32) for r in h0_refs))
    for hr, v in zip(hT_refs, S):
      hr[...] = v

  out_shape = [jax.ShapeDtypeStruct((N, Tp, dv), toks[0].dtype)]
  out_shape += [jax.ShapeDtypeStruct((N,) + sh, F32) for sh in shapes]
  out_shape += [jax.ShapeDtypeStruct((N, n_seg) + sh, F32) for sh in shapes]
  ins = (*toks, *h0, *consts)
  outs = per_sequence_call(kernel, ins, out_shape, interpret=interpret, name='mlp_memory_gpu_fwd')
  return outs[0], tuple(outs[1 : 1 + ns]), tuple(outs[1 + ns :])


def _backward(chunk_fn, c, interpret, toks, consts, res, dy, dhT):
  """The reverse pass as one kernel: grid ``(N,)``, one program per (batch, head) walks the chunks
  in reverse from the state saved at every chunk start (``res``, R = 1), applying ``jax.vjp`` of
  the chunk function traced inside the kernel (its forward is recomputed there: the key factors,
  reads and coefficients, never stored). Returns (d toks, d h0, d consts), fp32 but d toks in the
  toks' dtypes."""
  N, Tp = toks[0].shape[:2]
  n_chunks = Tp // c
  nt, ns, nc = len(toks), len(res), len(consts)

  def kernel(*refs):
    tok_refs, const_refs = refs[:nt], refs[nt : nt + nc]
    res_refs = refs[nt + nc : nt + nc + ns]
    dy_ref, dhT_refs = refs[nt + nc + ns], refs[nt + nc + ns + 1 : nt + nc + 2 * ns + 1]
    outs = refs[nt + nc + 2 * ns + 1 :]
    dtok_refs, dh0_refs, dK_refs = outs[:nt], outs[nt : nt + ns], outs[nt + ns :]
    K = tuple(r[...].astype(F32) for r in const_refs)

    def back(i, carry):
      dS, dK = carry
      j = n_chunks - 1 - i
      sl = pl.ds(j * c, c)
      x = tuple(r[sl, :].astype(F32) for r in tok_refs[:-1]) + (tok_refs[-1][j].astype(F32),)
      S = tuple(r[j] for r in res_refs)
      _, vjp = jax.vjp(lambda x, S, K: chunk_fn(S, x, K), x, S, K)
      dx, dS, dKj = vjp((dy_ref[sl, :].astype(F32), dS))
      for r, g in zip(dtok_refs[:-1], dx[:-1]):
        r[sl, :] = g.astype(r.dtype)
      dtok_refs[-1][j] = dx[-1].astype(dtok_refs[-1].dtype)
      return dS, tuple(a + b for a, b in zip(dK, dKj))

    init = (tuple(r[...] for r in dhT_refs), tuple(jnp.zeros(k.shape, F32) for k in K))
    dS, dK = jax.lax.fori_loop(0, n_chunks, back, init)
    for r, v in zip(dh0_refs, dS):
      r[...] = v
    for r, v in zip(dK_refs, dK):
      r[...] = v

  out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in toks]
  out_shape += [jax.ShapeDtypeStruct((N,) + r.shape[2:], F32) for r in res]
  out_shape += [jax.ShapeDtypeStruct(k.shape, F32) for k in consts]
  ins = (*toks, *consts, *res, dy, *dhT)
  outs = per_sequence_call(kernel, ins, out_shape, interpret=interpret, name='mlp_memory_gpu_bwd')
  return tuple(outs[:nt]), tuple(outs[nt : nt + ns]), tuple(outs[nt + ns :])


def mlp_segments_gpu(chunk_fn, c, R, interpret, toks, h0, consts, backward='kernel'):
  """As pallas_tpu.mlp_segments. ``backward``: 'kernel' (the Triton reverse pass; needs the
  residual at every chunk start, R = 1) or 'xla' (chunk_vjp.segment_backward)."""
  if backward not in BACKWARDS:
    raise ValueError(f'unknown backward {backward!r}; choose one of {BACKWARDS}')
  if backward == 'kernel' and R != 1:
    raise ValueError(
      f"backward='kernel' on the GPU lowering reads the state at every chunk start "
      f"(seg_chunks=1); got seg_chunks={R}: use backward='xla' or seg_chunks=1"
    )
  return _segments(chunk_fn, c, R, interpret, backward, toks, h0, consts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _segments(chunk_fn, c, R, interpret, backward, toks, h0, consts):
  del backward
  dv = out_dim(chunk_fn, c, toks, h0, consts)
  y, hT, _ = _forward(chunk_fn, c, R, dv, interpret, toks, h0, consts)
  return y, hT


def _fwd(chunk_fn, c, R, interpret, backward, toks, h0, consts):
  dv = out_dim(chunk_fn, c, toks, h0, consts)
  y, hT, res = _forward(chunk_fn, c, R, dv, interpret, toks, h0, consts)
  return (y, hT), (toks, consts, res)


def _bwd(chunk_fn, c, R, interpret, backward, saved, cts):
  if backward == 'xla':  # the XLA reverse-recompute pass from the saved states
    return xla_backward(chunk_fn, c, R, interpret, saved, cts)
  toks, consts, res = saved
  dy, dhT = cts
  dhT = tuple(d.astype(F32) for d in dhT)
  dtoks, dh0, dK = _backward(chunk_fn, c, interpret, toks, consts, res, dy, dhT)
  return dtoks, dh0, tuple(d.astype(k.dtype) for d, k in zip(dK, consts))


_segments.defvjp(_fwd, _bwd)
