"""Forward+backward time of the chunked memory vs the token-by-token reference.

    python scripts/bench_memory.py [--rules=moneta,titans] [--lengths=512,2048,8192]
        [--chunk_size=64] [--ref_max_len=2048] [--out=bench_memory.json]
    python scripts/bench_memory.py --compare_backward [--rules=titans] [--lengths=2048]
    python scripts/bench_memory.py --chunk_flops [--rules=titans,moneta]
    python scripts/bench_memory.py --compare_inner_form [--rules=titans] [--lengths=2048]
        [--chunk_sizes=16,64]

For each rule and length: ms per fwd+bwd of both paths (same chunk size, same inputs),
the speed ratio, and the peak temporary memory of the compiled chunked step from XLA's
memory analysis (it should grow linearly in T). Writes JSON and a throughput-vs-length
plot next to it. B=2, 4 heads, head dim 64 by default (issue "memory core").

``--compare_backward`` (issue 13): for each rule and length, the chunked forward alone, then
forward+backward with the autodiff backward and with the reverse-recompute backward
(chunked(backward=...)) at each ``--remat_groups``, timed in ``--repeats`` interleaved rounds (best
of each, so machine load hits them alike), with the ratio fwd+bwd / fwd. On a shared machine, also
run it single-threaded on one core (``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false taskset -c 0``):
the backward has many more small ops than the forward, and the two threads' synchronisation per
op inflates its ratio under load.

``--compare_inner_form`` (issue 13, "Scope"): the general chunk's two in-chunk forms
(chunked(inner_form='matmul' | 'scan'), memory/chunk_scan.py) at each ``--chunk_sizes``, forward
and forward+backward (the default backward), timed in the same interleaved rounds; scan / matmul
> 1 means the matmul form is faster; memory/chunk_scan.AUTO records the result per platform.

``--chunk_flops`` (issue 13): XLA's FLOP count (compiled cost analysis) of one chunk of the deep
memory's general chunk function, vmapped over B·H: its forward (reads and state update), the
state update alone (what the recompute backward re-runs to rebuild a segment's chunk-start
states) and its VJP as the recompute backward applies it (the chunk's forward recomputed inside,
unused outputs removed by XLA). The floor of fwd+bwd / fwd for the recompute backward with g
chunks per segment (``--remat_groups``) follows: 1 + ((g − 1)/g · state + vjp) / fwd. (Whole-program
cost analysis counts a loop body once, so the per-chunk functions are measured instead.)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time

import jax
import jax.numpy as jnp

from miras_jax.memory import chunked, common, get_rule, list_rules, reference  # noqa: E402
from miras_jax.memory.chunk_vjp import chunk_vjp  # noqa: E402
from miras_jax.memory.chunked import chunk_step  # noqa: E402
from miras_jax.memory.testing import random_inputs  # noqa: E402


def _step(fn, rule, inp, b):
  def loss(q, k, v, gates):
    y, st = fn(rule, q, k, v, gates, w0=inp['w0'], outer=inp['outer'], chunk_size=b)
    return jnp.sum(y.astype(jnp.float32) ** 2)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2, 3)))


def _compare_backward(a):
  """Forward vs forward+backward of the chunked path, autodiff vs recompute backward."""
  groups = [int(g) for g in a.remat_groups.split(',')]
  print(f'{"rule":10s} {"T":>6s} {"backward":>10s} {"group":>5s} {"ms":>9s} {"/fwd":>6s}')
  rows = []
  for name in a.rules.split(','):
    rule = get_rule(name)
    for T in [int(x) for x in a.lengths.split(',')]:
      inp = random_inputs(rule, jax.random.PRNGKey(0), B=a.batch, H=a.heads, T=T, dk=a.head_dim)
      args = (inp['q'], inp['k'], inp['v'], inp['gates'])

      def loss(q, k, v, gates, backward, group):
        kw = dict(w0=inp['w0'], outer=inp['outer'], chunk_size=a.chunk_size)
        y, _ = chunked(rule, q, k, v, gates, remat_group=group, backward=backward, **kw)
        return jnp.sum(y.astype(jnp.float32) ** 2)

      cases = {
        ('forward', None): jax.jit(functools.partial(loss, backward='autodiff', group=groups[0]))
      }
      for bw in ('autodiff', 'recompute'):
        for g in groups:
          step = functools.partial(loss, backward=bw, group=g)
          cases[bw, g] = jax.jit(jax.value_and_grad(step, argnums=(0, 1, 2, 3)))
      best = _best_of_rounds(cases, args, a.repeats)
      t_f = best['forward', None]
      for (bw, g), t in best.items():
        rows.append(dict(rule=name, T=T, backward=bw, group=g, ms=1e3 * t, ratio=t / t_f))
        print(
          f'{name:10s} {T:6d} {bw:>10s} {g or "-":>5} {1e3 * t:9.1f} {t / t_f:6.2f}', flush=True
        )
  return rows


def _compare_inner_form(a):
  """Forward and forward+backward of both in-chunk forms (see the module doc)."""
  print(f'device: {jax.devices()[0].device_kind}; B={a.batch} H={a.heads} d={a.head_dim}')
  print(
    f'{"rule":10s} {"T":>6s} {"b":>4s} {"pass":>8s} {"matmul ms":>10s} {"scan ms":>10s} '
    f'{"scan/mm":>8s}'
  )
  rows = []
  for name in a.rules.split(','):
    rule = get_rule(name)
    for T in [int(x) for x in a.lengths.split(',')]:
      inp = random_inputs(rule, jax.random.PRNGKey(0), B=a.batch, H=a.heads, T=T, dk=a.head_dim)
      args = (inp['q'], inp['k'], inp['v'], inp['gates'])
      for b in [int(x) for x in a.chunk_sizes.split(',')]:

        def loss(q, k, v, gates, form, b=b):
          kw = dict(w0=inp['w0'], outer=inp['outer'], chunk_size=b)
          y, _ = chunked(rule, q, k, v, gates, inner_form=form, **kw)
          return jnp.sum(y.astype(jnp.float32) ** 2)

        cases = {}
        for form in ('matmul', 'scan'):
          f = functools.partial(loss, form=form)
          cases['forward', form] = jax.jit(f)
          cases['fwd+bwd', form] = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3)))
        best = _best_of_rounds(cases, args, a.repeats)
        for pas in ('forward', 'fwd+bwd'):
          t_m, t_s = best[pas, 'matmul'], best[pas, 'scan']
          rows.append(
            dict(rule=name, T=T, chunk=b, pass_=pas, matmul_ms=1e3 * t_m, scan_ms=1e3 * t_s)
          )
          print(
            f'{name:10s} {T:6d} {b:4d} {pas:>8s} {1e3 * t_m:10.1f} {1e3 * t_s:10.1f} '
            f'{t_s / t_m:8.2f}',
            flush=True,
          )
  return rows


def _chunk_flops(a):
  """FLOPs of one chunk's forward, state update alone and VJP (see the module doc)."""

  def flops(f, *args):
    ca = jax.jit(f).lower(*args).compile().cost_analysis()
    return (ca[0] if isinstance(ca, list) else ca)['flops']

  print(f'B={a.batch} H={a.heads} d={a.head_dim} b={a.chunk_size}; MFLOP per chunk')
  groups = [int(g) for g in a.remat_groups.split(',')]
  print(
    f'{"rule":10s} {"fwd":>8s} {"state":>8s} {"vjp":>8s} '
    + ' '.join(f'{f"floor g={g}":>10s}' for g in groups)
  )
  rows = []
  for name in a.rules.split(','):
    rule = get_rule(name)
    b, N = a.chunk_size, a.batch * a.heads
    inp = random_inputs(rule, jax.random.PRNGKey(0), B=a.batch, H=a.heads, T=b, dk=a.head_dim)
    args = (inp['q'], inp['k'], inp['v'], inp['gates'], inp['w0'], inp['outer'], None, None)
    P = common.prepare(rule, *args)
    flat = lambda x: None if x is None else x.reshape((N,) + x.shape[2:])
    x = {n: flat(P[n]) for n in ('q', 'k', 'v', 'eta', 'la', 'lm', 'delta', 'reset')}
    x.update(active=jnp.ones((N, b)), cut=None)
    st = jax.tree.map(flat, P['state'])
    consts = jax.tree.map(lambda h: jnp.tile(h, (a.batch,) + (1,) * (h.ndim - 1)), P['fresh'])
    consts = (
      consts,
      jax.tree.map(lambda h: jnp.tile(h, (a.batch,) + (1,) * (h.ndim - 1)), P['outer']),
    )
    body = jax.vmap(chunk_step(rule, False))

    def vjp(st, x, consts):
      c2, y = body(st, x, consts)
      dc = [jnp.ones_like(z) for z in jax.tree.leaves(c2) if jnp.issubdtype(z.dtype, jnp.inexact)]
      return chunk_vjp(body, st, x, consts, dc, jnp.ones_like(y))

    f_fwd = flops(body, st, x, consts)
    f_state = flops(lambda *z: body(*z)[0], st, x, consts)
    f_vjp = flops(vjp, st, x, consts)
    floors = {g: 1 + ((g - 1) / g * f_state + f_vjp) / f_fwd for g in groups}
    rows.append(dict(rule=name, fwd=f_fwd, state=f_state, vjp=f_vjp, floor=floors))
    print(
      f'{name:10s} {f_fwd / 1e6:8.1f} {f_state / 1e6:8.1f} {f_vjp / 1e6:8.1f} '
      + ' '.join(f'{floors[g]:10.2f}' for g in groups),
      flush=True,
    )
  return rows


def _time(f, args, repeats, warm=True):
  if warm:
    jax.block_until_ready(f(*args))
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(f(*args))
    best = min(best, time.perf_counter() - t)
  return best


def _best_of_rounds(cases, args, rounds):
  """{key: best seconds} of ``cases`` ({key: jitted f}), each compiled first, then timed once per
  round in turn: load from other jobs hits every case alike."""
  for f in cases.values():
    jax.block_until_ready(f(*args))
  best = dict.fromkeys(cases, float('inf'))
  for _ in range(rounds):
    for key, f in cases.items():
      best[key] = min(best[key], _time(f, args, 1, warm=False))
  return best


def _peak_bytes(f, args):
  try:
    ma = f.lower(*args).compile().memory_analysis()
    return int(ma.temp_size_in_bytes + ma.argument_size_in_bytes + ma.output_size_in_bytes)
  except Exception:  # some backends do not report
    return -1


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rules', default=','.join(list_rules()))
  p.add_argument('--lengths', default='512,2048,8192')
  p.add_argument('--batch', type=int, default=2)
  p.add_argument('--heads', type=int, default=4)
  p.add_argument('--head_dim', type=int, default=64)
  p.add_argument('--chunk_size', type=int, default=64)
  p.add_argument(
    '--ref_max_len',
    type=int,
    default=2048,
    help='skip the reference above this length: its backward keeps every '
    "token's state (deep memories at T=8192 need tens of GB)",
  )
  p.add_argument('--repeats', type=int, default=3)
  p.add_argument('--out', default='bench_memory.json')
  p.add_argument(
    '--compare_backward',
    action='store_true',
    help='forward vs forward+backward, autodiff vs recompute backward (issue 13)',
  )
  p.add_argument('--remat_groups', default='1,4', help='with --compare_backward')
  p.add_argument(
    '--compare_inner_form',
    action='store_true',
    help="the general chunk's masked-matmul vs associative-scan in-chunk form (issue 13)",
  )
  p.add_argument('--chunk_sizes', default='16,64', help='with --compare_inner_form')
  p.add_argument(
    '--chunk_flops',
    action='store_true',
    help="FLOPs of one chunk's forward, state update and VJP: the recompute backward's floor",
  )
  a = p.parse_args(argv)
  if a.compare_backward or a.chunk_flops or a.compare_inner_form:
    if a.compare_inner_form:
      rows = _compare_inner_form(a)
    else:
      rows = _compare_backward(a) if a.compare_backward else _chunk_flops(a)
    with open(a.out, 'w') as f:
      json.dump(dict(device=jax.devices()[0].device_kind, args=vars(a), rows=rows), f, indent=1)
    print(f'wrote {a.out}')
    return
  lengths = [int(x) for x in a.lengths.split(',')]
  rows = []
  print(
    f'device: {jax.devices()[0].device_kind}; B={a.batch} H={a.heads} d={a.head_dim} '
    f'b={a.chunk_size}',
    flush=True,
  )
  print(
    f'{"rule":18s} {"T":>6s} {"chunked ms":>11s} {"reference ms":>13s} {"speedup":>8s} '
    f'{"peak MiB":>9s}',
    flush=True,
  )
  for name in a.rules.split(','):
    rule = get_rule(name)
    for T in lengths:
      inp = random_inputs(rule, jax.random.PRNGKey(0), B=a.batch, H=a.heads, T=T, dk=a.head_dim)
      args = (inp['q'], inp['k'], inp['v'], inp['gates'])
      fc = _step(chunked, rule, inp, a.chunk_size)
      tc = _time(fc, args, a.repeats)
      peak = _peak_bytes(fc, args)
      tr = None
      if T <= a.ref_max_len:
        fr = _step(reference, rule, inp, a.chunk_size)
        tr = _time(fr, args, max(1, a.repeats // 2))
      ratio = tr / tc if tr else None
      rows.append(
        dict(
          rule=name,
          T=T,
          chunked_ms=1e3 * tc,
          reference_ms=None if tr is None else 1e3 * tr,
          speedup=ratio,
          peak_bytes=peak,
          tokens_per_s=a.batch * T / tc,
        )
      )
      print(
        f'{name:18s} {T:6d} {1e3 * tc:11.1f} '
        f'{"-" if tr is None else f"{1e3 * tr:.1f}":>13s} '
        f'{"-" if ratio is None else f"{ratio:.1f}x":>8s} {peak / 2**20:9.1f}',
        flush=True,
      )
  with open(a.out, 'w') as f:
    json.dump(dict(device=jax.devices()[0].device_kind, args=vars(a), rows=rows), f, indent=1)
  try:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for name in a.rules.split(','):
      r = [x for x in rows if x['rule'] == name]
      ax[0].plot([x['T'] for x in r], [x['tokens_per_s'] for x in r], marker='o', label=name)
      ax[1].plot([x['T'] for x in r], [x['peak_bytes'] / 2**20 for x in r], marker='o', label=name)
    for x, t in zip(ax, ('chunked fwd+bwd tokens/s', 'peak MiB (compiled)')):
      x.set_xscale('log', base=2)
      x.set_xlabel('sequence length')
      x.set_title(t)
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(os.path.splitext(a.out)[0] + '.png', dpi=100)
  except ImportError:
    pass
  print(f'wrote {a.out}')


if __name__ == '__main__':
  main()
