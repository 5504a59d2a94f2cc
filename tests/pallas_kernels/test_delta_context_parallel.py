"""Sequence (context) parallelism of the delta rule (pallas_kernels/delta_rule/state_passing.py):
the sequence split over simulated CPU devices (a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=n), each device running the delta rule on its
slice with the widened value width and the slices' affine maps (A, U) composed across devices,
equals one device on outputs, final state and the gradients of every input (q, k, v, β, log α,
the initial state, W_0) — fp32, a non-zero initial state, documents starting exactly on a slice
boundary and inside slices, Gated DeltaNet (log α) and DeltaNet (no decay).

Default: Gated DeltaNet on 4 devices, the local run by the XLA associative chunk scan, against a
token-by-token ``lax.scan`` of the recurrence (cheap to compile). ``-m slow``: both rules on 8
devices with the Pallas kernel (interpret mode) as the local run, against the single-device
kernel; and the associative state passing over chunks against the sequential kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from miras_jax.testing import assert_close, outputs_and_vjp
from pallas_kernels.delta_rule.api import delta_rule
from tests.layers._util import run_on_cpu_devices

SCRIPT = r"""
import sys
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, PartitionSpec as P
from miras_jax.testing import assert_close, outputs_and_vjp
from pallas_kernels.delta_rule.api import delta_rule
from pallas_kernels.delta_rule.state_passing import context_parallel

local, families = sys.argv[1], sys.argv[2].split(',')
n = jax.device_count()
B, H, T, D = 2, 2, 32, 8
L = T // n  # tokens per device
# Inputs made in numpy: jax.random here would compile op by op, longer than the test itself.
rng = np.random.default_rng(0)
normal = lambda *s: rng.standard_normal(s).astype(np.float32)
q, k, v = normal(B, H, T, D), normal(B, H, T, D), normal(B, H, T, D)
k = k / np.linalg.norm(k, axis=-1, keepdims=True)  # the models' l2-normalised keys
beta = 1 / (1 + np.exp(-normal(B, H, T)))
la = -np.log1p(np.exp(-normal(B, H, T) - 2.0))  # log sigmoid(z + 2)
h0, w0 = normal(B, H, D, D), normal(H, D, D)
# Row 0: a document starting exactly on a slice boundary (2L) and one inside a slice (3L + 3);
# row 1: one inside the first slice (L // 2), then a document across every later boundary.
seg = np.zeros((B, T), np.int32)
for b, ss in enumerate([[2 * L, 3 * L + 3], [L // 2]]):
  for s in ss:
    seg[b, s:] += 1
reset = np.broadcast_to((np.diff(seg, axis=1, prepend=0) != 0)[:, None], (B, H, T))
reset = reset.astype(np.float32)
mesh = Mesh(jax.devices(), ('seq',))
t = P(None, None, 'seq')


def scan_ref(q, k, v, beta, la, h0, w0):
  # S_t = α_t (I − β_t k_t k_tᵀ) S_{t−1} + β_t k_t v_tᵀ (S_{t−1} := W_0 at a reset), y_t = S_tᵀ q_t
  la = jnp.zeros_like(beta) if la is None else la
  hp = jax.lax.Precision.HIGHEST

  def step(S, x):
    q, k, v, b, a, r = x
    S = jnp.where(r[:, :, None, None] > 0, w0[None], S)
    kS = jnp.einsum('bhk,bhkv->bhv', k, S, precision=hp)
    S = jnp.exp(a)[..., None, None] * (S - b[..., None, None] * k[..., None] * kS[..., None, :])
    S = S + b[..., None, None] * k[..., None] * v[..., None, :]
    return S, jnp.einsum('bhk,bhkv->bhv', q, S, precision=hp)

  xs = [jnp.moveaxis(x, 2, 0) for x in (q, k, v, beta, la, reset)]
  S, y = jax.lax.scan(step, h0, xs)
  return jnp.moveaxis(y, 0, 2), S


def single(*a):
  if local == 'associative':
    return scan_ref(*a)
  q, k, v, beta, la, h0, w0 = a
  return delta_rule(q, k, v, beta, la, reset=reset, initial_state=h0, reset_state=w0)


def sharded(q, k, v, beta, la, h0, w0):
  f = lambda q, k, v, beta, la, r, h0, w0: context_parallel(
    q, k, v, beta, la, r, h0, w0, axis_name='seq', state_passing=local
  )
  specs = (t, t, t, t, None if la is None else t, t, P(), P())
  return jax.shard_map(f, mesh=mesh, in_specs=specs, out_specs=(t, P()), check_vma=False)(
    q, k, v, beta, la, reset, h0, w0
  )


for family in families:
  args = (q, k, v, beta, la if family == 'gated_deltanet' else None, h0, w0)

  got, want = outputs_and_vjp(sharded, *args), outputs_and_vjp(single, *args)
  leaves = jax.tree.leaves(want)
  # y, final state and the gradients of q, k, v, β, (log α,) h0, W_0
  assert len(leaves) == 8 + (family == 'gated_deltanet'), len(leaves)
  for i, (a, b) in enumerate(zip(jax.tree.leaves(got), leaves)):
    assert_close(a, b, 1e-5, f'{family} leaf {i}')
  print('ok delta context parallel', family, flush=True)
"""

FLAGS = '--xla_backend_optimization_level=0'  # tiny programs: compile time dominates


def test_delta_context_parallel_equals_one_device():
  out = run_on_cpu_devices(SCRIPT, 'associative', 'gated_deltanet', devices=4, flags=FLAGS)
  assert 'ok delta context parallel gated_deltanet' in out, out


@pytest.mark.slow
def test_delta_context_parallel_pallas_kernel_equals_one_device():
  out = run_on_cpu_devices(
    SCRIPT, 'sequential', 'gated_deltanet,deltanet', devices=8, timeout=1800, flags=FLAGS
  )
  for family in ('gated_deltanet', 'deltanet'):
    assert f'ok delta context parallel {family}' in out, out


@pytest.mark.slow
@pytest.mark.parametrize('gated', [True, False])
def test_associative_state_passing_equals_sequential(gated):
  ks = jax.random.split(jax.random.PRNGKey(0), 7)
  B, H, T, D = 1, 2, 37, 8
  q, k, v = (jax.random.normal(ks[i], (B, H, T, D)) for i in range(3))
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True)
  beta = jax.nn.sigmoid(jax.random.normal(ks[3], (B, H, T)))
  la = jax.nn.log_sigmoid(jax.random.normal(ks[4], (B, H, T)) + 2) if gated else None
  h0 = jax.random.normal(ks[5], (B, H, D, D))
  w0 = jax.random.normal(ks[6], (H, D, D))
  seg = ((jnp.arange(T) >= 16).astype(jnp.int32) + (jnp.arange(T) >= 21))[None]  # 16: a chunk edge

  def og(sp):
    f = lambda q, k, v, beta, la, h0, w0: delta_rule(
      q, k, v, beta, la, segment_ids=seg, initial_state=h0, reset_state=w0, state_passing=sp
    )
    return outputs_and_vjp(f, q, k, v, beta, la, h0, w0)

  got, want = og('associative'), og('sequential')
  for i, (a, b) in enumerate(zip(jax.tree.leaves(got), jax.tree.leaves(want))):
    assert_close(a, b, 1e-5, f'leaf {i}')
