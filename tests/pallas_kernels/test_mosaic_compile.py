"""Every Pallas TPU kernel compiles with Mosaic for real TPU targets from this CPU machine
(DESIGN §8): forward and forward+backward, wrapped in ``shard_map`` over batch × heads on a v5e
2×2 and a v5p 2×2×1 topology, bf16 inputs at a model-like head dim.

Needs libtpu (``pip install -e ".[tpu]"``; CI installs it, .ci/run); skipped without it."""

from __future__ import annotations

import os

import pytest

pytest.importorskip('libtpu', reason='libtpu not installed (pip install -e ".[tpu]")')
# Two pytest-xdist workers may both open libtpu for a topology; without this, the second fails
# with "Internal error when accessing libtpu multi-process lockfile" (measured here).
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from pallas_kernels.delta_rule.api import delta_rule  # noqa: E402
from pallas_kernels.linear_memory.api import linear_memory  # noqa: E402
from pallas_kernels.platform import compile_pallas_for_tpu  # noqa: E402

T, D = 512, 128


def _ops():
  def lin_scalar(q, k, v, g, la, seg):
    return linear_memory(q, k, v, g, la, segment_ids=seg, backend='tpu')

  def lin_channel(q, k, v, g, la, seg):
    la_c = jnp.broadcast_to(la[..., None], q.shape)
    return linear_memory(q, k, v, None, la_c, segment_ids=seg, backend='tpu')

  def delta(q, k, v, g, la, seg):
    return delta_rule(q, k, v, g, la, segment_ids=seg, backend='tpu')

  return {'linear_scalar': lin_scalar, 'linear_channel': lin_channel, 'delta_rule': delta}


@pytest.mark.parametrize('topology', ['v5e:2x2', 'v5p:2x2x1'])
@pytest.mark.parametrize('op', ['linear_scalar', 'linear_channel', 'delta_rule'])
def test_compiles_for_tpu(topology, op):
  devs = list(topologies.get_topology_desc(topology, 'tpu').devices)
  mesh = Mesh(devs, ('x',))
  fn = _ops()[op]
  B, H = len(devs), 2
  sh = NamedSharding(mesh, P('x'))
  tok = jax.ShapeDtypeStruct((B, H, T, D), jnp.bfloat16, sharding=sh)
  gate = jax.ShapeDtypeStruct((B, H, T), jnp.float32, sharding=sh)
  seg = jax.ShapeDtypeStruct((B, T), jnp.int32, sharding=sh)  # packed documents
  args = (tok, tok, tok, gate, gate, seg)
  spec = (P('x'),) * 6

  def fwd(*a):
    return jax.shard_map(
      lambda *x: fn(*x)[0], mesh=mesh, in_specs=spec, out_specs=P('x'), check_vma=False
    )(*a)

  def loss(*x):
    y, s = fn(*x)
    return jnp.sum(y.astype(jnp.float32)) + jnp.sum(s)

  def fwd_bwd(*a):
    g = jax.grad(loss, argnums=tuple(range(5)))
    out = spec[:5]
    return jax.shard_map(g, mesh=mesh, in_specs=spec, out_specs=out, check_vma=False)(*a)

  with compile_pallas_for_tpu():
    for f in (fwd, fwd_bwd):
      hlo = jax.jit(f).lower(*args)
      assert 'tpu_custom_call' in hlo.as_text()  # Mosaic kernels, not interpret-mode HLO
      hlo.compile()


MLP_RULES = ('titans', 'moneta', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear')


@pytest.mark.parametrize(
  'topology,name,step_scale',
  [(t, n, 'none') for t in ('v5e:2x2', 'v5p:2x2x1') for n in ('titans', 'moneta')]
  + [pytest.param('v5p:2x2x1', n, 'none', marks=pytest.mark.slow) for n in MLP_RULES[2:]]
  + [pytest.param('v5p:2x2x1', 'titans', 'implicit_chunk', marks=pytest.mark.slow)],
)
def test_mlp_memory_compiles_for_tpu(topology, name, step_scale):
  """The deep-memory kernel, forward and forward+backward (the backward a Pallas kernel too:
  asserted by its name in the lowered program), under shard_map over batch, head dim 64, packed
  documents: Titans (2-layer MLP, LayerNorm + residual, ℓ2, momentum + decay) and Moneta (ℓp
  bias, ℓq retention: its read scale ‖A‖_q^{2−q} on chip, Retention._qnorm_pow) by default;
  Yaad, Memora, TTT-MLP, TTT-Linear, and Titans with ``step_scale='implicit_chunk'`` (the
  per-token step factor on chip, its log μ row) behind ``-m slow`` (~40 s each)."""
  from miras_jax.memory import get_rule, with_options
  from miras_jax.memory.testing import random_w0
  from pallas_kernels.mlp_memory.api import mlp_memory
  from pallas_kernels.mlp_memory.pallas_tpu import BWD_KERNEL

  devs = list(topologies.get_topology_desc(topology, 'tpu').devices)
  mesh = Mesh(devs, ('x',))
  rule = with_options(get_rule(name), step_scale=step_scale)
  B, H, Tm, Dm = len(devs), 2, 256, 64
  w0 = random_w0(rule, jax.random.PRNGKey(0), H, Dm, Dm)
  sh = NamedSharding(mesh, P('x'))
  tok = jax.ShapeDtypeStruct((B, H, Tm, Dm), jnp.bfloat16, sharding=sh)
  gate = jax.ShapeDtypeStruct((B, H, Tm), jnp.float32, sharding=sh)
  seg = jax.ShapeDtypeStruct((B, Tm), jnp.int32, sharding=sh)

  def fn(q, k, v, eta, la, lm, seg):
    g = {n: x for n, x in zip(('eta', 'log_alpha', 'log_mu'), (eta, la, lm)) if rule.uses[n]}
    return mlp_memory(rule, q, k, v, g, w0=w0, segment_ids=seg, backend='tpu', chunk_size=64)

  spec = (P('x'),) * 7

  def fwd(*a):
    f = lambda *x: fn(*x)[0]
    return jax.shard_map(f, mesh=mesh, in_specs=spec, out_specs=P('x'), check_vma=False)(*a)

  def fwd_bwd(*a):
    g = jax.grad(lambda *x: jnp.sum(fn(*x)[0].astype(jnp.float32)), argnums=tuple(range(6)))
    return jax.shard_map(g, mesh=mesh, in_specs=spec, out_specs=spec[:6], check_vma=False)(*a)

  with compile_pallas_for_tpu():
    for f in (fwd, fwd_bwd):
      lowered = jax.jit(f).lower(tok, tok, tok, gate, gate, gate, seg)
      text = lowered.as_text()
      assert 'tpu_custom_call' in text
      # The backward is the Mosaic kernel, not chunk_vjp's XLA pass.
      assert (BWD_KERNEL in text) == (f is fwd_bwd), BWD_KERNEL
      lowered.compile()
