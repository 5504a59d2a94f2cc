"""The deep-memory chunk segment on GPU (Pallas' Triton lowering). NOT YET RUN ON A GPU: tested
only in interpret mode on CPU; the GPU session must run tests and scripts/bench_kernels.py first.

As chunkwise_gpu.py: grid ``(N,)``, one program per (batch, head) walks every chunk of the
sequence with the state tuple in registers (Triton has no scratch persisting across grid steps),
and writes the state at every segment start (``R`` chunks) as the residual. The backward is the
same XLA reverse-recompute pass as on TPU (pallas_tpu.xla_backward).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import platform
from pallas_kernels.mlp_memory.pallas_tpu import out_dim, xla_backward

F32 = jnp.float32


def _seq_spec(shape):
  return pl.BlockSpec((None,) + tuple(shape[1:]), lambda n: (n,) + (0,) * (len(shape) - 1))


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
  outs = pl.pallas_call(
    kernel,
    grid=(N,),
    in_specs=[_seq_spec(x.shape) for x in tuple(toks) + tuple(h0) + tuple(consts)],
    out_specs=[_seq_spec(o.shape) for o in out_shape],
    out_shape=out_shape,
    interpret=interpret,
    compiler_params=None if interpret else platform.gpu_params(),
    name='mlp_memory_gpu_fwd',
  )(*toks, *h0, *consts)
  return outs[0], tuple(outs[1 : 1 + ns]), tuple(outs[1 + ns :])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def mlp_segments_gpu(chunk_fn, c, R, interpret, toks, h0, consts):
  """As pallas_tpu.mlp_segments."""
  dv = out_dim(chunk_fn, c, toks, h0, consts)
  y, hT, _ = _forward(chunk_fn, c, R, dv, interpret, toks, h0, consts)
  return y, hT


def _fwd(chunk_fn, c, R, interpret, toks, h0, consts):
  dv = out_dim(chunk_fn, c, toks, h0, consts)
  y, hT, res = _forward(chunk_fn, c, R, dv, interpret, toks, h0, consts)
  return (y, hT), (toks, consts, res)


mlp_segments_gpu.defvjp(_fwd, xla_backward)
