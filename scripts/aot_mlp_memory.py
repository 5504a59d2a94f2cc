"""Compiled TPU memory of the deep-memory Pallas kernel vs the XLA chunked path (issue 13), from a
machine without a TPU (libtpu needed, e.g. the tpu extra in a separate environment):

    python scripts/aot_mlp_memory.py [--topology=v5p:2x2x1] [--rules=titans] [--batch=1]
        [--heads=16] [--head_dim=64] [--seq_len=4096] [--chunk_size=64]

One chip, one memory layer of the 340M presets by default (16 heads × 64, T = 4096, batch 1 per
chip), bf16 inputs: forward and forward+backward of ``memory_forward`` with implementation 'xla'
and of the deep-memory kernel (``mlp_memory``, what implementation 'pallas' calls) with each
custom-VJP backward: 'pallas/kernel' (the Mosaic backward kernel, the default) and 'pallas/xla'
(chunk_vjp.segment_backward in XLA), each ahead-of-time compiled with Mosaic; prints XLA's memory
analysis (temporaries, arguments + outputs) per program.

Then the work of the backward per chunk (``--chunk_costs``, on by default): XLA's cost analysis
counts a while loop's body once (measured: a 10-step ``lax.scan`` of a matmul reports the FLOPs of
one) and a Pallas kernel not at all, so whole-program numbers compare nothing. Instead: XLA's cost
analysis (compiled for the topology) of one chunk's forward and of one backward step (the chunk's
VJP plus one chunk's state recompute: an upper bound, the backward recomputes R − 1 of every R),
both vmapped over the batch·heads as in the XLA backward's scan body. Both backwards run this same traced VJP, so their FLOPs are equal
by construction; the 'bytes' column is XLA's HBM traffic estimate of that body (× chunks: the XLA
backward's), against the kernel backward's HBM traffic (every operand and result once: tokens, dy,
residuals in; token cotangents, dh0, dconsts out). Compilation only: no timing without a TPU.
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
  p.add_argument('--chunk_costs', type=int, default=1)
  a = p.parse_args(argv)
  dev = list(topologies.get_topology_desc(a.topology, 'tpu').devices)[0]
  rep = NamedSharding(Mesh([dev], ('x',)), P())
  B, H, T, D = a.batch, a.heads, a.seq_len, a.head_dim
  print(f'target: {a.topology} ({dev.device_kind}), one chip; B={B} H={H} T={T} d={D}', flush=True)
  print(f'{"rule":8s} {"impl":13s} {"pass":8s} {"temp MiB":>9s} {"args+out MiB":>13s}', flush=True)
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
        io = (ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20
        print(
          f'{name:8s} {impl:13s} {what:8s} {ma.temp_size_in_bytes / 2**20:9.1f} {io:13.1f}',
          flush=True,
        )
    if a.chunk_costs:
      chunk_costs(rule, w0, uses, tok, gate, a.chunk_size, rep)


def chunk_costs(rule, w0, uses, tok, gate, chunk_size, rep):
  """Per-chunk XLA cost of the backward (module doc); the chunk function and the kernel's operand
  shapes are taken from a trace of ``mlp_memory``."""
  import pallas_kernels.mlp_memory.pallas_tpu as pt

  seen = {}
  orig = pt._backward

  def spy(chunk_fn, c, R, interpret, toks, consts, res, dy, dhT):
    seen.update(fn=chunk_fn, c=c, R=R, ops=(toks, consts, res, dy, dhT))
    return orig(chunk_fn, c, R, interpret, toks, consts, res, dy, dhT)

  def loss(q, k, v, *g):
    y = mlp_memory(rule, q, k, v, dict(zip(uses, g)), w0=w0, chunk_size=chunk_size)[0]
    return jnp.sum(y.astype(jnp.float32))

  pt._backward = spy
  try:
    with compile_pallas_for_tpu():
      args = (tok, tok, tok) + (gate,) * len(uses)
      jax.eval_shape(jax.grad(loss, argnums=tuple(range(len(args)))), *args)
  finally:
    pt._backward = orig
  fn, c, R = seen['fn'], seen['c'], seen['R']
  toks, consts, res, dy, dhT = seen['ops']
  N, Tp = toks[0].shape[:2]
  n_chunks = Tp // c
  f32 = jnp.float32
  sds = lambda shape, dt=f32: jax.ShapeDtypeStruct((N,) + tuple(shape), dt, sharding=rep)
  x = tuple(sds((c,) + t.shape[2:], f32) for t in toks[:-1]) + (sds(toks[-1].shape[2:]),)
  S = tuple(sds(r.shape[2:]) for r in res)
  K = tuple(sds(k.shape[1:]) for k in consts)
  dyc = sds((c, dy.shape[2]))

  def fwd(S, x, K):
    return jax.vmap(fn)(S, x, K)

  def bwd(S, x, K, dy, dS):
    def one(S, x, K, dy, dS):
      S_next = fn(S, x, K)[1]  # the recompute of the next chunk-start state
      _, vjp = jax.vjp(lambda x, S, K: fn(S, x, K), x, S, K)
      return S_next, vjp((dy, dS))

    return jax.vmap(one)(S, x, K, dy, dS)

  def cost(f, *a):
    ca = jax.jit(f).lower(*a).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    return ca.get('flops', float('nan')), ca.get('bytes accessed', float('nan'))

  (ff, fb), (bf, bb) = cost(fwd, S, x, K), cost(bwd, S, x, K, dyc, S)
  nbytes = lambda xs: sum(x.size * jnp.dtype(x.dtype).itemsize for x in xs)
  kern = nbytes(toks) * 2 + nbytes(consts) * 2 + nbytes(res) + nbytes((dy,)) + nbytes(dhT) * 2
  print(f'{rule.name}: per chunk (all {N} batch·heads; {n_chunks} chunks, R = {R}):', flush=True)
  print(f'  forward chunk        {ff / 1e9:8.3f} GFLOP  {fb / 2**20:8.2f} MiB (XLA bytes)')
  print(f'  backward step        {bf / 1e9:8.3f} GFLOP  {bb / 2**20:8.2f} MiB (XLA bytes)')
  print(
    f'  whole backward: ≤ {bf * n_chunks / 1e9:.1f} GFLOP either way; HBM traffic: XLA'
    f' ≈ {bb * n_chunks / 2**30:.2f} GiB (the step × chunks), kernel {kern / 2**30:.3f} GiB'
    ' (operands + results once)',
    flush=True,
  )


if __name__ == '__main__':
  main()
