"""Activation sharding constraints by logical axis name that never fail on a dimension.

The layers name activation axes logically (``activation_batch``, ``activation_heads``, ...);
the trainer's one rules table (train/sharding.py ``LOGICAL_AXIS_RULES``) maps them to mesh
axes. :func:`constrain` pins an activation to that layout under the current mesh
(``jax.set_mesh``) and rules (``nn.logical_axis_rules``), but leaves a dimension unsharded
when its mesh axes do not divide it (e.g. 6 heads on a tensor axis of 4, one decoding row on a
data axis of 2), where ``nn.with_logical_constraint`` would raise. Without a mesh it is the
identity.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

__all__ = ['mesh_axes_dividing', 'constrain']


def mesh_axes_dividing(logical: str, dim: int, mesh: Any) -> Any:
  """The mesh axes ``logical`` maps to under the current rules, or None when it is unmapped or
  their size does not divide ``dim``."""
  axes = nn.logical_to_mesh_axes((logical,))[0]
  if axes is None:
    return None
  names = tuple(a for a in (axes if isinstance(axes, tuple) else (axes,)) if a in mesh.axis_names)
  size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
  if not names or dim % size:
    return None
  return names if len(names) > 1 else names[0]


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """``x`` sharded as the logical ``names`` (one per leading dimension; the rest unsharded)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return x
  spec = [mesh_axes_dividing(n, d, mesh) if n else None for n, d in zip(names, x.shape)]
  return jax.lax.with_sharding_constraint(x, P(*spec))
