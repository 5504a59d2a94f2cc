"""Sequence (context) parallelism of the linear memory: the sequence split over 8 simulated CPU
devices (a subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=8), each device
running the Pallas kernel (interpret mode) on its slice and the slices' affine state maps composed
across devices (state_passing.context_parallel), equals the single-device kernel on outputs, final
state and the gradients of every input — with a document boundary placed exactly on a device
boundary and channel decay. Also: the associative-scan state passing equals the sequential one."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from miras_jax.testing import assert_close, outputs_and_vjp
from pallas_kernels.linear_memory.api import linear_memory

ROOT = pathlib.Path(__file__).resolve().parents[2]

SCRIPT = r"""
import jax, jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P
from miras_jax.testing import assert_close, outputs_and_vjp
from pallas_kernels.layout import resets_from_segments
from pallas_kernels.linear_memory.api import linear_memory
from pallas_kernels.linear_memory.state_passing import context_parallel

assert jax.device_count() == 8
B, H, T, D = 1, 2, 64, 8   # 8 tokens per device
ks = jax.random.split(jax.random.PRNGKey(0), 8)
q, k, v = (jax.random.normal(ks[i], (B, H, T, D)) for i in range(3))
eta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, H, T)))
la = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, H, T, D)) + 2.0)
h0 = jax.random.normal(ks[5], (B, H, D, D))
w0 = jax.random.normal(ks[6], (H, D, D))
seg = ((jnp.arange(T) >= 24).astype(jnp.int32) + (jnp.arange(T) >= 37))[None]  # 24: a device edge
reset = resets_from_segments(seg, B, H, T)
mesh = Mesh(jax.devices(), ('seq',))
t = P(None, None, 'seq')

def single(q, k, v, eta, la, h0, w0):
  return linear_memory(q, k, v, eta, la, reset=reset, initial_state=h0, reset_state=w0)

def sharded(q, k, v, eta, la, h0, w0):
  f = lambda q, k, v, eta, la, r, h0, w0: context_parallel(
    q, k, v, eta, la, r, h0, w0, axis_name='seq')
  return jax.shard_map(f, mesh=mesh, in_specs=(t, t, t, t, t, t, P(), P()),
                       out_specs=(t, P()), check_vma=False)(q, k, v, eta, la, reset, h0, w0)

args = (q, k, v, eta, la, h0, w0)
got, want = outputs_and_vjp(sharded, *args), outputs_and_vjp(single, *args)
for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
  assert_close(a, b, 1e-5, f'leaf {i}')
print('ok context parallel', flush=True)
"""


@pytest.mark.slow
def test_context_parallel_equals_single_device():
  env = dict(
    os.environ,
    XLA_FLAGS='--xla_force_host_platform_device_count=8',
    JAX_PLATFORMS='cpu',
    PYTHONPATH=str(ROOT),
  )
  proc = subprocess.run(
    [sys.executable, '-c', SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  assert 'ok context parallel' in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize('channel', [True, False])
def test_associative_state_passing_equals_sequential(channel):
  ks = jax.random.split(jax.random.PRNGKey(0), 7)
  B, H, T, D = 1, 2, 37, 8
  q, k, v = (jax.random.normal(ks[i], (B, H, T, D)) for i in range(3))
  eta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, H, T)))
  la = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, H, T, D) if channel else (B, H, T)) + 2)
  h0 = jax.random.normal(ks[5], (B, H, D, D))
  w0 = jax.random.normal(ks[6], (H, D, D))
  seg = (jnp.arange(T) >= 20).astype(jnp.int32)[None]

  def og(sp):
    f = lambda *x: linear_memory(
      *x[:5], segment_ids=seg, initial_state=x[5], reset_state=x[6], state_passing=sp
    )
    return outputs_and_vjp(f, q, k, v, eta, la, h0, w0)

  got, want = og('associative'), og('sequential')
  for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    assert_close(a, b, 1e-5, f'leaf {i}')
