"""The deep-memory chunk segment on TPU (Mosaic): weights and momentum in VMEM across the chunks.

A generalisation of chunkwise_tpu.py from one state matrix to a *tuple* of them (the memory's
weights W_1 … W_L, their momentum, the gradient point; chunk.py): grid ``(N = batch·heads,
segments)``, a segment is ``R`` chunks walked by an in-kernel loop, every state matrix lives in a
VMEM scratch buffer for the whole sequence (segment axis 'arbitrary': sequential) and goes to HBM
once per segment as a residual (the segment-start state) when a gradient is wanted.

Backward (``jax.custom_vjp``): the reverse-recompute pass of miras_jax/memory/chunk_vjp.py in XLA
(``segment_backward``, vmapped over N) from those residuals: it recomputes each segment's chunk
starts and applies the chunk's VJP in reverse chunk order. It is not a kernel yet: the chunk VJP
holds second-order terms of the inner gradient (LayerNorm, GELU) whose traced form inside Mosaic
is unmeasured; the forward is where the weights-on-chip saving is largest (no per-chunk HBM round
trip of the weights).

Inputs: ``toks`` tuple of ``[N, Tp, d_i]`` (tokens) and last ``[N, n_chunks, n_vec, c]`` (per-token
scalars, one lane-dense tile per chunk), ``h0`` tuple of ``[N, o, i]`` (state), ``consts`` tuple of
``[N, a, b]`` (reset target W_0, LayerNorm parameters); ``Tp`` a multiple of ``c·R``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from miras_jax.memory.chunk_vjp import segment_backward

F32 = jnp.float32


def _tok_spec(x, c, R):
  """[N, Tp, d] token operands (blocks of a segment's c·R tokens), or the last operand
  [N, n_chunks, n_vec, c] of per-token scalar tiles (blocks of R chunks)."""
  if x.ndim == 3:
    return pl.BlockSpec((1, c * R, x.shape[2]), lambda n, s: (n, s, 0))
  return pl.BlockSpec((1, R) + x.shape[2:], lambda n, s: (n, s, 0, 0))


def _chunk_slices(refs, j, c):
  start = pl.multiple_of(j * c, c)
  return tuple(r[0, pl.ds(start, c), :] for r in refs[:-1]) + (refs[-1][0, j],), start


def _mat_spec(shape):
  return pl.BlockSpec((1,) + tuple(shape), lambda n, s: (n, 0, 0))


def _forward(chunk_fn, c, R, dv, save, interpret, toks, h0, consts):
  N, Tp = toks[0].shape[:2]
  L = c * R
  n_seg = Tp // L
  nt, ns, nc = len(toks), len(h0), len(consts)

  def kernel(*refs):
    tok_refs = refs[:nt]
    h0_refs = refs[nt : nt + ns]
    const_refs = refs[nt + ns : nt + ns + nc]
    outs = refs[nt + ns + nc :]
    y_ref, hT_refs = outs[0], outs[1 : 1 + ns]
    res_refs = outs[1 + ns : 1 + 2 * ns] if save else ()
    s_refs = outs[-ns:]  # VMEM scratch: the running state
    s = pl.program_id(1)

    @pl.when(s == 0)
    def _():
      for sr, hr in zip(s_refs, h0_refs):
        sr[...] = hr[0].astype(F32)

    for rr, sr in zip(res_refs, s_refs):
      rr[0, 0] = sr[...]
    K = tuple(r[0].astype(F32) for r in const_refs)

    def body(j, S):
      x, start = _chunk_slices(tok_refs, j, c)
      y, S = chunk_fn(S, x, K)
      y_ref[0, pl.ds(start, c), :] = y.astype(y_ref.dtype)
      return S

    S = jax.lax.fori_loop(0, R, body, tuple(sr[...] for sr in s_refs))
    for sr, v in zip(s_refs, S):
      sr[...] = v

    @pl.when(s == n_seg - 1)
    def _():
      for hr, v in zip(hT_refs, S):
        hr[0] = v

  shapes = [h.shape[1:] for h in h0]
  out_shape = [jax.ShapeDtypeStruct((N, Tp, dv), toks[0].dtype)]
  out_shape += [jax.ShapeDtypeStruct((N,) + sh, F32) for sh in shapes]
  out_specs = [pl.BlockSpec((1, L, dv), lambda n, s: (n, s, 0))] + [_mat_spec(sh) for sh in shapes]
  if save:
    out_shape += [jax.ShapeDtypeStruct((N, n_seg) + sh, F32) for sh in shapes]
    out_specs += [pl.BlockSpec((1, 1) + sh, lambda n, s: (n, s, 0, 0)) for sh in shapes]
  outs = pl.pallas_call(
    kernel,
    grid=(N, n_seg),
    in_specs=[_tok_spec(x, c, R) for x in toks]
    + [_mat_spec(h.shape[1:]) for h in h0]
    + [_mat_spec(k.shape[1:]) for k in consts],
    out_specs=out_specs,
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM(sh, F32) for sh in shapes],
    compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel', 'arbitrary')),
    interpret=interpret,
    name='mlp_memory_fwd',
  )(*toks, *h0, *consts)
  y, hT = outs[0], tuple(outs[1 : 1 + len(h0)])
  return y, hT, (tuple(outs[1 + len(h0) :]) if save else None)


def _body(chunk_fn):
  """chunk_vjp's ``body(carry, x, consts) -> (carry, y)`` from a kernel chunk function."""

  def body(carry, x, consts):
    y, S = chunk_fn(carry, x, consts)
    return S, y

  return body


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3))
def mlp_segments(chunk_fn, c, R, interpret, toks, h0, consts):
  """(y [N, Tp, dv] in toks[0]'s dtype, final state tuple [N, o, i] fp32); see the module doc.

  ``chunk_fn(S, x, K) -> (y [c, dv], S)`` on one (batch, head): S the state tuple, x the chunk's
  slices of ``toks`` ([c, d_i]), K the ``consts`` ([a, b])."""
  dv = out_dim(chunk_fn, c, toks, h0, consts)
  y, hT, _ = _forward(chunk_fn, c, R, dv, False, interpret, toks, h0, consts)
  return y, hT


def out_dim(chunk_fn, c, toks, h0, consts):
  """d_v of the chunk function's output (abstract evaluation)."""
  x = tuple(jax.ShapeDtypeStruct((c,) + t.shape[2:], t.dtype) for t in toks[:-1])
  x += (jax.ShapeDtypeStruct(toks[-1].shape[2:], toks[-1].dtype),)
  S = tuple(jax.ShapeDtypeStruct(h.shape[1:], F32) for h in h0)
  K = tuple(jax.ShapeDtypeStruct(k.shape[1:], F32) for k in consts)
  return jax.eval_shape(chunk_fn, S, x, K)[0].shape[-1]


def _fwd(chunk_fn, c, R, interpret, toks, h0, consts):
  dv = out_dim(chunk_fn, c, toks, h0, consts)
  y, hT, res = _forward(chunk_fn, c, R, dv, True, interpret, toks, h0, consts)
  return (y, hT), (toks, consts, res)


def xla_backward(chunk_fn, c, R, interpret, saved, cts):
  """The custom VJP's backward (chunk_vjp.segment_backward per (batch, head)); shared by the
  GPU lowering."""
  del interpret
  toks, consts, res = saved
  dy, dhT = cts
  N, Tp = toks[0].shape[:2]
  n_seg = Tp // (c * R)
  seg = lambda x: x.reshape((N, n_seg, R) + ((c,) + x.shape[2:] if x.ndim == 3 else x.shape[2:]))
  consts32 = tuple(k.astype(F32) for k in consts)

  def one(starts, xs, K, dS, dys):
    return segment_backward(_body(chunk_fn), starts, xs, K, list(dS), dys)

  dS, dxs, dK = jax.vmap(one)(
    res,
    tuple(seg(x) for x in toks),
    consts32,
    tuple(d.astype(F32) for d in dhT),
    seg(dy.astype(F32)),
  )
  dtoks = tuple(d.reshape(x.shape).astype(x.dtype) for d, x in zip(dxs, toks))
  return dtoks, tuple(dS), tuple(d.astype(k.dtype) for d, k in zip(dK, consts))


mlp_segments.defvjp(_fwd, xla_backward)
