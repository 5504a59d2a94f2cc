"""The Pallas attention kernels on a device mesh: per device under ``shard_map``."""

from __future__ import annotations

import jax

from miras_jax.layers.partitioning import mesh_axes_dividing


def on_mesh(kernel, q, k, v, segment_ids):
  """Run a Pallas attention ``kernel(q, k, v, segment_ids)`` per device under ``shard_map``.

  A Mosaic kernel is an opaque custom call that XLA's SPMD partitioner cannot split (DESIGN.md
  §8), so on a multi-device mesh (``jax.set_mesh``) every device runs it on its own block:
  rows split as the logical axis 'activation_batch' says, heads as 'activation_heads' /
  'activation_kv_heads' (the mesh axes come from the current ``nn.logical_axis_rules``,
  train/sharding.py). Heads are split only when both H and Hkv divide by the axis size, so each
  device keeps whole GQA groups (query head h reads kv head h // G, G = H / Hkv, in blocks).
  The sequence axis is never split: each device sees whole rows, so causal / window / segment
  masks are unchanged. Without a mesh, or with one device, ``kernel`` runs as is.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, segment_ids)
  from jax.sharding import PartitionSpec as P

  batch = mesh_axes_dividing('activation_batch', q.shape[0], mesh)
  heads = mesh_axes_dividing('activation_heads', q.shape[2], mesh)
  kv_heads = mesh_axes_dividing('activation_kv_heads', k.shape[2], mesh)
  if heads is None or heads != kv_heads:
    heads = kv_heads = None
  q_spec, kv_spec = P(batch, None, heads, None), P(batch, None, kv_heads, None)
  if segment_ids is None:
    fn = lambda q, k, v: kernel(q, k, v, None)
    args, in_specs = (q, k, v), (q_spec, kv_spec, kv_spec)
  else:
    fn, args = kernel, (q, k, v, segment_ids)
    in_specs = (q_spec, kv_spec, kv_spec, P(batch, None))
  # check_vma=False: pallas_call has no replication rule for the varying-axes checker.
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=q_spec, check_vma=False)(*args)
