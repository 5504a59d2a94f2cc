"""The deep-memory chunk segment on TPU (Mosaic): weights and momentum in VMEM across the chunks.

A generalisation of chunkwise_tpu.py from one state matrix to a *tuple* of them (the memory's
weights W_1 … W_L, their momentum, the gradient point; chunk.py): grid ``(N = batch·heads,
segments)``, a segment is ``R`` chunks walked by an in-kernel loop, every state matrix lives in a
VMEM scratch buffer for the whole sequence (segment axis 'arbitrary': sequential) and goes to HBM
once per segment as a residual (the segment-start state) when a gradient is wanted (transposed
where that removes lane padding, ``_flip``).

Backward (``jax.custom_vjp``, ``backward='kernel'``): grid ``(N, segments)`` visited in reverse,
as chunkwise_tpu.py's. Each step reloads the segment-start state tuple (the residual), recomputes
the ``R`` chunk-start states into a VMEM scratch, then walks the chunks backwards applying
``jax.vjp`` of the chunk function traced inside the kernel (the second-order terms of the inner
gradient — LayerNorm, GELU, the ℓp bias — are differentiated there, exactly as in XLA), with the
state cotangent tuple in VMEM across segments and the ``consts`` cotangents (W_0, LayerNorm /
outer parameters) summed over every chunk in VMEM, written once. Every token operand gets its
cotangent, including the last one (the per-token scalar tiles: η and the gates' prefix sums, so
the gates' gradient flows back through XLA's autodiff of ``chunk_sums``, api.py).
``backward='xla'``: the same reverse-recompute pass in XLA (miras_jax/memory/chunk_vjp.py
``segment_backward``, vmapped over N), kept for comparison (and the GPU driver's ``backward='xla'``).

Mosaic: the chunk VJP lowers for all six rules (v5e, v5p; tests/pallas_kernels/
test_mosaic_compile.py). The one primitive it could not lower was the VJP of a matrix-vector
product (an outer product: a ``dot_general`` with no contracting dimension), from the momentum
coefficient d = DwA · sdec, now a masked row sum (miras_jax/memory/coefficients.py).

Inputs: ``toks`` tuple of ``[N, Tp, d_i]`` (tokens; bf16 ones are cast to fp32 on chip) and last
``[N, n_chunks, n_vec, c]`` (per-token scalars, one lane-dense tile per chunk), ``h0`` tuple of
``[N, o, i]`` (state), ``consts`` tuple of ``[N, a, b]`` (reset target W_0, LayerNorm
parameters); ``Tp`` a multiple of ``c·R``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from miras_jax.memory.chunk_vjp import segment_backward

F32 = jnp.float32


def _tok_spec(x, c, R, rev_n=None):
  """[N, Tp, d] token operands (blocks of a segment's c·R tokens), or the last operand
  [N, n_chunks, n_vec, c] of per-token scalar tiles (blocks of R chunks). ``rev_n``: the number
  of segments, visited last to first (the backward)."""
  seg = (lambda s: s) if rev_n is None else (lambda s: rev_n - 1 - s)
  if x.ndim == 3:
    return pl.BlockSpec((1, c * R, x.shape[2]), lambda n, s: (n, seg(s), 0))
  return pl.BlockSpec((1, R) + x.shape[2:], lambda n, s: (n, seg(s), 0, 0))


def _f32(x):
  """bf16 token operands (q, k, v from api.py) in fp32: the chunk computes in fp32."""
  return x.astype(F32) if jnp.dtype(x.dtype).itemsize < 4 else x


def _chunk_slices(refs, j, c):
  start = pl.multiple_of(j * c, c)
  x = tuple(r[0, pl.ds(start, c), :] for r in refs[:-1]) + (refs[-1][0, j],)
  return tuple(_f32(v) for v in x), start


_LANES = 128  # the TPU vreg / HBM tile's lane count (tests lower it to exercise _flip)


def _flip(shape):
  """Whether a state matrix is saved transposed as a residual: [o, i] with i not a multiple of
  the lanes but o one (Titans' W_1 [4d, d] at d = 64) is lane-padded 2× in HBM; its transpose is
  not (measured, v5p, Titans 16 heads × 64, T = 4096: 48 MiB less in fwd+bwd temporaries)."""
  return len(shape) == 2 and shape[1] % _LANES != 0 and shape[0] % _LANES == 0


def _res_shape(shape):
  return tuple(shape)[::-1] if _flip(shape) else tuple(shape)


def _res_layout(x, shape):
  """A state matrix of shape ``shape`` ↔ its residual layout (a transpose where ``_flip``; its
  own inverse)."""
  return jnp.swapaxes(x, -1, -2) if _flip(shape) else x


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
      rr[0, 0] = _res_layout(sr[...], sr.shape)
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
    out_shape += [jax.ShapeDtypeStruct((N, n_seg) + _res_shape(sh), F32) for sh in shapes]
    out_specs += [pl.BlockSpec((1, 1) + _res_shape(sh), lambda n, s: (n, s, 0, 0)) for sh in shapes]
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


def _backward(chunk_fn, c, R, interpret, toks, consts, res, dy, dhT):
  """The kernel backward (module doc). res: segment-start states [N, n_seg, o, i]; dy [N, Tp, dv];
  dhT the final state's cotangents [N, o, i]. Returns (dtoks, dh0, dconsts), fp32 but dtoks (in
  the dtype of toks)."""
  N, Tp = toks[0].shape[:2]
  L = c * R
  n_seg = Tp // L
  nt, nc, ns = len(toks), len(consts), len(res)
  shapes = [tuple(dh.shape[1:]) for dh in dhT]
  kshapes = [k.shape[1:] for k in consts]
  dv = dy.shape[2]

  def kernel(*refs):
    refs = iter(refs)
    take = lambda n: tuple(next(refs) for _ in range(n))
    tok_refs, const_refs, res_refs = take(nt), take(nc), take(ns)
    (dy_ref,), dhT_refs = take(1), take(ns)
    dtok_refs, dh0_refs, dk_refs = take(nt), take(ns), take(nc)
    # VMEM scratch: the state cotangent (across segments), this segment's chunk-start states, the
    # consts' cotangents summed over every chunk so far.
    ds_refs, st_refs, acc_refs = take(ns), take(ns), take(nc)
    s = pl.program_id(1)

    @pl.when(s == 0)
    def _():
      for d, h in zip(ds_refs, dhT_refs):
        d[...] = h[0]
      for a in acc_refs:
        a[...] = jnp.zeros_like(a)

    K = tuple(r[0].astype(F32) for r in const_refs)
    S0 = tuple(_res_layout(h[0, 0], sh) for h, sh in zip(res_refs, shapes))
    for r, v in zip(st_refs, S0):
      r[0] = v

    def recompute(j, S):  # chunk-start states 1 … R − 1 (the last chunk's end is not needed)
      x, _ = _chunk_slices(tok_refs, j, c)
      S = chunk_fn(S, x, K)[1]
      for r, v in zip(st_refs, S):
        r[j + 1] = v
      return S

    jax.lax.fori_loop(0, R - 1, recompute, S0)

    def back(i, carry):
      dS, dK = carry
      j = R - 1 - i
      x, start = _chunk_slices(tok_refs, j, c)
      S = tuple(r[j] for r in st_refs)
      _, vjp = jax.vjp(lambda x, S, K: chunk_fn(S, x, K), x, S, K)
      dy_j = dy_ref[0, pl.ds(start, c), :].astype(F32)
      dx, dS, dKj = vjp((dy_j, dS))
      for r, g in zip(dtok_refs[:-1], dx[:-1]):
        r[0, pl.ds(start, c), :] = g.astype(r.dtype)
      dtok_refs[-1][0, j] = dx[-1].astype(dtok_refs[-1].dtype)
      return dS, tuple(a + b for a, b in zip(dK, dKj))

    init = (tuple(r[...] for r in ds_refs), tuple(r[...] for r in acc_refs))
    dS, dK = jax.lax.fori_loop(0, R, back, init)
    for r, v in zip(ds_refs, dS):
      r[...] = v
    for r, v in zip(acc_refs, dK):
      r[...] = v

    @pl.when(s == n_seg - 1)
    def _():
      for r, v in zip(dh0_refs, dS):
        r[0] = v
      for r, v in zip(dk_refs, dK):
        r[0] = v

  res_spec = lambda sh: pl.BlockSpec((1, 1) + _res_shape(sh), lambda n, s: (n, n_seg - 1 - s, 0, 0))
  out_shape = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in toks]
  out_shape += [jax.ShapeDtypeStruct((N,) + sh, F32) for sh in shapes + kshapes]
  outs = pl.pallas_call(
    kernel,
    grid=(N, n_seg),
    in_specs=[_tok_spec(x, c, R, n_seg) for x in toks]
    + [_mat_spec(sh) for sh in kshapes]
    + [res_spec(sh) for sh in shapes]
    + [pl.BlockSpec((1, L, dv), lambda n, s: (n, n_seg - 1 - s, 0))]
    + [_mat_spec(sh) for sh in shapes],
    out_specs=[_tok_spec(x, c, R, n_seg) for x in toks]
    + [_mat_spec(sh) for sh in shapes + kshapes],
    out_shape=out_shape,
    scratch_shapes=[pltpu.VMEM(sh, F32) for sh in shapes]
    + [pltpu.VMEM((R,) + sh, F32) for sh in shapes]
    + [pltpu.VMEM(sh, F32) for sh in kshapes],
    compiler_params=pltpu.CompilerParams(dimension_semantics=('parallel', 'arbitrary')),
    interpret=interpret,
    name=BWD_KERNEL,
  )(*toks, *consts, *res, dy, *dhT)
  return tuple(outs[:nt]), tuple(outs[nt : nt + ns]), tuple(outs[nt + ns :])


BWD_KERNEL = 'mlp_memory_bwd'  # the backward pallas_call's name (tests find it in compiled HLO)
BACKWARDS = ('kernel', 'xla')


def _body(chunk_fn):
  """chunk_vjp's ``body(carry, x, consts) -> (carry, y)`` from a kernel chunk function."""

  def body(carry, x, consts):
    y, S = chunk_fn(carry, x, consts)
    return S, y

  return body


def mlp_segments(chunk_fn, c, R, interpret, toks, h0, consts, backward='kernel'):
  """(y [N, Tp, dv] in toks[0]'s dtype, final state tuple [N, o, i] fp32); see the module doc.

  ``chunk_fn(S, x, K) -> (y [c, dv], S)`` on one (batch, head): S the state tuple, x the chunk's
  slices of ``toks`` ([c, d_i]), K the ``consts`` ([a, b]). ``backward``: 'kernel' | 'xla'."""
  if backward not in BACKWARDS:
    raise ValueError(f'unknown backward {backward!r}; choose one of {BACKWARDS}')
  return _segments(chunk_fn, c, R, interpret, backward, toks, h0, consts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1, 2, 3, 4))
def _segments(chunk_fn, c, R, interpret, backward, toks, h0, consts):
  del backward
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


def _fwd(chunk_fn, c, R, interpret, backward, toks, h0, consts):
  dv = out_dim(chunk_fn, c, toks, h0, consts)
  y, hT, res = _forward(chunk_fn, c, R, dv, True, interpret, toks, h0, consts)
  return (y, hT), (toks, consts, res)


def _bwd(chunk_fn, c, R, interpret, backward, saved, cts):
  toks, consts, res = saved
  if backward == 'xla':
    res = tuple(_res_layout(r, d.shape[1:]) for r, d in zip(res, cts[1]))
    return xla_backward(chunk_fn, c, R, interpret, (toks, consts, res), cts)
  dy, dhT = cts
  dhT = tuple(d.astype(F32) for d in dhT)
  dtoks, dh0, dK = _backward(chunk_fn, c, R, interpret, toks, consts, res, dy, dhT)
  return dtoks, dh0, tuple(d.astype(k.dtype) for d, k in zip(dK, consts))


def xla_backward(chunk_fn, c, R, interpret, saved, cts):
  """The custom VJP's XLA backward (chunk_vjp.segment_backward per (batch, head)); also the GPU
  driver's ``backward='xla'``."""
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
    tuple(seg(_f32(x)) for x in toks),
    consts32,
    tuple(d.astype(F32) for d in dhT),
    seg(dy.astype(F32)),
  )
  dtoks = tuple(d.reshape(x.shape).astype(x.dtype) for d, x in zip(dxs, toks))
  return dtoks, tuple(dS), tuple(d.astype(k.dtype) for d, k in zip(dK, consts))


_segments.defvjp(_fwd, _bwd)
