"""Pallas memory kernels vs the XLA chunked path vs cuDNN flash attention (issue 14).

    python scripts/bench_kernels.py [--ops=gla,mamba2,gated_deltanet] [--lengths=1024,...,16384]
        [--shapes=340m,b4h6d128] [--batch=0] [--repeats=5] [--out=benchmarks/results/kernels]
    python scripts/bench_kernels.py --tiny        # CPU smoke run (interpret mode; seconds)
    python scripts/bench_kernels.py --aot=v5p:2x2x1 --lengths=4096 --shapes=b4h6d128
        # from a CPU machine with libtpu: compile for a TPU topology (Mosaic, shard_map over
        # batch) and record only the compiler's peak memory per chip, pallas vs xla

For each op, shape and T: first a correctness check of the Pallas kernel against the XLA chunked
path (outputs, final state, every input gradient; printed as max relative error), then the best
of ``--repeats`` wall-clock times of forward and forward+backward, and the peak memory of each
compiled step (XLA memory analysis: arguments + outputs + temporaries), for
  pallas   pallas_kernels (memory_forward implementation='pallas'),
  pallas_xla_bwd   the deep memories only (titans, moneta, yaad, memora, ttt_mlp, ttt_linear):
           the same forward kernel with the XLA backward (mlp_memory backward='xla') instead of
           the Pallas backward kernel,
  xla      the chunked XLA path (implementation='xla'),
  cudnn    jax.nn.dot_product_attention(implementation='cudnn'), causal, same B, H, T, D
           (GPU only; 'xla' attention elsewhere, labelled so),
  fla      flash-linear-attention's chunk_gla / chunk_gated_delta_rule (torch), if importable.
Shapes: '340m' = the 340M preset's heads × head dim (miras_jax.models.presets) at the training
default batch (miras_jax.train.defaults; override with --batch), 'b4h6d128' = B=4, H=6, D=128
(the shape public TPU kernels report). Writes <out>_<device>.json and .png.

Goals (issue 14, H100/H200): GDN and GLA fwd+bwd ≥ 2× faster than xla at 4K; at 8K ≤ 0.35× the
time of cuDNN flash attention; no more memory than xla. The JSON records each ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.memory import get_rule, memory_forward
from miras_jax.memory.testing import random_inputs, rel_err

OPS = ('gla', 'mamba2', 'gated_deltanet', 'deltanet', 'retnet', 'linear_attention', 'longhorn')
# The deep memories (pallas_kernels/mlp_memory): also timed with the kernel's XLA backward
# ('pallas_xla_bwd': the same forward kernel, chunk_vjp.segment_backward) beside the default
# Pallas backward kernel ('pallas').
DEEP = ('titans', 'moneta', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear')
OPS += DEEP


def impls(op):
  return ('pallas', 'xla') + (('pallas_xla_bwd',) if op in DEEP else ())


def shape_of(name, batch):
  if name == '340m':
    from miras_jax.models.presets import model_config
    from miras_jax.train.defaults import defaults

    c = model_config('gla', '340m')
    B = batch or defaults().train.batch_size
    return B, c.n_heads, c.head_dim
  if name.startswith('b'):  # bXhYdZ
    b, rest = name[1:].split('h')
    h, d = rest.split('d')
    return batch or int(b), int(h), int(d)
  raise SystemExit(f'unknown shape {name!r}; use 340m or bXhYdZ (e.g. b4h6d128)')


def inputs(rule, B, H, T, D, dtype):
  inp = random_inputs(rule, jax.random.PRNGKey(0), B=B, H=H, T=8, dk=D)
  key = jax.random.split(jax.random.PRNGKey(1), 8)
  q, k, v = (jax.random.normal(key[i], (B, H, T, D), dtype) for i in range(3))
  k = (k / jnp.linalg.norm(k.astype(jnp.float32), axis=-1, keepdims=True)).astype(dtype)
  gates = {}
  for n, g in inp['gates'].items():
    shp = (B, H, T) + g.shape[3:]
    base = jax.random.normal(key[4], shp)
    gates[n] = jax.nn.log_sigmoid(base + 3.0) if n == 'log_alpha' else jax.nn.sigmoid(base)
  return q, k, v, gates, inp['w0']


def steps(rule, impl, w0):
  def fwd(q, k, v, gates):
    if impl == 'pallas_xla_bwd':
      from pallas_kernels.mlp_memory.api import mlp_memory

      return mlp_memory(rule, q, k, v, gates, w0=w0, backward='xla')
    return memory_forward(rule, q, k, v, gates, w0=w0, implementation=impl)

  def loss(q, k, v, gates):
    y, s = fwd(q, k, v, gates)
    return jnp.sum(y.astype(jnp.float32) ** 2) + jnp.sum(s['A'][0] ** 2)

  return fwd, jax.value_and_grad(loss, argnums=(0, 1, 2, 3))


def attention_steps():
  impl = 'cudnn' if jax.default_backend() == 'gpu' else 'xla'

  def fwd(q, k, v):  # [B, H, T, D] → the [B, T, H, D] layout of dot_product_attention
    t = lambda x: jnp.swapaxes(x, 1, 2)
    return jax.nn.dot_product_attention(t(q), t(k), t(v), is_causal=True, implementation=impl)

  loss = lambda q, k, v: jnp.sum(fwd(q, k, v).astype(jnp.float32) ** 2)
  return impl, fwd, jax.value_and_grad(loss, argnums=(0, 1, 2))


def measure(f, args, repeats):
  """(best ms, peak MiB of the compiled step) or (None, error string)."""
  try:
    c = jax.jit(f).lower(*args).compile()
  except Exception as e:  # noqa: BLE001 (a failed variant is recorded, the sweep goes on)
    return None, f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
  ma = c.memory_analysis()
  mib = None
  if ma is not None:
    mib = (ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes) / 2**20
  try:
    jax.block_until_ready(c(*args))
    best = float('inf')
    for _ in range(repeats):
      t = time.perf_counter()
      jax.block_until_ready(c(*args))
      best = min(best, time.perf_counter() - t)
  except Exception as e:  # noqa: BLE001
    return None, f'{type(e).__name__}: {str(e).splitlines()[0][:200]}'
  return best * 1e3, mib


def aot_memory(rule, w0, args, topology):
  """Peak MiB per chip (temp, args + outputs) of fwd+bwd compiled for a TPU topology, pallas
  vs xla, batch sharded over the chips with shard_map (DESIGN §8)."""
  from jax.experimental import topologies
  from jax.sharding import Mesh, NamedSharding
  from jax.sharding import PartitionSpec as P

  from pallas_kernels.platform import compile_pallas_for_tpu

  mesh = Mesh(list(topologies.get_topology_desc(topology, 'tpu').devices), ('x',))
  spec = jax.tree.map(lambda _: P('x'), args)
  shaped = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P('x'))), args
  )
  out = {}
  for impl in ('pallas', 'xla'):
    _, grad = steps(rule, impl, w0)
    g = lambda *a, grad=grad: grad(*a)[1]
    f = jax.shard_map(g, mesh=mesh, in_specs=spec, out_specs=spec, check_vma=False)
    with compile_pallas_for_tpu():
      ma = jax.jit(f).lower(*shaped).compile().memory_analysis()
    out[f'{impl}_fwd_bwd_temp_mib'] = ma.temp_size_in_bytes / 2**20
    out[f'{impl}_fwd_bwd_args_out_mib'] = (
      ma.argument_size_in_bytes + ma.output_size_in_bytes
    ) / 2**20
  return out


def check(rule, w0, args):
  """Max relative error of the Pallas path against XLA: outputs, final state, gradients."""
  outs = {}
  for impl in ('pallas', 'xla'):
    fwd, grad = steps(rule, impl, w0)
    y, s = jax.jit(fwd)(*args)
    _, g = jax.jit(grad)(*args)
    outs[impl] = [y, s['A'][0]] + jax.tree.leaves(g)
  return max(float(rel_err(a, b)) for a, b in zip(outs['pallas'], outs['xla']))


def fla_time(op, B, H, T, D, repeats):
  try:
    import torch
    from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    from fla.ops.gla import chunk_gla
  except Exception:  # noqa: BLE001
    return None
  if not torch.cuda.is_available() or op not in ('gla', 'gated_deltanet'):
    return None
  dev, dt = 'cuda', torch.bfloat16
  q, k, v = (torch.randn(B, T, H, D, device=dev, dtype=dt, requires_grad=True) for _ in range(3))
  if op == 'gla':
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, D, device=dev) + 3).requires_grad_()
    run = lambda: chunk_gla(q, k, v, g)[0]
  else:
    g = torch.nn.functional.logsigmoid(torch.randn(B, T, H, device=dev) + 3).requires_grad_()
    beta = torch.rand(B, T, H, device=dev, dtype=dt).requires_grad_()
    run = lambda: chunk_gated_delta_rule(q, k, v, g, beta)[0]
  res = {}
  for mode in ('fwd', 'fwd_bwd'):
    best = float('inf')
    for _ in range(repeats + 1):
      torch.cuda.synchronize()
      t = time.perf_counter()
      o = run()
      if mode == 'fwd_bwd':
        o.float().pow(2).sum().backward()
      torch.cuda.synchronize()
      best = min(best, time.perf_counter() - t)
    res[mode] = best * 1e3
  return res


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--ops', default='gla,mamba2,gated_deltanet')
  p.add_argument('--lengths', default='1024,2048,4096,8192,16384')
  p.add_argument('--shapes', default='340m,b4h6d128')
  p.add_argument('--batch', type=int, default=0, help='override the batch of every shape')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--dtype', default='bfloat16')
  p.add_argument('--out', default='benchmarks/results/kernels')
  p.add_argument('--tiny', action='store_true', help='CPU smoke run: T=64, B=1, H=2, D=16')
  p.add_argument('--aot', default='', help='TPU topology: compile only, record memory')
  a = p.parse_args(argv)
  for op in a.ops.split(','):
    if op not in OPS:
      raise SystemExit(f'unknown op {op!r}; choose from {",".join(OPS)}')
  if a.tiny:
    a.lengths, a.shapes, a.repeats = '64', 'b1h2d16', 1
  dtype = jnp.dtype(a.dtype)
  device = jax.devices()[0].device_kind.replace(' ', '_').lower()
  att_impl, att_fwd, att_grad = attention_steps()
  rows = []
  for shape in a.shapes.split(','):
    B, H, D = shape_of(shape, 1 if a.tiny else a.batch)
    for op in a.ops.split(','):
      rule = get_rule(op)
      checked = False
      for T in (int(x) for x in a.lengths.split(',')):
        q, k, v, gates, w0 = inputs(rule, B, H, T, D, dtype)
        row = dict(op=op, shape=shape, B=B, H=H, D=D, T=T, dtype=a.dtype, device=device)
        if a.aot:
          row.update(device=a.aot, **aot_memory(rule, w0, (q, k, v, gates), a.aot))
          rows.append(row)
          print(json.dumps(row), flush=True)
          continue
        if not checked:  # correctness on this device before any timing
          row['max_rel_err_vs_xla'] = check(rule, w0, (q, k, v, gates))
          checked = True
        for impl in impls(op):
          fwd, grad = steps(rule, impl, w0)
          row[f'{impl}_fwd_ms'], row[f'{impl}_fwd_mib'] = measure(fwd, (q, k, v, gates), a.repeats)
          row[f'{impl}_fwd_bwd_ms'], row[f'{impl}_fwd_bwd_mib'] = measure(
            grad, (q, k, v, gates), a.repeats
          )
        row['attention_impl'] = att_impl
        row['attn_fwd_ms'], row['attn_fwd_mib'] = measure(att_fwd, (q, k, v), a.repeats)
        row['attn_fwd_bwd_ms'], row['attn_fwd_bwd_mib'] = measure(att_grad, (q, k, v), a.repeats)
        fl = fla_time(op, B, H, T, D, a.repeats)
        if fl:
          row['fla_fwd_ms'], row['fla_fwd_bwd_ms'] = fl['fwd'], fl['fwd_bwd']
        num = lambda x: isinstance(x, float)
        if num(row['pallas_fwd_bwd_ms']) and num(row['xla_fwd_bwd_ms']):
          row['speedup_vs_xla'] = row['xla_fwd_bwd_ms'] / row['pallas_fwd_bwd_ms']
        if num(row['pallas_fwd_bwd_ms']) and num(row['attn_fwd_bwd_ms']):
          row['time_vs_attention'] = row['pallas_fwd_bwd_ms'] / row['attn_fwd_bwd_ms']
        rows.append(row)
        print(json.dumps(row), flush=True)
  if a.aot:
    device = 'aot_' + a.aot.replace(':', '_')
  path = f'{a.out}_{"tiny_" if a.tiny else ""}{device}'
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path + '.json', 'w') as f:
    json.dump(rows, f, indent=1)
  print(f'wrote {path}.json' + (f' and {path}.png' if plot(rows, path + '.png') else ''))


def plot(rows, path):
  try:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
  except ImportError:
    return False
  groups = sorted({(r['op'], r['shape']) for r in rows})
  if not groups or 'pallas_fwd_bwd_ms' not in rows[0]:
    return False
  fig, axes = plt.subplots(1, len(groups), figsize=(4.5 * len(groups), 3.6), squeeze=False)
  for ax, (op, shape) in zip(axes[0], groups):
    rs = [r for r in rows if r['op'] == op and r['shape'] == shape]
    Ts = [r['T'] for r in rs]
    for key, label in (
      ('pallas_fwd_bwd_ms', 'pallas'),
      ('xla_fwd_bwd_ms', 'xla chunked'),
      ('attn_fwd_bwd_ms', f'attention ({rs[0]["attention_impl"]})'),
      ('fla_fwd_bwd_ms', 'fla (torch)'),
    ):
      ys = [r.get(key) if isinstance(r.get(key), float) else np.nan for r in rs]
      if not all(np.isnan(ys)):
        ax.plot(Ts, ys, marker='o', label=label)
    ax.set(xscale='log', yscale='log', xlabel='T', ylabel='fwd+bwd ms', title=f'{op} {shape}')
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  return True


if __name__ == '__main__':
  main()
