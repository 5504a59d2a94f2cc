"""The kernel's chunk function: the memory core's general chunk (miras_jax.memory.chunked
``chunk_core``) on flat tuples of on-chip arrays.

Nothing of the math is restated here: the key forward at the chunk-start weights, the analytic
inner gradient (the architecture's backprop, the bias's ∂ℓ/∂p), the in-chunk decay / momentum
coefficients' dual-form reads and the primal update are ``chunk_core``'s, for any (architecture,
bias, retention, algorithm) it handles. This module only maps the kernel's operands onto its
arguments: the state dict ↔ a tuple of 2-D matrices (scalars as [1, 1]; ``pos`` is 0 at every chunk
start, the kernel's chunks being aligned), per-token vectors as [c, 1] columns, the chunk
coefficients (computed outside the kernel, api.py) as [c, c] / [c, 1] slices.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp

from miras_jax.memory.chunked import chunk_core

# Per-token operands of the kernel, in order; 'vec': a [c, 1] column read as [c].
TOKENS = ('q', 'k', 'v', 'active', 'delta')
COEFFS = ('cont', 'a', 'C', 'd', 'Cs', 'sdec')
VECTORS = ('active', 'cont', 'a', 'd', 'sdec')


def as_2d(shape):
  return tuple(shape) if len(shape) == 2 else (1, max(1, math.prod(shape)))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Static description of the operand tuples (hashable: the kernel is cached on it)."""

  names: tuple  # names of the per-token operands present (TOKENS then COEFFS)
  state_def: object  # treedef of the state dict without 'pos'
  state_shapes: tuple
  fresh_def: object
  fresh_shapes: tuple
  outer_def: object
  outer_shapes: tuple


def _unflat(td, shapes, leaves):
  return jax.tree.unflatten(td, [x.reshape(s) for x, s in zip(leaves, shapes)])


def mlp_chunk(rule, resets, lay: Layout, S, x, K):
  """(y [c, dv], new state tuple) for one chunk; S, K tuples of 2-D arrays, x of [c, ·]."""
  pos = jnp.zeros((), jnp.int32)
  st = dict(_unflat(lay.state_def, lay.state_shapes, S), pos=pos)
  nf = len(lay.fresh_shapes)
  fresh = dict(_unflat(lay.fresh_def, lay.fresh_shapes, K[:nf]), pos=pos)
  outer = _unflat(lay.outer_def, lay.outer_shapes, K[nf:])
  ops = {n: (a[:, 0] if n in VECTORS else a) for n, a in zip(lay.names, x)}
  tok = {n: ops.get(n) for n in TOKENS}
  co = {n: ops[n] for n in COEFFS if n in ops}
  new, y = chunk_core(rule, resets, st, tok, co, fresh, outer)
  new = dict(new)
  new.pop('pos')
  leaves = jax.tree.leaves(new)
  return y, tuple(v.reshape(as_2d(v.shape)).astype(jnp.float32) for v in leaves)


@functools.lru_cache(maxsize=None)
def chunk_fn(rule, resets, lay: Layout):
  return functools.partial(mlp_chunk, rule, resets, lay)
