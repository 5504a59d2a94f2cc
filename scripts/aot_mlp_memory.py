"""Compiled TPU memory of the deep-memory Pallas kernel vs the XLA chunked path (issue 13), from a
machine without a TPU (libtpu needed, e.g. the tpu extra in a separate environment):

    python scripts/aot_mlp_memory.py [--topology=v5p:2x2x1] [--rules=titans] [--batch=1]
        [--heads=16] [--head_dim=64] [--seq_len=4096] [--chunk_size=64]

One chip, one memory layer of the 340M presets by default (16 heads × 64, T = 4096, batch 1 per
chip), bf16 inputs: forward and forward+backward of ``memory_forward`` with implementation 'xla'
and of the deep-memory kernel (``mlp_memory``, what implementation 'pallas' calls) with each
custom-VJP backward: 'pallas/kernel' (the Mosaic backward kernel, the default) and 'pallas/xla'
(chunk_vjp.segment_backward in XLA), each ahead-of-time compiled with Mosaic; prints XLA's memory
analysis (temporaries, arguments + outputs) per program and its cost analysis (GFLOP, GB
accessed), which counts XLA's own ops only: a Pallas kernel (a Mosaic custom call) adds nothing to
either, so those two columns compare the XLA work left around the kernels. Compilation only: no
timing without a TPU.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from jax.experimental import topologies  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

from miras_jax.memory import get_rule, memory_forward  # noqa: E402
from miras_jax.memory.testing import random_w0  # noqa: E402
from pallas_kernels.mlp_memory.api import mlp_memory  # noqa: E402
from pallas_kernels.platform import compile_pallas_for_tpu  # noqa: E402


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--topology', default='v5p:2x2x1')
  p.add_argument('--rules', default='titans')
  p.add_argument('--batch', type=int, default=1)
  p.add_argument('--heads', type=int, default=16)
  p.add_argument('--head_dim', type=int, default=64)
  p.add_argument('--seq_len', type=int, default=4096)
  p.add_argument('--chunk_size', type=int, default=64)
  a = p.parse_args(argv)
  dev = list(topologies.get_topology_desc(a.topology, 'tpu').devices)[0]
  rep = NamedSharding(Mesh([dev], ('x',)), P())
  B, H, T, D = a.batch, a.heads, a.seq_len, a.head_dim
  print(f'target: {a.topology} ({dev.device_kind}), one chip; B={B} H={H} T={T} d={D}', flush=True)
  head = f'{"rule":8s} {"impl":13s} {"pass":8s} {"temp MiB":>9s} {"args+out MiB":>13s}'
  print(head + f' {"XLA GFLOP":>10s} {"XLA GB":>8s}', flush=True)
  tok = jax.ShapeDtypeStruct((B, H, T, D), jnp.bfloat16, sharding=rep)
  gate = jax.ShapeDtypeStruct((B, H, T), jnp.float32, sharding=rep)
  for name in a.rules.split(','):
    rule = get_rule(name)
    w0 = random_w0(rule, jax.random.PRNGKey(0), H, D, D)
    uses = [n for n in ('eta', 'log_alpha', 'log_mu') if rule.uses[n]]
    for impl in ('xla', 'pallas/kernel', 'pallas/xla'):

      def fn(q, k, v, *g, impl=impl, rule=rule, w0=w0, uses=uses):
        gates = dict(zip(uses, g))
        kw = dict(w0=w0, chunk_size=a.chunk_size)
        if impl == 'xla':
          return memory_forward(rule, q, k, v, gates, implementation='xla', **kw)[0]
        return mlp_memory(rule, q, k, v, gates, backward=impl.split('/')[1], **kw)[0]

      def loss(*x, fn=fn):
        return jnp.sum(fn(*x).astype(jnp.float32))

      args = (tok, tok, tok) + (gate,) * len(uses)
      for what, f in (('fwd', fn), ('fwd+bwd', jax.grad(loss, argnums=tuple(range(len(args)))))):
        if what == 'fwd' and impl == 'pallas/xla':
          continue  # the same forward as pallas/kernel
        with compile_pallas_for_tpu():
          compiled = jax.jit(f).lower(*args).compile()
        ma = compiled.memory_analysis()
        ca = compiled.cost_analysis() or {}
        ca = ca[0] if isinstance(ca, (list, tuple)) else ca
        io = (ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20
        flops, nbytes = ca.get('flops', float('nan')), ca.get('bytes accessed', float('nan'))
        print(
          f'{name:8s} {impl:13s} {what:8s} {ma.temp_size_in_bytes / 2**20:9.1f} {io:13.1f}'
          f' {flops / 1e9:10.2f} {nbytes / 1e9:8.2f}',
          flush=True,
        )


if __name__ == '__main__':
  main()
