"""The device mesh and the one table mapping logical axis names to mesh axes.

Parameters and activations carry *logical* axis names (``embed``, ``heads``,
``mlp``, ``vocab``, ``activation_batch``, ...; set by the layers with
``nn.with_logical_partitioning`` / ``nn.with_logical_constraint``).
:data:`LOGICAL_AXIS_RULES` maps each to a *mesh* axis of the one
``Mesh(data, fsdp, tensor)``:

================== ================ ===========================================
logical name        mesh axis        meaning
================== ================ ===========================================
activation_batch    (data, fsdp)     batch rows are split over data and fsdp
activation_length   -                sequence stays whole
activation_embed    -                hidden size replicated (Megatron style)
activation_heads    tensor           heads split for tensor parallelism
activation_mlp      tensor           MLP hidden split for tensor parallelism
activation_vocab    tensor           logits split over the vocabulary
embed               fsdp             weights' model dim sharded ZeRO-3 style
heads, kv_heads     tensor           attention / memory heads
mlp                 tensor           MLP hidden
vocab               tensor           embedding and unembedding rows
head_dim, layers    -                never sharded
================== ================ ===========================================

Names not in the table are replicated. Data parallel, FSDP and tensor
parallel are therefore a config change (``train.mesh.*``), not a code change.
A parameter dimension that the assigned mesh axes do not divide is left
unsharded (with a log line) rather than failing.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
  'MESH_AXES',
  'BATCH_AXES',
  'LOGICAL_AXIS_RULES',
  'MeshError',
  'mesh_shape',
  'make_mesh',
  'logical_shardings',
  'replicated',
  'batch_sharding',
]

log = logging.getLogger(__name__)

MESH_AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
  # activations
  ('activation_batch', BATCH_AXES),
  ('activation_length', None),
  ('activation_embed', None),
  ('activation_heads', 'tensor'),
  ('activation_kv_heads', 'tensor'),
  ('activation_mlp', 'tensor'),
  ('activation_vocab', 'tensor'),
  # parameters
  ('embed', 'fsdp'),
  ('heads', 'tensor'),
  ('kv_heads', 'tensor'),
  ('mlp', 'tensor'),
  ('vocab', 'tensor'),
  ('head_dim', None),
  ('layers', None),
)


class MeshError(ValueError):
  """The configured mesh does not match the available devices."""


def mesh_shape(data: int, fsdp: int, tensor: int, num_devices: int) -> tuple[int, int, int]:
  """Resolve ``(data, fsdp, tensor)``; one of them may be -1 ("the rest of the devices")."""
  sizes = [int(data), int(fsdp), int(tensor)]
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise MeshError(
      f'train.mesh (data, fsdp, tensor) = {tuple(sizes)}: sizes must be >= 1, at most one -1'
    )
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise MeshError(
        f'train.mesh (data, fsdp, tensor) = {tuple(sizes)}: {num_devices} devices are not divisible by {known}'
      )
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(
      f'train.mesh (data, fsdp, tensor) = {tuple(sizes)} needs {math.prod(sizes)} devices, '
      f'but {num_devices} are available'
    )
  return tuple(sizes)  # type: ignore[return-value]


def make_mesh(
  data: int, fsdp: int, tensor: int, devices: Sequence[jax.Device] | None = None
) -> Mesh:
  """The ``Mesh`` with axes :data:`MESH_AXES`; raises :class:`MeshError` when sizes do not fit."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(data, fsdp, tensor, len(devices))
  axis_types = (AxisType.Auto,) * len(MESH_AXES)  # shardings come from the rules, not from types
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except Exception:  # pylint: disable=broad-except  # topology-unaware fallback (e.g. odd CPU counts)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a ``[B, T]`` batch: rows over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh, name: str) -> P:
  """Drop mesh axes from dimensions they do not divide."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    if axes is None:
      out.append(None)
      continue
    names = axes if isinstance(axes, tuple) else (axes,)
    size = math.prod(mesh.shape[a] for a in names)
    if dim % size:
      log.info(
        '%s: dim %d not divisible by mesh axes %s (size %d); left unsharded', name, dim, names, size
      )
      out.append(None)
    else:
      out.append(axes)
  return P(*out)


def logical_shardings(abstract_tree: Any, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> Any:
  """``NamedSharding`` for every leaf of a (boxed) abstract tree from ``jax.eval_shape(model.init)``.

  Leaves boxed with logical names (``nn.LogicallyPartitioned``) are sharded by
  ``rules``; unannotated leaves are replicated. Returns an unboxed tree.
  """
  specs = nn.get_partition_spec(abstract_tree)
  unboxed = nn.meta.unbox(abstract_tree)

  def one(path, leaf, spec):
    if spec is None:
      spec = P()
    mesh_spec = nn.logical_to_mesh_axes(tuple(spec), rules)
    return NamedSharding(mesh, _fit(mesh_spec, tuple(leaf.shape), mesh, jax.tree_util.keystr(path)))

  return jax.tree_util.tree_map_with_path(
    one, unboxed, specs, is_leaf=lambda x: x is None or isinstance(x, P)
  )
