"""One Pallas TPU (Mosaic) driver for every chunked matrix-memory recurrence.

An op supplies a *chunk function* ``chunk_fn(toks, S0, W0) -> (y, S1)`` that maps one chunk of
``c`` tokens (a tuple of ``[c, d_i]`` arrays), the state at the chunk start ``S0 [dk, dv]`` (fp32)
and the reset target ``W0 [dk, dv]`` to the chunk's outputs ``y [c, dv]`` and the state after it.
This module runs it over a sequence:

* forward: grid ``(N = batch·heads, segments)``; a segment is ``R`` chunks processed by an
  in-kernel loop; the running state lives in a VMEM scratch buffer across the whole sequence (the
  segment axis is 'arbitrary': sequential), so it never goes back to HBM except once per segment
  as a *residual* (the segment-start state) when a gradient is wanted;
* backward (``jax.custom_vjp``): grid ``(N, segments)`` visited in reverse. Each step reloads the
  segment-start state, recomputes the ``R`` chunk-start states into VMEM, then walks the chunks
  backwards applying the chunk function's VJP (``jax.vjp`` traced inside the kernel: the chunk
  function is a pure composition of matmuls and element-wise ops, so its transpose is too) while
  the state cotangent ``dS`` stays in VMEM. Memory: ``N · T/(c·R)`` states, not one per token.

The same structure (state on chip across a sequence, recompute from chunk-level checkpoints in the
backward) is what flash-linear-attention's ``chunk_*`` Triton kernels and the Levanter/MaxText
gated-delta-rule Pallas kernels do (fla-org/flash-linear-attention ``fla/ops/common/chunk_h.py``;
marin-community/marin ``lib/levanter/src/levanter/layers/gated_deltanet.py``); the grid/scratch
idiom is the Pallas TPU one (docs.jax.dev, "Grids and BlockSpecs", "Pallas TPU pipelining").

Inputs: ``toks`` tuple of ``[N, Tp, d_i]`` with ``Tp`` a multiple of ``c·R``; the first ``n_diff``
are differentiated, the rest (integer-valued floats such as segment indices) get zero cotangents.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

F32 = jnp.float32


def _tok_spec(L, d, rev_n=None):
  if rev_n is None:
    return pl.BlockSpec((1, L, d), lambda n, s: (n, s, 0))
  return pl.BlockSpec((1, L, d), lambda n, s: (n, rev_n - 1 - s, 0))


def _mat_spec(dk, dv):
  return pl.BlockSpec((1, dk, dv), lambda n, s: (n, 0, 0))


def _params():
  return pltpu.CompilerParams(dimension_semantics=('parallel', 'arbitrary'))


def _chunk_slice(refs, j, c):
  start = pl.multiple_of(j * c, c)
  return tuple(r[0, pl.ds(start, c), :] for r in refs), start


def _forward(chunk_fn, c, R, dv, save, interpret, toks, h0, w0):
  N, Tp = toks[0].shape[:2]
  dk = h0.shape[1]
  L = c * R
  n_seg = Tp // L
  n_tok = len(toks)

  def kernel(*refs):
    tok_refs, (h0_ref, w0_ref) = refs[:n_tok], refs[n_tok : n_tok + 2]
    outs = refs[n_tok + 2 :]
    y_ref, hT_ref = outs[0], outs[1]
    res_ref = outs[2] if save else None
    s_ref = outs[-1]  # VMEM scratch: the running state
    s = pl.program_id(1)

    @pl.when(s == 0)
    def _():
      s_ref[...] = h0_ref[0].astype(F32)

    if save:
      res_ref[0, 0] = s_ref[...]
    W0 = w0_ref[0].astype(F32)

    def body(j, S):
      x, start = _chunk_slice(tok_refs, j, c)
      y, S = chunk_fn(x, S, W0)
      y_ref[0, pl.ds(start, c), :] = y.astype(y_ref.dtype)
      return S

    S = jax.lax.fori_loop(0, R, body, s_ref[...])
    s_ref[...] = S

    @pl.when(s == n_seg - 1)
    def _():
      hT_ref[0] = S

  out_shape = [
    jax.ShapeDtypeStruct((N, Tp, dv), toks[0].dtype),
    jax.ShapeDtypeStruct((N, dk, dv), F32),
  ]
  out_specs = [_tok_spec(L, dv), _mat_spec(dk, dv)]
  if save:
    out_shape.append(jax.ShapeDtypeStruct((N, n_seg, dk, dv), F32))
    out_specs.append(pl.BlockSpec((1, 1, dk, dv), lambda n, s: (n, s, 0, 0)))
  outs = pl.pallas_call(
    kernel,
    grid=(N, n_seg),
    in_specs=[_tok_spec(L, x.shape[2]) for x in toks] + [_mat_spec(dk, dv)] * 2,
    out_specs=out_specs,
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM((dk, dv), F32)],
    compiler_params=_params(),
    interpret=interpret,
    name='chunkwise_fwd',
  )(*toks, h0, w0)
  return outs


def _backward(chunk_fn, c, R, n_diff, interpret, toks, w0, res, dy, dhT):
  N, Tp = toks[0].shape[:2]
  n_seg, dk, dv = res.shape[1:]
  L = c * R
  n_tok = len(toks)

  def kernel(*refs):
    tok_refs = refs[:n_tok]
    w0_ref, res_ref, dy_ref, dhT_ref = refs[n_tok : n_tok + 4]
    outs = refs[n_tok + 4 :]
    dtok_refs = outs[:n_diff]
    dh0_ref, dw0_ref = outs[n_diff], outs[n_diff + 1]
    ds_ref, states_ref, dw_ref = outs[n_diff + 2 :]
    s = pl.program_id(1)

    @pl.when(s == 0)
    def _():
      ds_ref[...] = dhT_ref[0]
      dw_ref[...] = jnp.zeros_like(dw_ref)

    W0 = w0_ref[0].astype(F32)

    def recompute(j, S):  # chunk-start states of this segment, into VMEM
      states_ref[j] = S
      x, _ = _chunk_slice(tok_refs, j, c)
      return chunk_fn(x, S, W0)[1]

    jax.lax.fori_loop(0, R, recompute, res_ref[0, 0])

    def back(i, carry):
      dS, dW = carry
      j = R - 1 - i
      x, start = _chunk_slice(tok_refs, j, c)
      diff, rest = x[:n_diff], x[n_diff:]
      f = lambda d, S, W: chunk_fn(tuple(d) + rest, S, W)
      _, vjp = jax.vjp(f, diff, states_ref[j], W0)
      dy_j = dy_ref[0, pl.ds(start, c), :].astype(F32)
      dd, dS, dWj = vjp((dy_j, dS))
      for r, g in zip(dtok_refs, dd):
        r[0, pl.ds(start, c), :] = g.astype(r.dtype)
      return dS, dW + dWj

    dS, dW = jax.lax.fori_loop(0, R, back, (ds_ref[...], dw_ref[...]))
    ds_ref[...] = dS
    dw_ref[...] = dW

    @pl.when(s == n_seg - 1)
    def _():
      dh0_ref[0] = dS
      dw0_ref[0] = dW

  out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in toks[:n_diff]] + [
    jax.ShapeDtypeStruct((N, dk, dv), F32)
  ] * 2
  return pl.pallas_call(
    kernel,
    grid=(N, n_seg),
    in_specs=[_tok_spec(L, x.shape[2], n_seg) for x in toks]
    + [
      _mat_spec(dk, dv),
      pl.BlockSpec((1, 1, dk, dv), lambda n, s: (n, n_seg - 1 - s, 0, 0)),
      _tok_spec(L, dv, n_seg),
      _mat_spec(dk, dv),
    ],
    out_specs=[_tok_spec(L, x.shape[2], n_seg) for x in toks[:n_diff]] + [_mat_spec(dk, dv)] * 2,
    out_shape=out_shape,
    scratch_shapes=[
      pltpu.VMEM((dk, dv), F32),
      pltpu.VMEM((R, dk, dv), F32),
      pltpu.VMEM((dk, dv), F32),
    ],
    compiler_params=_params(),
    interpret=interpret,
    name='chunkwise_bwd',
  )(*toks, w0, res, dy, dhT)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def chunkwise(chunk_fn, c, R, n_diff, interpret, toks, h0, w0):
  """(y [N, Tp, dv] in toks[0]'s dtype, final state [N, dk, dv] fp32); see the module doc."""
  dv = h0.shape[2]
  y, hT = _forward(chunk_fn, c, R, dv, False, interpret, toks, h0, w0)
  return y, hT


def _fwd(chunk_fn, c, R, n_diff, interpret, toks, h0, w0):
  dv = h0.shape[2]
  y, hT, res = _forward(chunk_fn, c, R, dv, True, interpret, toks, h0, w0)
  return (y, hT), (toks, w0, res)


def _bwd(chunk_fn, c, R, n_diff, interpret, saved, cts):
  toks, w0, res = saved
  dy, dhT = cts
  outs = _backward(chunk_fn, c, R, n_diff, interpret, toks, w0, res, dy, dhT.astype(F32))
  dtoks = tuple(outs[:n_diff]) + tuple(jnp.zeros_like(x) for x in toks[n_diff:])
  dh0, dw0 = outs[n_diff], outs[n_diff + 1]
  return dtoks, dh0, dw0.astype(w0.dtype)


chunkwise.defvjp(_fwd, _bwd)
