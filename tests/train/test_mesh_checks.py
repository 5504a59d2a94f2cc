"""Startup checks of the mesh and parameter layout (train/sharding.py): one-line errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest
from ml_collections import ConfigDict

from miras_jax.train import sharding as sharding_lib


class _Toy(nn.Module):
  """w: [embed=4, mlp=6] sharded; odd: [embed=3, 8] (3 is odd); b: [64] unannotated."""

  @nn.compact
  def __call__(self, x):
    part = nn.with_logical_partitioning
    w = self.param('w', part(nn.initializers.ones, ('embed', 'mlp')), (4, 6))
    odd = self.param('odd', part(nn.initializers.ones, ('embed', None)), (3, 8))
    b = self.param('b', nn.initializers.zeros, (64,))
    return x @ w + b[:6] + odd.sum()


def _toy():
  boxed = jax.eval_shape(lambda k: _Toy().init(k, jnp.ones((2, 4)))['params'], jax.random.key(0))
  return boxed, nn.meta.unbox(boxed)


def _fake_mesh(data, fsdp, tensor):
  return jax.sharding.AbstractMesh((data, fsdp, 1, tensor), sharding_lib.MESH_AXES)


def _one_line(excinfo) -> str:
  msg = str(excinfo.value)
  assert '\n' not in msg
  return msg


def test_unsharded_bytes_over_the_limit_name_the_largest_parameter():
  boxed, params = _toy()  # bytes: w 96, odd 96, b 256 -> b and odd (3 % 2) stay whole
  with pytest.raises(sharding_lib.MeshError) as e:
    sharding_lib.check_param_layout(params, boxed, _fake_mesh(1, 2, 1), 0.5)
  msg = _one_line(e)
  assert msg.startswith('79% of parameter bytes would be replicated on every fsdp shard')
  assert "params['b'] (64,): no logical axis names" in msg


def test_dimension_that_does_not_divide_its_axis_is_named():
  boxed, params = _toy()
  params = {k: v for k, v in params.items() if k != 'b'}
  boxed = {k: v for k, v in boxed.items() if k != 'b'}
  with pytest.raises(sharding_lib.MeshError) as e:
    sharding_lib.check_param_layout(params, boxed, _fake_mesh(1, 2, 1), 0.2)
  assert "params['odd'] (3, 8): dimension 3 does not divide mesh axis fsdp (size 2)" in _one_line(e)


def test_within_the_limit_returns_the_fraction_and_data_parallel_is_exempt():
  boxed, params = _toy()
  assert sharding_lib.check_param_layout(params, boxed, _fake_mesh(1, 2, 1), 0.8) == pytest.approx(
    352 / 448
  )
  assert sharding_lib.check_param_layout(params, boxed, _fake_mesh(2, 1, 1), 0.0) == 0.0


def test_mesh_config_errors_are_one_line():
  cfg = ConfigDict(
    {'data': -1, 'fsdp': 1, 'tensor': 1, 'dcn_data': 3, 'dcn_fsdp': 1, 'dcn_tensor': 1}
  )
  with pytest.raises(sharding_lib.MeshError) as e:
    sharding_lib.mesh_from_config(cfg, jax.devices()[:1])
  assert _one_line(e) == (
    'train.mesh.dcn_* = (3, 1, 1, 1) needs 3 slices; 1 devices do not split into them'
  )
  cfg.dcn_data, cfg.tensor = 1, 2
  with pytest.raises(sharding_lib.MeshError) as e:
    sharding_lib.mesh_from_config(cfg, jax.devices()[:1])
  assert 'not divisible by 2' in _one_line(e)
  cfg.dcn_data = 0
  with pytest.raises(sharding_lib.MeshError, match='slice counts must be >= 1'):
    sharding_lib.mesh_from_config(cfg, jax.devices()[:1])


def test_single_slice_config_gives_the_four_axis_mesh():
  cfg = ConfigDict(
    {'data': -1, 'fsdp': 1, 'tensor': 1, 'dcn_data': 1, 'dcn_fsdp': 1, 'dcn_tensor': 1}
  )
  mesh = sharding_lib.mesh_from_config(cfg, jax.devices()[:1])
  assert dict(mesh.shape) == {'data': 1, 'fsdp': 1, 'sequence': 1, 'tensor': 1}


def test_row_blocks_spanning_processes_are_refused():
  """2 hosts × 4 devices: tensor within a host passes; tensor (or sequence) across hosts would
  feed one replica two hosts' different rows, and is refused in one line."""
  import types

  import numpy as np

  devs = [types.SimpleNamespace(id=i, process_index=i // 4) for i in range(8)]

  def mesh(data, sequence, tensor):
    grid = np.asarray(devs, dtype=object).reshape(data, 1, sequence, tensor)
    shape = dict(zip(sharding_lib.MESH_AXES, grid.shape))
    return types.SimpleNamespace(devices=grid, axis_names=sharding_lib.MESH_AXES, shape=shape)

  sharding_lib.check_rows_per_process(mesh(2, 1, 4))  # each row block on one host
  sharding_lib.check_rows_per_process(mesh(2, 2, 2))
  for bad in (mesh(1, 1, 8), mesh(1, 8, 1), mesh(1, 2, 4)):
    with pytest.raises(sharding_lib.MeshError) as e:
      sharding_lib.check_rows_per_process(bad)
    assert 'span processes [0, 1]' in _one_line(e)
