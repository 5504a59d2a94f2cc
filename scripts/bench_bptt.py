"""How large is the outer gradient through a Miras memory layer at initialisation, by context
length and truncation horizon? A diagnostic for the exploding back-propagation through deep
memories with forgetting (benchmarks/README.md).

    python scripts/bench_bptt.py [--rules=titans,yaad,memora,moneta,ttt_mlp] [--lengths=1024,4096]
                                 [--horizons=0,512] [--head_dim=64] [--out=benchmarks/results/bptt.txt]

For each (rule, T, horizon): one Miras layer (2 heads, head_dim D, E = 2D, chunk 64, the
layer's default gate initialisation) on unit-variance Gaussian inputs (what the LM's pre-norm
feeds it), loss = <y, r> for a fixed random r; prints ‖∂L/∂x_0‖ (the first token's input
gradient: how far back the gradient reaches, intact) and ‖∂L/∂θ‖ over all the layer's
parameters. Horizon 0 = exact gradients; h > 0 = truncated every h tokens (`grad_horizon`).
Gates "layer": the layer's defaults (η ≤ 1, α in (0.99, 0.999)); "preset": the rule's 170m
preset (miras_jax/models/presets.py `_GATES`, `memory_grad_horizon`). The baseline in the same run is
the rule's first row (T=1024, layer gates, exact). Memora is also measured with the initial
memory's logit std of ``--memora_w0_std`` (layer gates, exact): 0.02 is the former near-uniform
W_0 whose memory is a no-op at initialisation (layers/miras.py).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.layers.miras import MirasLayer  # noqa: E402


def measure(
  rule: str,
  T: int,
  horizon: int,
  D: int,
  eta_max: float = MirasLayer.eta_max,
  alpha_init: tuple[float, float] = MirasLayer.alpha_init,
  simplex_w0_std: float = MirasLayer.simplex_w0_std,
) -> tuple[float, float]:
  E, H = 2 * D, 2
  layer = MirasLayer(
    rule=rule,
    num_heads=H,
    head_dim=D,
    chunk_size=64,
    gate_rank=8,
    grad_horizon=horizon,
    eta_max=eta_max,
    alpha_init=tuple(alpha_init),
    simplex_w0_std=simplex_w0_std,
  )
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, T, E)), jnp.float32)
  r = jnp.asarray(np.random.default_rng(1).standard_normal((1, T, E)), jnp.float32)
  params = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
  loss = lambda p, x: jnp.sum(layer.apply(p, x) * r)
  gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  g0 = float(jnp.linalg.norm(gx[0, 0]))
  gnorm = float(jnp.sqrt(sum(jnp.sum(a.astype(jnp.float32) ** 2) for a in jax.tree.leaves(gp))))
  return g0, gnorm


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rules', default='titans,yaad,memora,moneta,ttt_mlp')
  p.add_argument('--lengths', default='1024,4096')
  p.add_argument('--horizons', default='0,512')
  p.add_argument('--head_dim', type=int, default=64)
  p.add_argument(
    '--presets',
    type=int,
    default=1,
    help="also measure each rule with its 170m preset's gates (eta_max, alpha_init, "
    'memory_grad_horizon)',
  )
  p.add_argument(
    '--memora_w0_std',
    default='0.02',
    help="Memora only: also measure with these stds of W_0's logits (the layer's default is "
    f'{MirasLayer.simplex_w0_std}; 0.02, the former one, makes the memory a no-op at init)',
  )
  p.add_argument('--out', default='')
  a = p.parse_args(argv)
  lines = [
    f'# jax {jax.__version__} on {jax.devices()[0].device_kind}; head_dim {a.head_dim}',
    f'{"rule":8s} {"gates":8s} {"T":>6s} {"horizon":>8s} {"|dL/dx_0|":>11s} '
    f'{"|dL/dθ|":>11s} {"vs first row":>13s}',
  ]
  print('\n'.join(lines), flush=True)
  from miras_jax.models.presets import model_config

  for rule in a.rules.split(','):
    base = None
    preset = model_config(rule, '170m')
    settings = [
      ('layer', MirasLayer.eta_max, MirasLayer.alpha_init, [int(x) for x in a.horizons.split(',')])
    ]
    if a.presets:  # the 170m preset's gates and horizon
      settings.append(
        ('preset', preset.eta_max, tuple(preset.alpha_init), [preset.memory_grad_horizon])
      )
    if rule == 'memora' and a.memora_w0_std:
      for s in a.memora_w0_std.split(','):
        settings.append((f'w0std={s}', MirasLayer.eta_max, MirasLayer.alpha_init, [0], float(s)))
    for T in (int(t) for t in a.lengths.split(',')):
      for name, eta_max, alpha_init, horizons, *w0std in settings:
        for h in horizons:
          if h and h >= T:
            continue
          t0 = time.perf_counter()
          g0, gn = measure(rule, T, h, a.head_dim, eta_max, alpha_init, *w0std)
          if base is None:
            base = gn
          line = (
            f'{rule:8s} {name:8s} {T:6d} {h or "exact":>8} {g0:11.3g} {gn:11.3g} '
            f'{gn / base:13.3g}   ({time.perf_counter() - t0:.0f}s)'
          )
          print(line, flush=True)
          lines.append(line)
  if a.out:
    with open(a.out, 'w') as f:
      f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
