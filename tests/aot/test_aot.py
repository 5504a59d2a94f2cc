"""``python -m miras_jax.aot``: the trainer's step compiled for TPU topologies on this CPU machine.

Needs libtpu (the TPU compiler; ``pip install 'miras-jax[tpu]'``); without it the compile
tests skip and only the CLI's missing-libtpu message is checked. Each compile runs in a
subprocess (``JAX_PLATFORMS=cpu``) through the real command line.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HAS_LIBTPU = importlib.util.find_spec('libtpu') is not None
needs_libtpu = pytest.mark.skipif(
  not HAS_LIBTPU, reason="libtpu not installed (pip install 'miras-jax[tpu]')"
)
TINY = [
  '--config=configs/base.py:transformer,tiny',
  '--config.train.batch_size=8',
  '--config.train.seq_len=128',
  '--noeval',
]


def run_aot(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': str(REPO_ROOT)}
  env.pop('XLA_FLAGS', None)
  return subprocess.run(
    [sys.executable, '-m', 'miras_jax.aot', *args],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
    check=False,
  )


def verdict(stdout: str) -> str:
  lines = [l for l in stdout.splitlines() if l.startswith(('FITS', 'DOES NOT FIT'))]
  assert len(lines) == 1, stdout
  return lines[0]


@needs_libtpu
def test_tiny_transformer_fits_v5e_2x2_data_parallel(tmp_path):
  out = tmp_path / 'aot.json'
  proc = run_aot(*TINY, '--topology=v5e:2x2', f'--save={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert verdict(proc.stdout).startswith('FITS: peak ') and 'of 16.00 GiB per chip' in proc.stdout
  r = json.loads(out.read_text())
  assert (
    r['chip'] == 'v5e'
    and r['num_devices'] == 4
    and r['mesh']
    == {
      'data': 4,
      'fsdp': 1,
      'sequence': 1,
      'tensor': 1,
    }
  )
  t = r['train']
  # data parallel: every chip holds the whole fp32 state (params + 2 Adam moments)
  assert t['state_bytes'] == r['params_bytes'] + r['opt_bytes'] >= 3 * 4 * r['num_params']
  assert 0 < t['total_bytes'] <= r['hbm_bytes_per_device'] and r['fits']
  # two independent counts: the jaxpr walk of the compiled step vs models.flops (no remat here)
  assert t['matmul_flops'] == pytest.approx(r['model_flops_per_step'], rel=0.02)
  assert 0 < t['xla_flops'] < t['matmul_flops']  # one device's share


@needs_libtpu
def test_tiny_transformer_fits_v5p_2x2x1_fsdp_tp(tmp_path):
  out = tmp_path / 'aot.json'
  proc = run_aot(
    *TINY,
    '--topology=v5p:2x2x1',
    '--config.train.mesh.data=1',
    '--config.train.mesh.fsdp=-1',
    '--config.train.mesh.tensor=2',
    f'--save={out}',
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert verdict(proc.stdout).startswith('FITS')
  r = json.loads(out.read_text())
  assert r['chip'] == 'v5p' and r['mesh'] == {'data': 1, 'fsdp': 2, 'sequence': 1, 'tensor': 2}
  # FSDP x TP: the state is split 4 ways (up to unsplittable leaves such as norm scales)
  full = 3 * 4 * r['num_params']
  assert full / 4 <= r['train']['state_bytes'] < full / 2


@needs_libtpu
def test_too_large_for_v5e_2x2_does_not_fit():
  """1.6B parameters (a 4M-wide MLP), data parallel: the fp32 state alone is ~24 GiB per chip."""
  proc = run_aot(
    '--config=configs/base.py:transformer,tiny',
    '--config.train.batch_size=8',
    '--config.train.seq_len=32',
    '--config.model.mlp_dim=4194304',
    '--noeval',
    '--topology=v5e:2x2',
  )
  assert proc.returncode == 1, proc.stderr[-3000:]
  line = verdict(proc.stdout)
  assert line.startswith('DOES NOT FIT: needs ') and 'of 16.00 GiB per chip (over by' in line
  assert 'Traceback' not in proc.stderr


@needs_libtpu
def test_bad_topology_is_one_line():
  proc = run_aot(*TINY, '--topology=v9x:2x2', timeout=120)
  assert proc.returncode == 2
  err = [l for l in proc.stderr.splitlines() if l.startswith('python -m miras_jax.aot: error:')]
  assert len(err) == 1 and 'v9x:2x2' in err[0] and 'Traceback' not in proc.stderr


@pytest.mark.skipif(HAS_LIBTPU, reason='checks the message shown when libtpu is missing')
def test_without_libtpu_says_how_to_install():
  proc = run_aot(*TINY, '--topology=v5e:2x2', timeout=120)
  assert proc.returncode == 2
  assert "libtpu is not installed (pip install 'miras-jax[tpu]')" in proc.stderr


@needs_libtpu
def test_two_slices_put_the_dcn_axis_across_slices(monkeypatch):
  """train.mesh.dcn_data=2 on two v5e:2x2 slices: data crosses slices, fsdp stays inside one."""
  monkeypatch.setenv('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')  # as miras_jax.aot sets it
  from jax.experimental import topologies
  from ml_collections import ConfigDict

  from miras_jax.train.sharding import mesh_from_config

  devices = topologies.get_topology_desc('v5e:2x2', 'tpu', num_slices=2).devices
  cfg = ConfigDict(
    {'data': 1, 'fsdp': -1, 'tensor': 1, 'dcn_data': 2, 'dcn_fsdp': 1, 'dcn_tensor': 1}
  )
  mesh = mesh_from_config(cfg, devices)
  assert dict(mesh.shape) == {'data': 2, 'fsdp': 4, 'sequence': 1, 'tensor': 1}
  for i in range(2):
    assert {d.slice_index for d in mesh.devices[i].ravel()} == {i}
