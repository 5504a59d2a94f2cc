"""A scan over chunks with a reverse-recompute backward (issue 13, "The XLA path's backward").

``segment_scan(body, carry, xs, consts)`` is ``lax.scan`` over ``xs [n_seg, R, ...]`` (segments of
R chunks) with a ``jax.custom_vjp`` whose residuals are the carries at the segment starts (the
memory's weights and momentum), never per-token or per-chunk intermediates. The backward walks the
segments in reverse: it recomputes the segment's R chunk-start carries from the saved one (R − 1
chunk state updates), then walks its chunks in reverse applying ``jax.vjp`` of the chunk body at
each (``chunk_vjp``: the chunk's forward is re-run once more inside the VJP). The chunk body's inner
gradient (the memory's own backprop at the chunk-start weights) is differentiated by that VJP, so
the second-order terms are exact.

Cost (issue 13; ``scripts/bench_memory.py --chunk_flops``, XLA's FLOP count of one chunk): the VJP
is 2.7–3.0× the chunk's forward, of which ≈ 2× is the backward proper (two matmuls per forward
matmul, every operand needing a gradient) and ≈ 0.7× the recompute of the reads and key factors it
needs. XLA already drops the unused parts (the state update, the outputs), so a hand-written
backward would do the same matmuls; fwd+bwd is ≥ 3.7× the forward with one chunk per segment and
≥ 4.1× with four (Titans), against ≥ 3.0× with no recompute at all.

This is the structure of the Pallas drivers' backward (pallas_kernels/chunkwise_tpu.py) and of
flash-linear-attention's chunked kernels (fla-org/flash-linear-attention
``fla/ops/common/chunk_h.py``: chunk-level states, recompute in the backward). The Pallas deep-memory
kernel (pallas_kernels/mlp_memory) uses ``segment_backward`` as its GPU backward and as the TPU
kernel's ``backward='xla'`` (the default there is the same pass as a Pallas kernel).

Integer leaves (the in-chunk position) are carried but not differentiated (float0 cotangents).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def _part(tree, mask=None):
  """(differentiable leaves, other leaves, meta); ``mask`` from another tree of the same shape."""
  leaves, td = jax.tree.flatten(tree)
  if mask is None:
    mask = tuple(jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in leaves)
  d = [x for x, m in zip(leaves, mask) if m]
  n = [x for x, m in zip(leaves, mask) if not m]
  return d, n, (td, mask)


def _join(d, n, meta):
  td, mask = meta
  di, ni = iter(d), iter(n)
  return td.unflatten([next(di) if m else next(ni) for m in mask])


def _float0_like(x):
  return np.zeros(np.shape(x), jax.dtypes.float0)


def _cotangent(primal, d):
  """A cotangent tree for ``primal``: ``d`` on its differentiable leaves, float0 elsewhere."""
  _, n, meta = _part(primal)
  return _join(d, [_float0_like(x) for x in n], meta)


def _forward(body, carry, xs, consts, save):
  def seg(c, xg):
    c2, yg = jax.lax.scan(lambda cc, x: body(cc, x, consts), c, xg)
    return c2, ((yg, c) if save else yg)

  return jax.lax.scan(seg, carry, xs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def segment_scan(body, carry, xs, consts):
  """``body(carry, x, consts) -> (carry, y)`` over ``xs`` leaves ``[n_seg, R, ...]``.

  Returns (final carry, ys [n_seg, R, ...]); same values as two nested ``lax.scan``."""
  return _forward(body, carry, xs, consts, save=False)


def _fwd(body, carry, xs, consts):
  c, (ys, starts) = _forward(body, carry, xs, consts, save=True)
  return (c, ys), (starts, xs, consts)


def chunk_vjp(body, c, x, consts, dc, dy):
  """One chunk's step of the reverse pass: the VJP of ``body`` at chunk-start carry ``c`` (its
  forward recomputed inside; XLA drops the parts the VJP does not use). dc: differentiable leaves
  of the chunk-end carry's cotangent; dy: the outputs' cotangent. Returns the differentiable
  leaves' cotangents (dc, dx, dconsts), lists."""
  (cd, cn, cmeta), (xd, xn, xmeta), (kd, kn, kmeta) = _part(c), _part(x), _part(consts)

  def f(cd, xd, kd):
    c2, y = body(_join(cd, cn, cmeta), _join(xd, xn, xmeta), _join(kd, kn, kmeta))
    return _part(c2)[0], y

  _, vjp = jax.vjp(f, cd, xd, kd)
  return vjp((dc, dy))


def segment_backward(body, starts, xs, consts, dcarry, dys):
  """The reverse pass from segment-start carries ``starts`` (leaves [n_seg, ...]).

  dcarry: differentiable leaves (list) of the final carry's cotangent; dys [n_seg, R, ...].
  Returns (dcarry0 leaves, dxs leaves [n_seg, R, ...] (differentiable ones), dconsts leaves)."""
  kd = _part(consts)[0]

  def chunk_back(acc, inp):
    dc, dk = acc
    c, x, dy = inp
    dcd, dxd, dkd = chunk_vjp(body, c, x, consts, dc, dy)
    return (dcd, [a + b for a, b in zip(dk, dkd)]), dxd

  def seg_back(acc, inp):
    s0, xg, dyg = inp
    # The chunk-start carries of this segment (R − 1 chunk forwards: the last chunk's end carry is
    # not needed), then the chunks in reverse.
    step = lambda c, x: (body(c, x, consts)[0],) * 2
    _, later = jax.lax.scan(step, s0, jax.tree.map(lambda x: x[:-1], xg))
    cstarts = jax.tree.map(lambda a, b: jnp.concatenate([a[None], b]), s0, later)
    return jax.lax.scan(chunk_back, acc, (cstarts, xg, dyg), reverse=True)

  dk0 = [jnp.zeros_like(x) for x in kd]
  (dc, dk), dxs = jax.lax.scan(seg_back, (dcarry, dk0), (starts, xs, dys), reverse=True)
  return dc, dxs, dk


def _bwd(body, res, cts):
  starts, xs, consts = res
  dcarry, dys = cts
  carry0 = jax.tree.map(lambda x: x[0], starts)
  _, _, cmeta = _part(carry0)
  dc_in = _part(dcarry, cmeta[1])[0]
  dc, dxs, dk = segment_backward(body, starts, xs, consts, dc_in, dys)
  return _cotangent(carry0, dc), _cotangent(xs, dxs), _cotangent(consts, dk)


segment_scan.defvjp(_fwd, _bwd)
