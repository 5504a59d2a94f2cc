"""Which families recall? Train each from scratch on multi-query associative recall (MQAR).

    python scripts/mqar_study.py                       # the default study (CPU: 6 families took 36 min on 2 busy cores)
    python scripts/mqar_study.py --families=transformer,moneta --widths=64 --steps=300  # smaller
    python scripts/mqar_study.py --seq_len=512 --pairs=16,32,64,128 --steps=4000        # larger
    python scripts/mqar_study.py --seq_len=256 --pairs=16,64 --per_pairs=1 --widths=64,128  # a model per count

The Zoology protocol (Arora et al. 2023, §3.1; the generator: miras_jax/data/mqar.py): every
model is a 2-layer LM of the given width (a family's ``tiny`` preset from
miras_jax/models/presets.py, widened), trained from scratch with AdamW on fresh MQAR batches
mixing every ``--pairs`` count (loss on the query positions only, as Zoology), then scored on
held-out examples of each count: accuracy = fraction of queries whose argmax is the bound
value (chance = 1 / (vocab / 2)). Zoology trains far longer and sweeps the learning rate
(their App. E); this is the CPU-minutes version, one learning rate per run (``--lr``; give
several, comma separated, to keep the best per model, as Zoology reports). With
``--per_pairs=1`` every pair count gets its own model, trained on that count only, and the runs
go pair count by pair count (the smallest first, every width and family), so that a study cut
short still has a complete column. ``--resume=1`` keeps the runs already in the output file (at
the same setting) and trains only the missing ones, so a study can be cut short, reordered
(``--families``, ``--widths``) and continued.

Writes ``<out_dir>/<name>.json``, ``.md`` (the table) and ``.png`` (accuracy against pairs, a
panel per width) and prints the table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from miras_jax.data.mqar import make_mqar_batch, mqar_chance, seen_value_guess
from miras_jax.models import build_model
from miras_jax.models.presets import model_config
from miras_jax.studies import read_rows
from miras_jax.train.defaults import family_config
from miras_jax.train.optimizer import make_optimizer

# Miras first (a study cut short keeps the rows it was run for), then the baselines.
FAMILIES = (
  'moneta',
  'yaad',
  'memora',
  'titans',
  'transformer',
  'gated_deltanet',
  'deltanet',
  'mamba2',
  'linear_attention',
)
LABELS = {
  'transformer': 'Transformer++',
  'gated_deltanet': 'Gated DeltaNet',
  'deltanet': 'DeltaNet',
  'linear_attention': 'Linear attn.',
  'mamba2': 'Mamba2',
  'titans': 'Titans (LMM)',
  'moneta': 'Moneta',
  'yaad': 'Yaad',
  'memora': 'Memora',
}


def mqar_model_config(family: str, width: int, vocab: int, seq_len: int, chunk: int):
  """A family's ``tiny`` preset (2 layers, the family's gates) at ``width``: 4 heads of
  ``width / 4``, MLP 2·width, the given vocabulary and chunk."""
  m = model_config(family, 'tiny')
  m.d_model = width
  m.n_heads = 4
  m.head_dim = width // 4
  m.mlp_dim = 2 * width
  m.vocab_size = vocab
  m.max_len = seq_len
  m.chunk_size = chunk
  return m


def _batch(rng, batch, seq_len, pairs, vocab):
  """``batch`` rows split evenly over the pair counts (the training mixture)."""
  per = [batch // len(pairs) + (i < batch % len(pairs)) for i in range(len(pairs))]
  parts = [make_mqar_batch(rng, n, seq_len, p, vocab) for n, p in zip(per, pairs) if n]
  return {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}


def train_and_score(family: str, width: int, lr: float, args, pairs=None) -> dict:
  """Train one model on the mixture of ``pairs`` (default ``args.pairs``); accuracy per pair
  count of ``pairs`` on ``args.eval_examples`` held-out rows."""
  pairs = list(pairs or args.pairs)
  mcfg = mqar_model_config(family, width, args.vocab, args.seq_len, args.chunk)
  mcfg.memory_impl = args.memory_impl
  model = build_model(mcfg)
  tcfg = family_config(family, 'tiny').train
  tcfg.steps, tcfg.lr, tcfg.warmup_steps = args.steps, lr, max(1, args.steps // 10)
  tcfg.weight_decay = 0.1
  tx = make_optimizer(tcfg)
  rng = np.random.default_rng(args.seed)
  first = _batch(rng, args.batch, args.seq_len, pairs, args.vocab)
  params = jax.jit(model.init)(jax.random.PRNGKey(args.seed), jnp.asarray(first['inputs']))
  params = params['params']
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  opt = tx.init(params)

  def loss_fn(p, b):
    logits = model.apply({'params': p}, b['inputs'])
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, b['targets'])
    return jnp.sum(ce * b['loss_mask']) / jnp.sum(b['loss_mask'])

  @jax.jit
  def step(p, o, b):
    loss, g = jax.value_and_grad(loss_fn)(p, b)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  @jax.jit
  def hits(p, b):
    pred = jnp.argmax(model.apply({'params': p}, b['inputs']), -1)
    return jnp.sum((pred == b['targets']) * b['loss_mask']), jnp.sum(b['loss_mask'])

  t0 = time.perf_counter()
  losses = []
  b = first
  for i in range(args.steps):
    params, opt, loss = step(params, opt, {k: jnp.asarray(v) for k, v in b.items()})
    # One step in flight at a time (blocking costs nothing measurable; XLA:CPU hangs were seen
    # with several queued). The (Gated) DeltaNet hang traced here was jaxlib 0.10's batched
    # LAPACK triangular solve deadlocking the intra-op pool; memory/chunked.py
    # ``_unit_lower_solve`` calls no LAPACK on CPU since (benchmarks/README.md, "deadlock").
    loss = jax.block_until_ready(loss)
    if (i + 1) % max(1, args.steps // 10) == 0:
      losses.append([i + 1, float(loss)])
    b = _batch(rng, args.batch, args.seq_len, pairs, args.vocab)
  train_s = time.perf_counter() - t0
  eval_rng = np.random.default_rng(10_000 + args.seed)  # the same held-out rows for everyone
  acc = {}
  for n in pairs:
    h = c = 0.0
    for start in range(0, args.eval_examples, args.batch):
      rows = min(args.batch, args.eval_examples - start)
      e = make_mqar_batch(eval_rng, rows, args.seq_len, n, args.vocab)
      hh, cc = hits(params, {k: jnp.asarray(v) for k, v in e.items()})
      h, c = h + float(hh), c + float(cc)
    acc[str(n)] = h / c
  return {
    'family': family,
    'width': width,
    'lr': lr,
    'train_pairs': pairs,
    'params': n_params,
    'acc': acc,
    'loss_curve': losses,
    'train_s': round(train_s, 1),
    'memory_impl': args.memory_impl,
  }


def grid(results: list[dict]) -> dict:
  """``{(family, width): {'params', 'acc': {pairs: acc}, 'lr': {pairs: lr}}}``: the runs of one
  model (a mixture run, or one run per pair count with ``--per_pairs``) gathered in one row, in
  the order the rows first appear."""
  rows: dict = {}
  for r in results:
    row = rows.setdefault((r['family'], r['width']), {'params': r['params'], 'acc': {}, 'lr': {}})
    for n, a in r['acc'].items():
      row['acc'][n], row['lr'][n] = a, r['lr']
  return rows


def table(results: list[dict], pairs, chance: float, guess=None) -> str:
  """One row per family and width, a column per pair count (blank: not run yet); ``guess``
  (per pair count, ``seen_guesses``) adds the no-recall reference row."""
  head = '| family | width | params | ' + ' | '.join(f'{n} pairs' for n in pairs) + ' | lr |'
  lines = [head, '|' + ' --- |' * (len(pairs) + 4)]
  for (f, w), row in sorted(grid(results).items(), key=lambda kv: kv[0][1]):
    accs = ' | '.join(f'{row["acc"][str(n)]:.3f}' if str(n) in row['acc'] else '' for n in pairs)
    lrs = ', '.join(sorted({f'{lr:g}' for lr in row['lr'].values()}))
    lines.append(f'| {LABELS.get(f, f)} | {w} | {row["params"] / 1e3:.0f}K | {accs} | {lrs} |')
  if guess is not None:
    lines.append(
      f'| (no recall: a guess among the values read) | | | {" | ".join(f"{g:.3f}" for g in guess)} | |'
    )
  lines.append(f'\nchance = {chance:.4f}')
  return '\n'.join(lines)


def seen_guesses(vocab: int, seq_len: int, pairs) -> list[float]:
  """``seen_value_guess`` per pair count on 256 rows of a fixed seed: what a model that binds no
  key to its value scores by guessing among the values it has read (miras_jax/data/mqar.py)."""
  rng = np.random.default_rng(20_000)
  return [seen_value_guess(make_mqar_batch(rng, 256, seq_len, n, vocab), vocab) for n in pairs]


def plot(results: list[dict], pairs, widths, chance: float, path: Path, guess=None) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, axes = plt.subplots(1, len(widths), figsize=(5 * len(widths), 4), squeeze=False)
  rows = grid(results)
  for ax, w in zip(axes[0], widths):
    for (f, rw), row in rows.items():
      if rw == w:
        xs = [n for n in pairs if str(n) in row['acc']]
        # One colour per family in every panel (the legend sits on the last one only).
        color = f'C{FAMILIES.index(f) % 10}' if f in FAMILIES else None
        ax.plot(
          xs, [row['acc'][str(n)] for n in xs], marker='o', color=color, label=LABELS.get(f, f)
        )
    ax.axhline(chance, color='black', ls=':', lw=1, label='chance')
    if guess is not None:
      ax.plot(pairs, guess, color='black', ls='--', lw=1, label='guess among values read')
    ax.set_xscale('log', base=2)
    ax.set_xticks(pairs, [str(n) for n in pairs])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel('key-value pairs')
    ax.set_ylabel('MQAR accuracy')
    ax.set_title(f'width {w}')
  legend = {}  # every family of every panel, once
  for ax in axes[0]:
    for h, lab in zip(*ax.get_legend_handles_labels()):
      legend.setdefault(lab, h)
  axes[0][-1].legend(legend.values(), legend.keys(), fontsize=7, loc='upper right')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def write_outputs(results, args, widths, chance, out: Path) -> str:
  """``<name>.md``, ``.json`` and ``.png`` of the models trained so far; returns the markdown."""
  # Resumed runs may cover other widths and pair counts than this invocation's.
  widths = sorted(set(widths) | {r['width'] for r in results})
  pairs = sorted(set(args.pairs) | {int(n) for r in results for n in r['acc']})
  train_min = sum(r['train_s'] for r in results) / 60
  setting = (
    f'MQAR (Zoology): seq_len {args.seq_len}, vocab {args.vocab}, pairs {pairs} '
    f'({"a model per count" if args.per_pairs else "mixed in training"}), '
    f'{args.steps} steps x {args.batch} rows, lr {args.lr}, '
    f'chunk {args.chunk}, {args.eval_examples} held-out rows per count; '
    f'{train_min:.1f} min of training in all on {jax.devices()[0].platform}'
  )
  guess = seen_guesses(args.vocab, args.seq_len, pairs)
  md = f'{setting}\n\n{table(results, pairs, chance, guess)}\n'
  (out / f'{args.name}.md').write_text(md)
  (out / f'{args.name}.json').write_text(
    json.dumps(
      {
        'setting': setting,
        'args': vars(args),
        'seen_value_guess': dict(zip(map(str, pairs), guess)),
        'results': results,
      },
      indent=1,
    )
    + '\n'
  )
  plot(
    results,
    pairs,
    [w for w in widths if any(r['width'] == w for r in results)],
    chance,
    out / f'{args.name}.png',
    guess,
  )
  return md


# The arguments that define a run's training and scoring: ``--resume`` reuses only runs that agree.
RUN_ARGS = ('seq_len', 'vocab', 'steps', 'batch', 'lr', 'chunk', 'eval_examples', 'seed')


def load_resumed(path: Path, args) -> list[dict]:
  """The runs of an earlier study at ``path`` (``--resume``): [] if there is none; an error if it
  was run at another setting (its runs would not be comparable)."""
  if not path.exists():
    return []
  try:
    runs, diff = read_rows(path, args, RUN_ARGS)
  except ValueError as e:
    raise ValueError(f'--resume: {path} is not a result file of this script ({e})') from None
  if diff:
    raise ValueError(f'--resume: {path} was run at another setting ({", ".join(diff)})')
  return runs


def _ints(s: str) -> list[int]:
  return [int(x) for x in s.split(',') if x]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--families', default=','.join(FAMILIES))
  p.add_argument('--widths', default='64')
  p.add_argument('--seq_len', type=int, default=64)
  p.add_argument('--pairs', default='4,8,16', help='trained on the mixture, scored on each')
  p.add_argument('--vocab', type=int, default=256, help='keys: [1, V/2), values: [V/2, V)')
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--lr', default='3e-3', help='comma-separated: the best is kept')
  p.add_argument('--chunk', type=int, default=16, help='memory chunk size')
  p.add_argument(
    '--memory_impl',
    default='auto',
    help="the memory's implementation (LMConfig.memory_impl); 'reference' is token by token, "
    'tested equal to the chunked path',
  )
  p.add_argument('--eval_examples', type=int, default=128)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--out_dir', default='benchmarks/results')
  p.add_argument('--name', default='mqar_cpu')
  p.add_argument(
    '--per_pairs', type=int, default=0, help='1: a model per pair count (else one on the mixture)'
  )
  p.add_argument(
    '--resume',
    type=int,
    default=0,
    help='1: keep the runs already in <out_dir>/<name>.json (same setting) and train only the rest',
  )
  args = p.parse_args(argv)
  try:
    families = [f for f in args.families.split(',') if f]
    for f in families:
      model_config(f, 'tiny')
    args.pairs, widths = _ints(args.pairs), _ints(args.widths)
    lrs = [float(x) for x in args.lr.split(',') if x]
    for n in args.pairs:  # fail before training, not after
      make_mqar_batch(np.random.default_rng(0), 1, args.seq_len, n, args.vocab)
    if any(w % 4 for w in widths):
      raise ValueError(f'widths must be multiples of 4 (4 heads), got {widths}')
    out = Path(args.out_dir)
    results = load_resumed(out / f'{args.name}.json', args) if args.resume else []
  except ValueError as e:
    print(f'mqar_study: {e}', file=sys.stderr)
    return 2
  out.mkdir(parents=True, exist_ok=True)
  chance = mqar_chance(args.vocab)
  done = {(r['family'], r['width'], tuple(r['train_pairs'])) for r in results if 'train_pairs' in r}
  md = write_outputs(results, args, widths, chance, out) if results else ''
  # A model per (pair counts, width, family): the mixture once, or each count (smallest first).
  groups = [[n] for n in sorted(args.pairs)] if args.per_pairs else [args.pairs]
  for pairs in groups:
    for w, f in [(w, f) for w in widths for f in families]:
      if (f, w, tuple(pairs)) in done:
        continue
      best = None
      for lr in lrs:
        r = train_and_score(f, w, lr, args, pairs)
        mean = float(np.mean(list(r['acc'].values())))
        print(
          f'{f:>16} w={w:<4} lr={lr:g} params={r["params"]} acc={r["acc"]} ({r["train_s"]}s)',
          flush=True,
        )
        if best is None or mean > best[0]:
          best = (mean, r)
      results.append(best[1])
      # Written after every model, so a long study interrupted keeps what it measured.
      md = write_outputs(results, args, widths, chance, out)
  print(f'\n{md}')
  print(f'wrote {out / args.name}.{{md,json,png}}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
