"""Compile for a real TPU topology on a machine without a TPU (DESIGN §8).

    pip install "jax[tpu]==0.10.2"   # libtpu; in a separate environment is fine
    python scripts/aot_tpu_compile.py [--topology=v5p:2x2x1] [--seq_len=4096]

Ahead-of-time lowers and compiles, for the TPU chips that ``jax.experimental.topologies``
describes, (1) the Pallas TPU attention kernels (flash and splash, not interpreted) forward
and backward on one chip, (2) the chunked Miras memory forward+backward for every deep rule
and Gated DeltaNet, sharded over the chips by batch, (3) whole LMs with Pallas attention,
sharded by rows and heads (the kernels under shard_map), and prints each compiled program's
memory analysis — proof that the code compiles for, and fits on, the target without one.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from miras_jax.layers.attention_backends import (  # noqa: E402
  causal_attention,
  compile_pallas_for_tpu,
)
from miras_jax.memory import chunked, get_rule  # noqa: E402
from miras_jax.memory.testing import random_inputs  # noqa: E402


def _mib(ma):
  return (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20


def _compile(name, fn, args, shardings):
  t = time.perf_counter()
  spec = jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), args, shardings
  )
  compiled = jax.jit(fn).lower(*spec).compile()
  ma = compiled.memory_analysis()
  print(
    f'{name:44s} compiled in {time.perf_counter() - t:5.1f}s; peak {_mib(ma):8.1f} MiB per chip',
    flush=True,
  )
  return compiled


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--topology', default='v5p:2x2x1')
  p.add_argument('--seq_len', type=int, default=4096)
  p.add_argument('--rules', default='moneta,yaad,memora,titans,gated_deltanet')
  p.add_argument(
    '--models',
    default='transformer:170m:pallas_tpu_flash,'
    'hybrid_gated_deltanet:170m:pallas_tpu_splash,titans_mag:170m:xla',
    help='family:size:backend,... compiled sharded (empty: skip)',
  )
  a = p.parse_args(argv)
  topo = topologies.get_topology_desc(a.topology, 'tpu')
  devs = list(topo.devices)
  print(f'target: {a.topology}: {len(devs)} x {devs[0].device_kind}', flush=True)

  # (1) Pallas TPU attention, one chip, bf16, GQA, packed segments.
  one = Mesh(devs[:1], ('x',))
  rep = NamedSharding(one, P())
  B, T, H, Hkv, D = 1, a.seq_len, 8, 2, 128
  q = jnp.zeros((B, T, H, D), jnp.bfloat16)
  kv = jnp.zeros((B, T, Hkv, D), jnp.bfloat16)
  seg = jnp.zeros((B, T), jnp.int32)
  for backend, window in (
    ('pallas_tpu_flash', None),
    ('pallas_tpu_splash', None),
    ('pallas_tpu_splash', 1024),
  ):

    def loss(q, k, v, seg, backend=backend, window=window):
      o = causal_attention(
        q, k, v, segment_ids=seg, window_size=window, backend=backend, interpret=False
      )
      return jnp.sum(o.astype(jnp.float32))

    _compile(
      f'attention {backend} window={window} fwd+bwd',
      jax.grad(loss, argnums=(0, 1, 2)),
      (q, kv, kv, seg),
      (rep,) * 4,
    )

  # (2) The chunked memory, batch sharded over every chip.
  mesh = Mesh(devs, ('data',))
  bs = NamedSharding(mesh, P('data'))
  repl = NamedSharding(mesh, P())
  for name in a.rules.split(','):
    rule = get_rule(name)
    inp = random_inputs(rule, jax.random.PRNGKey(0), B=len(devs), H=4, T=8, dk=64)
    Tn = a.seq_len
    args = {
      n: jnp.zeros(x.shape[:2] + (Tn,) + x.shape[3:], jnp.bfloat16)
      for n, x in (('q', inp['q']), ('k', inp['k']), ('v', inp['v']))
    }
    gates = {
      n: jnp.zeros(g.shape[:2] + (Tn,) + g.shape[3:], jnp.float32) for n, g in inp['gates'].items()
    }

    def loss(q, k, v, gates, w0, outer, rule=rule):
      y, _ = chunked(rule, q, k, v, gates, w0=w0, outer=outer, chunk_size=64)
      return jnp.sum(y.astype(jnp.float32))

    f = jax.grad(loss, argnums=(0, 1, 2, 3, 4, 5))
    sh = (
      bs,
      bs,
      bs,
      jax.tree.map(lambda _: bs, gates),
      jax.tree.map(lambda _: repl, inp['w0']),
      jax.tree.map(lambda _: repl, inp['outer']),
    )
    _compile(
      f'memory {name} B={len(devs)} H=4 T={Tn} fwd+bwd',
      f,
      (args['q'], args['k'], args['v'], gates, inp['w0'], inp['outer']),
      sh,
    )

  # (3) Whole LMs whose attention runs on the Pallas kernels, sharded (data=2, tensor=rest):
  #     the kernels run under shard_map (layers/attention_backends.py `_on_mesh`), the rest is
  #     partitioned by the logical-axis rules, as in the trainer.
  if a.models:
    _compile_models(a, devs)


def _compile_models(a, devs):
  import flax.linen as nn

  from miras_jax.models import build_model
  from miras_jax.models.presets import model_config
  from miras_jax.train.sharding import LOGICAL_AXIS_RULES, logical_shardings, make_mesh

  data = 2 if len(devs) % 2 == 0 else 1
  mesh = make_mesh(data, 1, len(devs) // data, devices=devs)
  B = 2 * data
  for spec in a.models.split(','):
    family, size, backend = spec.split(':')
    cfg = model_config(family, size)
    cfg.attention_backend = backend
    cfg.dtype = 'bfloat16'
    cfg.max_len = a.seq_len
    model = build_model(cfg)
    toks = jax.ShapeDtypeStruct((B, a.seq_len), jnp.int32)
    if backend == 'pallas_tpu_splash':
      # Build the splash kernel (host-side mask preprocessing + jnp.array of its tables) before
      # entering the mesh: under a mesh of topology-only devices those arrays cannot be placed.
      # The kernel cache then serves the traced call (heads per device as `_on_mesh` splits).
      from miras_jax.layers.attention_backends import PALLAS_BLOCK, _pick_block, _splash_kernel

      t_pad = -(-a.seq_len // PALLAS_BLOCK) * PALLAS_BLOCK
      heads = (
        cfg.n_heads // mesh.shape['tensor']
        if cfg.n_heads % mesh.shape['tensor'] == 0
        else cfg.n_heads
      )
      _splash_kernel(t_pad, heads, cfg.window, _pick_block(t_pad), False)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES), compile_pallas_for_tpu():
      boxed = jax.eval_shape(lambda t: model.init(jax.random.PRNGKey(0), t), toks)
    # Unboxed outside the mesh context, where unboxing would add sharding constraints.
    p_sh = logical_shardings(boxed, mesh)
    params = nn.meta.unbox(boxed)
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES), compile_pallas_for_tpu():

      def loss(params, toks, segs):
        logits = model.apply(params, toks, segs)
        logp = jax.nn.log_softmax(logits[:, :-1])
        return -jnp.mean(jnp.take_along_axis(logp, toks[:, 1:, None], axis=-1))

      row = NamedSharding(mesh, P(('data', 'fsdp'), None))
      _compile(
        f'LM {family} {size} {backend} B={B} T={a.seq_len} mesh={dict(mesh.shape)}',
        jax.grad(loss),
        (params, toks, toks),
        (p_sh, row, row),
      )


if __name__ == '__main__':
  main()
