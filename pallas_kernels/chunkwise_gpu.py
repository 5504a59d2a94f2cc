"""The chunkwise driver for GPUs (Pallas' Triton lowering). NOT YET RUN ON A GPU: tested in
interpret mode on CPU (tests/pallas_kernels/test_pallas_gpu_interpret.py) and lowered to Triton IR
for CUDA from the CPU (test_triton_lowering.py: no primitive or dtype pair Triton lacks); the GPU
session must run tests and scripts/bench_kernels.py before it is called done. Chunk functions for
it take no value slices and pass ``chunk_math.Operands`` as their dtype (see README.md).

Same chunk functions and contract as chunkwise_tpu.py; the GPU form differs where Triton does:
* grid ``(N,)``: one program per (batch, head) walks the chunks in an in-kernel loop, the running
  state in registers (Triton has no scratch memory persisting across grid steps);
* residuals: the state at *every* chunk start (R = 1), as flash-linear-attention's
  ``chunk_fwd_h`` stores ``h`` per chunk (fla/ops/common/chunk_h.py) — a program cannot re-read
  what its other threads just wrote to global memory without a barrier, so the backward cannot
  recompute a segment into a buffer; it recomputes only inside the chunk (the chunk VJP).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from pallas_kernels import platform

F32 = jnp.float32


def _seq_spec(shape):
  return pl.BlockSpec((None,) + tuple(shape[1:]), lambda n: (n,) + (0,) * (len(shape) - 1))


def per_sequence_call(kernel, ins, out_shape, *, interpret, name):
  """``kernel`` on a grid ``(N,)``, one program per (batch, head): every operand in ``ins`` and
  every output in ``out_shape`` is ``[N, ...]`` and a program sees its own ``[...]`` block, the
  whole sequence (the GPU drivers' layout, here and in mlp_memory/pallas_gpu.py). Triton compiler
  parameters unless in interpret mode (platform.gpu_params)."""
  return pl.pallas_call(
    kernel,
    grid=(ins[0].shape[0],),
    in_specs=[_seq_spec(x.shape) for x in ins],
    out_specs=[_seq_spec(o.shape) for o in out_shape],
    out_shape=out_shape,
    interpret=interpret,
    compiler_params=None if interpret else platform.gpu_params(),
    name=name,
  )(*ins)


def _forward(chunk_fn, c, dv, interpret, toks, h0, w0):
  N, Tp = toks[0].shape[:2]
  dk = h0.shape[1]
  n_chunks = Tp // c
  n_tok = len(toks)

  def kernel(*refs):
    tok_refs, (h0_ref, w0_ref) = refs[:n_tok], refs[n_tok : n_tok + 2]
    y_ref, hT_ref, res_ref = refs[n_tok + 2 :]
    W0 = w0_ref[...].astype(F32)

    def body(j, S):
      sl = pl.ds(j * c, c)
      res_ref[j] = S
      y, S = chunk_fn(tuple(r[sl, :] for r in tok_refs), S, W0)
      y_ref[sl, :] = y.astype(y_ref.dtype)
      return S

    hT_ref[...] = jax.lax.fori_loop(0, n_chunks, body, h0_ref[...].astype(F32))

  out_shape = [
    jax.ShapeDtypeStruct((N, Tp, dv), toks[0].dtype),
    jax.ShapeDtypeStruct((N, dk, dv), F32),
    jax.ShapeDtypeStruct((N, n_chunks, dk, dv), F32),
  ]
  ins = (*toks, h0, w0)
  return per_sequence_call(kernel, ins, out_shape, interpret=interpret, name='chunkwise_gpu_fwd')


def _backward(chunk_fn, c, n_diff, interpret, toks, w0, res, dy, dhT):
  N, Tp = toks[0].shape[:2]
  n_chunks, dk, dv = res.shape[1:]
  n_tok = len(toks)

  def kernel(*refs):
    tok_refs = refs[:n_tok]
    w0_ref, res_ref, dy_ref, dhT_ref = refs[n_tok : n_tok + 4]
    outs = refs[n_tok + 4 :]
    dtok_refs, dh0_ref, dw0_ref = outs[:n_diff], outs[n_diff], outs[n_diff + 1]
    W0 = w0_ref[...].astype(F32)

    def back(i, carry):
      dS, dW = carry
      j = n_chunks - 1 - i
      sl = pl.ds(j * c, c)
      x = tuple(r[sl, :] for r in tok_refs)
      rest = x[n_diff:]
      f = lambda d, S, W: chunk_fn(tuple(d) + rest, S, W)
      _, vjp = jax.vjp(f, x[:n_diff], res_ref[j], W0)
      dd, dS, dWj = vjp((dy_ref[sl, :].astype(F32), dS))
      for r, g in zip(dtok_refs, dd):
        r[sl, :] = g.astype(r.dtype)
      return dS, dW + dWj

    dS, dW = jax.lax.fori_loop(
      0, n_chunks, back, (dhT_ref[...].astype(F32), jnp.zeros((dk, dv), F32))
    )
    dh0_ref[...] = dS
    dw0_ref[...] = dW

  out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in toks[:n_diff]] + [
    jax.ShapeDtypeStruct((N, dk, dv), F32)
  ] * 2
  ins = (*toks, w0, res, dy, dhT)
  return per_sequence_call(kernel, ins, out_shape, interpret=interpret, name='chunkwise_gpu_bwd')


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def chunkwise_gpu(chunk_fn, c, n_diff, interpret, toks, h0, w0):
  """(y [N, Tp, dv], final state [N, dk, dv] fp32); Tp a multiple of c."""
  y, hT, _ = _forward(chunk_fn, c, h0.shape[2], interpret, toks, h0, w0)
  return y, hT


def _fwd(chunk_fn, c, n_diff, interpret, toks, h0, w0):
  y, hT, res = _forward(chunk_fn, c, h0.shape[2], interpret, toks, h0, w0)
  return (y, hT), (toks, w0, res)


def _bwd(chunk_fn, c, n_diff, interpret, saved, cts):
  toks, w0, res = saved
  dy, dhT = cts
  outs = _backward(chunk_fn, c, n_diff, interpret, toks, w0, res, dy, dhT.astype(F32))
  dtoks = tuple(outs[:n_diff]) + tuple(jnp.zeros_like(x) for x in toks[n_diff:])
  return dtoks, outs[n_diff], outs[n_diff + 1].astype(w0.dtype)


chunkwise_gpu.defvjp(_fwd, _bwd)
