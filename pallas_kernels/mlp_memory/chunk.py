"""The kernel's chunk function: the memory core's general chunk (miras_jax.memory.chunked
``chunk_core``) on flat tuples of on-chip arrays.

Nothing of the math is restated here: the key forward at the chunk-start weights, the analytic
inner gradient (the architecture's backprop, the bias's ∂ℓ/∂p), the in-chunk decay / momentum
coefficients' dual-form reads and the primal update are ``chunk_core``'s, for any (architecture,
bias, retention, algorithm) it handles. This module only maps the kernel's operands onto its
arguments: the state dict ↔ a tuple of 2-D matrices (scalars as [1, 1]; ``pos`` is 0 at every chunk
start, the kernel's chunks being aligned), per-token scalars as rows of one tile, the chunk
coefficients built from the per-token prefix sums (``chunk_sums``, api.py) by the core's own
``coefficients_from_sums``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from miras_jax.memory.chunked import chunk_core, coefficients_from_sums
from miras_jax.memory.common import take_row

# Per-token operands of the kernel, in order; VECTORS are scalars per token, packed as the rows of
# one [n_vec, c] tile per chunk (the last operand; rows zero-padded to a power of two, api.py).
# 'lm' (log μ_t, the momentum gate per token) only for a step_scale rule with momentum: its step
# factor reads μ_t itself (rules.step_factors), not only the chunk's prefix sums 'cm'.
TOKENS = ('q', 'k', 'v', 'eta', 'active', 'lm', 'delta')
SUMS = ('segl', 'cum', 'log_a', 'cm')  # chunked.chunk_sums
VECTORS = ('eta', 'active', 'lm') + SUMS


def as_2d(shape):
  return tuple(shape) if len(shape) == 2 else (1, max(1, math.prod(shape)))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static description of the operand tuples (hashable: the kernel is cached on it)."""

  names: tuple  # per-token operands [c, d] present (TOKENS then SUMS, not VECTORS)
  vec_names: tuple  # the rows of the per-token scalar tile [n_vec, c]
  state_def: object  # treedef of the state dict without 'pos'
  state_shapes: tuple
  fresh_def: object
  fresh_shapes: tuple
  outer_def: object
  outer_shapes: tuple
  read_rows: int = 1  # chunked.chunk_core's (16 for the Triton lowering)


def _unflat(td, shapes, leaves):
  return jax.tree.unflatten(td, [x.reshape(s) for x, s in zip(leaves, shapes)])


def _rows(tile, n):
  """The first n rows of a [m, c] tile as [c] vectors, slice-free (Triton lowers no ``slice``;
  common.take_row)."""
  return tuple(take_row(tile, i) for i in range(n))


def mlp_chunk(rule, resets, lay: Layout, S, x, K):
  """(y [c, dv], new state tuple) for one chunk; S, K tuples of 2-D arrays, x of [c, ·]."""
  pos = jnp.zeros((), jnp.int32)
  st = dict(_unflat(lay.state_def, lay.state_shapes, S), pos=pos)
  nf = len(lay.fresh_shapes)
  fresh = dict(_unflat(lay.fresh_def, lay.fresh_shapes, K[:nf]), pos=pos)
  outer = _unflat(lay.outer_def, lay.outer_shapes, K[nf:])
  ops = dict(zip(lay.names, x[:-1]))
  ops.update(
    zip(lay.vec_names, _rows(x[-1], len(lay.vec_names)))
  )  # the [n_vec, c] tile of per-token scalars
  tok = {n: ops.get(n) for n in TOKENS}
  co = coefficients_from_sums({n: ops.get(n) for n in SUMS}, tok['eta'], tok['active'])
  # A float mask: Mosaic cannot extract a bool scalar (the chunk end's cont[-1]) from a vector.
  co['cont'] = co['cont'].astype(jnp.float32)
  new, y = chunk_core(rule, resets, st, tok, co, fresh, outer, read_rows=lay.read_rows)
  new = dict(new)
  new.pop('pos')
  leaves = jax.tree.leaves(new)
  return y, tuple(v.reshape(as_2d(v.shape)).astype(jnp.float32) for v in leaves)


@functools.lru_cache(maxsize=None)
def chunk_fn(rule, resets, lay: Layout):
  return functools.partial(mlp_chunk, rule, resets, lay)
