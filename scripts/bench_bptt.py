"""How large is the outer gradient through a Miras memory layer, by context length and truncation
horizon, at initialisation and with learned parameters? A diagnostic for the exploding
back-propagation through deep memories with forgetting (benchmarks/README.md).

    python scripts/bench_bptt.py [--rules=titans,yaad,memora,moneta,ttt_mlp] [--lengths=1024,4096]
                                 [--horizons=0,512] [--head_dim=64] [--heads=2] [--ln_eps=1.0]
                                 [--variants=step_scale=implicit_chunk,...]
                                 [--checkpoints=NAME=WORKDIR,...] [--out=benchmarks/results/x.txt]

At initialisation, for each (rule, T, horizon): one Miras layer (``--heads`` heads, head_dim D,
E = 2D, chunk 64, the layer's default gate initialisation) on unit-variance Gaussian inputs
(what the LM's pre-norm feeds it), loss = <y, r> for a fixed random r; prints ‖∂L/∂x_0‖ (the
first token's input gradient: how far back the gradient reaches, intact) and ‖∂L/∂θ‖ over all
the layer's parameters. Horizon 0 = exact gradients; h > 0 = truncated every h tokens
(`grad_horizon`). Gates "layer": the layer's defaults (η ≤ 1, α in (0.99, 0.999)); "preset":
the rule's 170m preset (miras_jax/models/presets.py `_GATES`, `memory_grad_horizon`).
``--ln_eps`` lists the ε of the memory's output LayerNorm to measure (1.0 is the layer's
default, which bounds its gain; 1e-6 is the former, unbounded one). The baseline of a rule is
its first row. ``--variants=step_scale=implicit_chunk`` adds, beside each "layer" row, the same
layer (default gates, same horizons and ε) with other MirasLayer options, labelled
"layer:<variant>" (syntax of ``--learned_variants``); a variant that leaves a rule's memory rule
unchanged (rules.py ``with_options`` ignores an option a rule does not define) is not measured
again but noted in one comment line.

Learned: ``--checkpoints=name=workdir`` takes the first memory layer of a trained LM (every
parameter, the gates included, as learned; ``miras_jax.train`` run directory) and measures the
same exact gradient of that layer at each ``--lengths`` (its own chunk size and head dim) on
unit-variance inputs (``--learned_ln_eps`` adds the same parameters with other LayerNorm ε;
``--learned_init=1`` the same layer freshly initialised, the baseline;
``--learned_variants=retention_target=initial,momentum_form=ema+retention_target=initial``
the same parameters with other MirasLayer options, ``+`` joining the options of one variant).
Memora is also measured with the initial memory's logit std of
``--memora_w0_std`` (layer gates, exact): 0.02 is the former near-uniform W_0 whose memory is a
no-op at initialisation (layers/miras.py).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import time

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.layers.miras import MirasLayer  # noqa: E402
from miras_jax.memory.rules import with_options

# The MirasLayer options that only reach the memory rule (rules.py ``with_options``): a variant
# made of these alone is a no-op where the rule comes out unchanged.
RULE_OPTIONS = frozenset(inspect.signature(with_options).parameters) - {'rule'}


def parse_variants(spec: str) -> list[tuple[str, dict]]:
  """[(label, MirasLayer options)] of a variants flag: "k=v" options, "+" joins the options of
  one variant, "," separates variants (``retention_target=initial,momentum_form=ema+eta_max=10``).
  A value Python reads as a literal (10, 0.5, True) is that literal, anything else a string."""

  def value(v):
    try:
      return ast.literal_eval(v)
    except (ValueError, SyntaxError):
      return v

  out = []
  for variant in [v for v in spec.split(',') if v]:
    out.append((variant, {k: value(v) for k, v in (o.split('=', 1) for o in variant.split('+'))}))
  return out


def rule_unchanged(rule: str, opts: dict) -> bool:
  """Whether the options ``opts`` leave a default layer of ``rule`` as it is: rule options only,
  and the memory rule they give equal to the default one."""
  base = MirasLayer(rule=rule)
  return set(opts) <= RULE_OPTIONS and base.clone(**opts).memory_rule == base.memory_rule


def variant_setting(label: str, opts: dict, horizons: list[int], eps: float) -> tuple:
  """The setting (name, eta_max, alpha_init, horizons, ε, W_0 logit std, options) of a
  ``--variants`` entry on the layer gates: what ``measure`` takes as arguments (the gates, ε,
  W_0's std, the horizon) goes there, the other MirasLayer options stay options."""
  o = dict(opts)
  horizons = [o.pop('grad_horizon')] if 'grad_horizon' in o else horizons
  eta_max = o.pop('eta_max', MirasLayer.eta_max)
  alpha_init = tuple(o.pop('alpha_init', MirasLayer.alpha_init))
  eps = o.pop('ln_eps', eps)
  w0 = o.pop('simplex_w0_std', MirasLayer.simplex_w0_std)
  return (f'layer:{label}', eta_max, alpha_init, horizons, eps, w0, o)


def grad_norms(layer: MirasLayer, params, T: int, E: int) -> tuple[float, float]:
  """(‖∂L/∂x_0‖, ‖∂L/∂θ‖) of L = <layer(x), r> on Gaussian x, r [1, T, E] (exact unless the
  layer truncates)."""
  x = jnp.asarray(np.random.default_rng(0).standard_normal((1, T, E)), jnp.float32)
  r = jnp.asarray(np.random.default_rng(1).standard_normal((1, T, E)), jnp.float32)
  loss = lambda p, x: jnp.sum(layer.apply(p, x) * r)
  gp, gx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x)
  g0 = float(jnp.linalg.norm(gx[0, 0]))
  gnorm = float(jnp.sqrt(sum(jnp.sum(a.astype(jnp.float32) ** 2) for a in jax.tree.leaves(gp))))
  return g0, gnorm


def measure(
  rule: str,
  T: int,
  horizon: int,
  D: int,
  eta_max: float = MirasLayer.eta_max,
  alpha_init: tuple[float, float] = MirasLayer.alpha_init,
  simplex_w0_std: float = MirasLayer.simplex_w0_std,
  ln_eps: float = MirasLayer.ln_eps,
  heads: int = 2,
  **options,
) -> tuple[float, float]:
  """`grad_norms` of a freshly initialised layer (E = 2D); ``options``: other MirasLayer
  attributes (``--variants``)."""
  layer = MirasLayer(
    rule=rule,
    num_heads=heads,
    head_dim=D,
    chunk_size=64,
    gate_rank=8,
    grad_horizon=horizon,
    eta_max=eta_max,
    alpha_init=tuple(alpha_init),
    simplex_w0_std=simplex_w0_std,
    ln_eps=ln_eps,
    **options,
  )
  x = jnp.zeros((1, 8, 2 * D), jnp.float32)
  params = jax.jit(layer.init)(jax.random.PRNGKey(0), x)
  return grad_norms(layer, params, T, 2 * D)


def learned_layer(workdir: str) -> tuple[str, MirasLayer, dict, int]:
  """(rule, layer, {'params': ...}, E) of the first memory layer of a trained LM."""
  from miras_jax.evals.checkpoint import load_config, load_params, resolve_checkpoint
  from miras_jax.models.config import LMConfig
  from miras_jax.models.lm import memory_layer

  ckpt = resolve_checkpoint(workdir)
  cfg = LMConfig.from_config(load_config(ckpt)['model'])
  params = load_params(ckpt)
  params = params.get('params', params)

  def find(tree):  # the first sub-tree holding a memory's W_0
    if isinstance(tree, dict):
      if 'w0_0' in tree:
        return tree
      for v in tree.values():
        got = find(v)
        if got is not None:
          return got
    return None

  mem = find(params['blocks'] if 'blocks' in params else params)
  if cfg.scan_layers:  # stacked over repeats: layer 0
    mem = jax.tree.map(lambda a: a[0], mem)
  layer = memory_layer(cfg, parent=None)
  return cfg.rule, layer, {'params': mem}, cfg.d_model


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--rules', default='titans,yaad,memora,moneta,ttt_mlp')
  p.add_argument('--lengths', default='1024,4096')
  p.add_argument('--horizons', default='0,512')
  p.add_argument('--head_dim', type=int, default=64)
  p.add_argument('--heads', type=int, default=2)
  p.add_argument('--ln_eps', default=str(MirasLayer.ln_eps))
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
  p.add_argument(
    '--variants',
    default='',
    help='also measure each rule with the layer gates and these MirasLayer options (syntax of '
    '--learned_variants; e.g. step_scale=implicit_chunk); rows "layer:<variant>"',
  )
  p.add_argument('--checkpoints', default='', help='name=workdir,...: learned layers')
  p.add_argument(
    '--learned_ln_eps',
    default='',
    help='also measure the learned layers with these LayerNorm ε (the same trained parameters)',
  )
  p.add_argument(
    '--learned_init', type=int, default=0, help='also measure each learned layer at its init'
  )
  p.add_argument(
    '--learned_variants',
    default='',
    help='also measure the learned layers with these MirasLayer options (k=v, "+" joins the '
    'options of one variant, "," separates variants; e.g. retention_target=initial)',
  )
  p.add_argument('--out', default='')
  a = p.parse_args(argv)
  lengths = [int(t) for t in a.lengths.split(',')]
  a.learned_ln_eps = [float(e) for e in a.learned_ln_eps.split(',') if e]
  variants = parse_variants(a.variants)
  lines = [
    f'# jax {jax.__version__} on {jax.devices()[0].device_kind}; head_dim {a.head_dim}, '
    f'{a.heads} heads',
    f'{"rule":8s} {"gates":16s} {"ln_eps":>7s} {"T":>6s} {"horizon":>8s} {"|dL/dx_0|":>11s} '
    f'{"|dL/dθ|":>11s} {"vs first row":>13s}',
  ]
  print('\n'.join(lines), flush=True)

  def emit(rule, name, eps, T, h, g0, gn, base, t0):
    line = (
      f'{rule:8s} {name:16s} {eps:7.0e} {T:6d} {h or "exact":>8} {g0:11.3g} {gn:11.3g} '
      f'{gn / base:13.3g}   ({time.perf_counter() - t0:.0f}s)'
    )
    print(line, flush=True)
    lines.append(line)

  from miras_jax.models.presets import model_config

  for rule in [r for r in a.rules.split(',') if r]:
    base = None
    preset = model_config(rule, '170m')
    layer_h = [int(x) for x in a.horizons.split(',')]
    settings = []  # (name, eta_max, alpha_init, horizons, eps, W_0 logit std, options)
    w0_layer = MirasLayer.simplex_w0_std
    for eps in (float(e) for e in a.ln_eps.split(',')):
      settings.append(
        ('layer', MirasLayer.eta_max, MirasLayer.alpha_init, layer_h, eps, w0_layer, {})
      )
      for label, opts in variants:  # the layer gates with other options
        if not rule_unchanged(rule, opts):
          settings.append(variant_setting(label, opts, layer_h, eps))
      if a.presets:  # the 170m preset's gates and horizon
        settings.append(
          (
            'preset',
            preset.eta_max,
            tuple(preset.alpha_init),
            [preset.memory_grad_horizon],
            eps,
            w0_layer,
            {},
          )
        )
      if rule == 'memora' and a.memora_w0_std:
        for s in a.memora_w0_std.split(','):
          w0 = float(s)
          settings.append(
            (f'w0std={s}', MirasLayer.eta_max, MirasLayer.alpha_init, [0], eps, w0, {})
          )
    for label, opts in variants:
      if rule_unchanged(rule, opts):
        line = (
          f'# {rule}: {label} leaves its memory rule unchanged (not measured; = the layer rows)'
        )
        print(line, flush=True)
        lines.append(line)
    for T in lengths:
      for name, eta_max, alpha_init, horizons, eps, w0, opts in settings:
        for h in horizons:
          if h and h >= T:
            continue
          t0 = time.perf_counter()
          g0, gn = measure(rule, T, h, a.head_dim, eta_max, alpha_init, w0, eps, a.heads, **opts)
          base = gn if base is None else base
          emit(rule, name, eps, T, h, g0, gn, base, t0)
  for item in [c for c in a.checkpoints.split(',') if c]:
    name, workdir = item.split('=', 1)
    rule, layer, params, E = learned_layer(workdir)
    base = None
    if a.learned_init:  # the same layer (config) freshly initialised: the baseline
      fresh = jax.jit(layer.init)(jax.random.PRNGKey(0), jnp.zeros((1, 8, E), jnp.float32))
      for T in lengths:
        t0 = time.perf_counter()
        g0, gn = grad_norms(layer, fresh, T, E)
        base = gn if base is None else base
        emit(rule, f'init:{name}', layer.ln_eps, T, 0, g0, gn, base, t0)
    for T in lengths:
      for eps in [layer.ln_eps] + [e for e in a.learned_ln_eps if e != layer.ln_eps]:
        t0 = time.perf_counter()
        g0, gn = grad_norms(layer.clone(ln_eps=eps), params, T, E)
        base = gn if base is None else base
        emit(rule, f'learned:{name}', eps, T, 0, g0, gn, base, t0)
      for variant, opts in parse_variants(a.learned_variants):
        t0 = time.perf_counter()
        g0, gn = grad_norms(layer.clone(**opts), params, T, E)
        base = gn if base is None else base
        emit(rule, f'learned:{name}:{variant}', layer.ln_eps, T, 0, g0, gn, base, t0)
  if a.out:
    with open(a.out, 'w') as f:
      f.write('\n'.join(lines) + '\n')


if __name__ == '__main__':
  main()
