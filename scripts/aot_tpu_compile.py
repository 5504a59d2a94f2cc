"""Compile for a real TPU topology on a machine without a TPU (DESIGN §8).

    pip install "jax[tpu]==0.10.2"   # libtpu; in a separate environment is fine
    python scripts/aot_tpu_compile.py [--topology=v5p:2x2x1] [--seq_len=4096]

Ahead-of-time lowers and compiles, for the TPU chips that ``jax.experimental.topologies``
describes, (1) the Pallas TPU attention kernels (flash and splash, not interpreted) forward
and backward on one chip, (2) the chunked Miras memory forward+backward for every deep rule
and Gated DeltaNet, sharded over the chips by batch, (3) whole LMs with Pallas attention,
sharded by rows and heads (the kernels under shard_map), and prints each compiled program's
memory analysis — proof that the code compiles for, and fits on, the target without one.
(3) is ``python -m miras_jax.aot`` (the trainer's train step) on a 170M config each; use that
command directly for any other config and topology.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax.experimental import topologies
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from miras_jax.aot import compile_for_topology, format_report
from miras_jax.layers.attention_backends import causal_attention
from miras_jax.memory import chunked, get_rule  # noqa: E402
from miras_jax.memory.testing import random_inputs  # noqa: E402
from miras_jax.train.defaults import family_config


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

  # (3) Whole LMs: the trainer's full sharded train step, through miras_jax.aot (the
  #     Pallas kernels run under shard_map, the rest is partitioned by the logical-axis rules).
  for spec in filter(None, a.models.split(',')):
    family, size, backend = spec.split(':')
    cfg = family_config(family, size)
    cfg.model.attention_backend = backend
    cfg.model.max_len = max(int(cfg.model.max_len), a.seq_len)
    cfg.train.seq_len, cfg.train.batch_size = a.seq_len, 4
    cfg.train.mesh.data, cfg.train.mesh.tensor = 2 if len(devs) % 2 == 0 else 1, -1
    print(format_report(compile_for_topology(cfg, a.topology, with_eval=False)), flush=True)


if __name__ == '__main__':
  main()
