"""The device mesh and the one table mapping logical axis names to mesh axes.

Parameters and activations carry *logical* axis names (``embed``, ``heads``,
``mlp``, ``vocab``, ``activation_batch``, ...; set by the layers with
``nn.with_logical_partitioning`` / ``nn.with_logical_constraint``).
:data:`LOGICAL_AXIS_RULES` maps each to a *mesh* axis of the one
``Mesh(data, fsdp, sequence, tensor)``:

================== ================ ===========================================
logical name        mesh axis        meaning
================== ================ ===========================================
activation_batch    (data, fsdp)     batch rows are split over data and fsdp
activation_length   sequence         sequence (context) parallelism (size 1: whole)
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

Names not in the table are replicated. Data parallel, FSDP, sequence and tensor
parallel are therefore a config change (``train.mesh.*``), not a code change;
one of ``data`` / ``fsdp`` / ``sequence`` / ``tensor`` may be -1 ("the rest of the
devices"). ``sequence`` (default 1) splits every row's tokens over devices; the
layers whose work crosses tokens run in context-parallel form then
(layers/sequence_parallel.py: the linear memories, the delta rules, the short
convolutions and attention; the deep memories refuse at startup):

======================== ================================= ==========================
layout                    ``train.mesh``                    state per chip
======================== ================================= ==========================
data parallel             data=-1                           whole (replicated)
FSDP (ZeRO-3)             data=1, fsdp=-1                   1 / devices
FSDP + tensor parallel    data=1, fsdp=-1, tensor=4         1 / devices
data + sequence parallel  data=-1, sequence=4               whole (replicated)
======================== ================================= ==========================

Multi-slice (several TPU slices joined by the data-centre network, DCN):
``train.mesh.dcn_{data,fsdp,sequence,tensor}`` give how many slices each axis spans
(default 1; their product is the slice count). The mesh then has the same four
axes, each of size ICI size × DCN size, laid out by
``jax.experimental.mesh_utils.create_hybrid_device_mesh`` so that only the
DCN part of an axis crosses slices (MaxText's ``dcn_*_parallelism`` convention:
put ``data`` on DCN, keep ``fsdp`` / ``tensor`` inside a slice).

:func:`check_param_layout` runs at startup: a parameter dimension that its
mesh axes do not divide is left unsharded, and when the parameter bytes that
are not split over the model axes (fsdp × tensor) exceed
``train.mesh.max_replicated_fraction`` the run stops with one line naming the
largest such parameter.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

__all__ = [
  'MESH_AXES',
  'BATCH_AXES',
  'LOGICAL_AXIS_RULES',
  'MeshError',
  'mesh_shape',
  'make_mesh',
  'mesh_from_config',
  'logical_shardings',
  'optimizer_shardings',
  'check_param_layout',
  'shard_bytes',
  'replicated',
  'batch_sharding',
  'check_rows_per_process',
]

log = logging.getLogger(__name__)

# Order = device layout: the last axis varies fastest, so tensor (the most talkative) and then
# sequence (one exchange per layer) sit on the nearest chips, as MaxText orders its axes.
MESH_AXES = ('data', 'fsdp', 'sequence', 'tensor')
BATCH_AXES = ('data', 'fsdp')

LOGICAL_AXIS_RULES: tuple[tuple[str, Any], ...] = (
  # activations
  ('activation_batch', BATCH_AXES),
  ('activation_length', 'sequence'),
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


def mesh_shape(
  data: int, fsdp: int, tensor: int, num_devices: int, *, sequence: int = 1
) -> tuple[int, int, int, int]:
  """Resolve the sizes of :data:`MESH_AXES`, ``(data, fsdp, sequence, tensor)``; one of them
  may be -1 ("the rest of the devices")."""
  sizes = [int(data), int(fsdp), int(sequence), int(tensor)]
  name = f'train.mesh (data, fsdp, sequence, tensor) = {tuple(sizes)}'
  if sizes.count(-1) > 1 or any(s == 0 or s < -1 for s in sizes):
    raise MeshError(f'{name}: sizes must be >= 1, at most one -1')
  if -1 in sizes:
    known = math.prod(s for s in sizes if s != -1)
    if num_devices % known:
      raise MeshError(f'{name}: {num_devices} devices are not divisible by {known}')
    sizes[sizes.index(-1)] = num_devices // known
  if math.prod(sizes) != num_devices:
    raise MeshError(f'{name} needs {math.prod(sizes)} devices, but {num_devices} are available')
  return tuple(sizes)  # type: ignore[return-value]


def make_mesh(
  data: int,
  fsdp: int,
  tensor: int,
  devices: Sequence[jax.Device] | None = None,
  *,
  sequence: int = 1,
) -> Mesh:
  """The ``Mesh`` with axes :data:`MESH_AXES`; raises :class:`MeshError` when sizes do not fit."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(data, fsdp, tensor, len(devices), sequence=sequence)
  axis_types = (AxisType.Auto,) * len(MESH_AXES)  # shardings come from the rules, not from types
  try:
    return jax.make_mesh(shape, MESH_AXES, axis_types=axis_types, devices=devices)
  except Exception:  # pylint: disable=broad-except  # topology-unaware fallback (e.g. odd CPU counts)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=axis_types)


def mesh_from_config(mesh_cfg: Any, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh ``train.mesh`` asks for on ``devices`` (default: all), single- or multi-slice.

  ``mesh_cfg`` holds ``data`` / ``fsdp`` / ``tensor`` and optionally ``sequence`` (per-slice
  sizes, one may be -1; ``sequence`` defaults to 1) and ``dcn_<axis>`` (slices spanned by each
  axis, default 1).
  """
  devices = list(jax.devices() if devices is None else devices)
  dcn = tuple(int(mesh_cfg.get(f'dcn_{a}', 1)) for a in MESH_AXES)
  if any(d < 1 for d in dcn):
    raise MeshError(f'train.mesh.dcn_* = {dcn}: slice counts must be >= 1')
  slices = math.prod(dcn)
  sequence = int(mesh_cfg.get('sequence', 1))
  if slices == 1:
    return make_mesh(mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, devices, sequence=sequence)
  if len(devices) % slices:
    raise MeshError(
      f'train.mesh.dcn_* = {dcn} needs {slices} slices; {len(devices)} devices do not split into them'
    )
  ici = mesh_shape(
    mesh_cfg.data, mesh_cfg.fsdp, mesh_cfg.tensor, len(devices) // slices, sequence=sequence
  )
  from jax.experimental import mesh_utils  # pylint: disable=import-outside-toplevel

  found = {getattr(d, 'slice_index', 0) for d in devices}
  try:
    # Slices are the DCN granules when devices carry slice_index (multi-slice TPU); otherwise
    # (GPU clusters, tests) each process is one granule.
    grid = mesh_utils.create_hybrid_device_mesh(
      ici, dcn, devices, process_is_granule=len(found) < slices
    )
  except ValueError as e:
    raise MeshError(f'train.mesh: hybrid mesh ici={ici} x dcn={dcn}: {e}') from None
  return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a ``[B, T]`` batch: rows over (data, fsdp)."""
  return NamedSharding(mesh, P(BATCH_AXES, None))


def check_rows_per_process(mesh: Mesh) -> None:
  """Refuse (one line) a mesh whose non-batch axes span processes.

  Each process reads its own rows of the global batch (train/data.py) and hands them to
  ``make_array_from_process_local_data``: the devices holding one block of rows (one (data,
  fsdp) coordinate, all its ``sequence`` × ``tensor`` devices) must then belong to one process,
  or two hosts would feed different rows to one model replica. Lay ``sequence`` and ``tensor``
  out within a host (MaxText does the same: ICI axes inside a slice, the batch across hosts).
  """
  grid = np.asarray(mesh.devices)
  batch = [mesh.axis_names.index(a) for a in BATCH_AXES]
  rest = [i for i in range(grid.ndim) if i not in batch]
  blocks = np.transpose(grid, batch + rest).reshape(
    math.prod(grid.shape[i] for i in batch), -1
  )  # [row blocks, devices holding each]
  for block in blocks:
    procs = {d.process_index for d in block}
    if len(procs) > 1:
      sizes = ', '.join(f'{a}={mesh.shape[a]}' for a in mesh.axis_names if a not in BATCH_AXES)
      raise MeshError(
        f'train.mesh: the devices of one block of batch rows ({sizes}) span processes '
        f'{sorted(procs)}; each host reads its own rows, so keep sequence x tensor within one '
        'host (raise data or fsdp instead)'
      )


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


def optimizer_shardings(
  tx: optax.GradientTransformation, abstract_opt: Any, param_shardings: Any, mesh: Mesh
) -> Any:
  """Shardings of the optimiser state: each moment like its parameter, scalars replicated."""
  return optax.tree_map_params(
    tx,
    lambda _, s: s,
    abstract_opt,
    param_shardings,
    transform_non_params=lambda _: replicated(mesh),
    is_leaf=lambda x: isinstance(x, optax.MaskedNode),
  )


def shard_bytes(abstract_tree: Any, shardings: Any) -> int:
  """Bytes one device holds of ``abstract_tree`` laid out by ``shardings`` (largest shard)."""
  total = 0
  for leaf, sh in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings)):
    shape = sh.shard_shape(tuple(leaf.shape)) if leaf.shape else ()
    total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
  return total


def check_param_layout(
  abstract_params: Any,
  boxed_params: Any,
  mesh: Mesh,
  max_replicated_fraction: float,
  rules=LOGICAL_AXIS_RULES,
) -> float:
  """Fail (:class:`MeshError`, one line) when too many parameter bytes are not model-sharded.

  With model axes (fsdp × tensor) larger than 1, every parameter is expected to be split
  over them; a parameter is counted as *replicated* when its layout does not use any model
  axis (unannotated, or its dimensions did not divide the axes). Returns the replicated
  fraction of parameter bytes (0 on a data-parallel-only mesh, where replication is the plan).
  """
  model_axes = [a for a in ('fsdp', 'tensor') if mesh.shape[a] > 1]
  if not model_axes:
    return 0.0
  specs = nn.get_partition_spec(boxed_params)
  flat_specs = jax.tree_util.tree_flatten_with_path(
    specs, is_leaf=lambda x: x is None or isinstance(x, P)
  )[0]
  leaves = jax.tree.leaves(abstract_params)
  total, replicated_bytes, worst = 0, 0, None
  for (path, spec), leaf in zip(flat_specs, leaves):
    nbytes = math.prod(leaf.shape) * np.dtype(leaf.dtype).itemsize
    total += nbytes
    wanted = nn.logical_to_mesh_axes(tuple(spec or ()), rules)
    got = _fit(wanted, tuple(leaf.shape), mesh, jax.tree_util.keystr(path))
    used = {a for axes in got if axes for a in (axes if isinstance(axes, tuple) else (axes,))}
    if used & set(model_axes):
      continue
    replicated_bytes += nbytes
    if worst is None or nbytes > worst[0]:
      reason = 'no logical axis names'
      for dim, w, g in zip(leaf.shape, tuple(wanted), tuple(got)):
        if w is not None and g is None:
          names = w if isinstance(w, tuple) else (w,)
          size = math.prod(mesh.shape[a] for a in names)
          reason = f'dimension {dim} does not divide mesh axis {"x".join(names)} (size {size})'
          break
      else:
        if spec:
          reason = f'logical axes {tuple(spec)} map to no model axis'
      worst = (nbytes, jax.tree_util.keystr(path), leaf.shape, reason)
  frac = replicated_bytes / max(total, 1)
  if frac > max_replicated_fraction:
    _, name, shape, reason = worst
    raise MeshError(
      f'{frac:.0%} of parameter bytes would be replicated on every {"/".join(model_axes)} shard '
      f'(limit train.mesh.max_replicated_fraction={max_replicated_fraction}); largest: '
      f'params{name} {tuple(shape)}: {reason}'
    )
  return frac
