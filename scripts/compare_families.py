"""Same parameters, same tokens: validation loss of each family, trained by the trainer.

    python scripts/compare_families.py                  # CPU, tiny scale (~30 min on 2 contended cores)
    python scripts/compare_families.py --d_model=256 --n_layers=4 --seq_len=2048 \\
        --batch=16 --steps=2000 --name=compare_families_gpu   # a larger version for a GPU

Every family is ``configs/base.py:<family>,tiny`` (miras_jax/models/presets.py: the family's
gates and mixer pattern) at ``--n_layers`` × ``--d_model`` (heads of 16) and the vocabulary of
the corpus's tokenizer, trained by ``miras_jax.train.loop.train`` — the function behind
``python -m miras_jax.train``, so this measures what users run — on the local default corpus
(Shakespeare/Milton, as the quickstart), with the same steps, batch, context, learning-rate
schedule and validation rows for all. The parameter counts are matched on the non-embedding
parameters (the tied embedding is the same for all): each family's MLP width is set so its
count is within ``--match`` of Transformer++'s; the table states both counts. One run per
family under ``<workdir>/run-<UTC time>/<family>`` (the prepared corpus is shared in
``<workdir>/data``); prints the table and writes ``<out_dir>/<name>.{md,json,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import sys
import time
from pathlib import Path

# Miras first (a comparison cut short keeps the rows it was run for); the parameter counts are
# matched to Transformer++'s whatever the order.
FAMILIES = ('moneta', 'yaad', 'memora', 'titans_mag', 'gated_deltanet', 'transformer')
LABELS = {
  'transformer': 'Transformer++',
  'gated_deltanet': 'Gated DeltaNet',
  'titans_mag': 'Titans (MAG)',
  'moneta': 'Moneta',
  'yaad': 'Yaad',
  'memora': 'Memora',
}


def family_run_config(family: str, args, mlp_dim: int | None = None):
  """The trainer config of one family (``mlp_dim`` None: 2·d for Transformer++'s SwiGLU)."""
  from miras_jax.train.defaults import family_config  # pylint: disable=import-outside-toplevel

  c = family_config(family, 'tiny')
  m = c.model
  m.vocab_size = args.vocab
  m.d_model = args.d_model
  m.n_layers = args.n_layers
  m.n_heads = args.d_model // 16
  m.head_dim = 16
  m.mlp_dim = mlp_dim or 4 * args.d_model
  m.chunk_size = args.chunk
  m.max_len = args.seq_len
  c.data.corpus = args.corpus
  c.data.val_fraction = 0.05
  c.data.max_record_tokens = max(2048, args.seq_len)
  c.data.cache_dir = str(Path(args.workdir) / 'data')
  t = c.train
  t.steps, t.batch_size, t.seq_len, t.lr = args.steps, args.batch, args.seq_len, args.lr
  t.warmup_steps = max(1, args.steps // 10)
  t.weight_decay = 0.1
  t.log_every_steps = max(1, args.steps // 10)
  c.checkpoint.every_steps = args.steps
  c.checkpoint.keep_last = 1
  c.eval.every_steps = args.steps
  c.eval.num_batches = args.eval_batches
  return c


def counts(config) -> tuple[int, int]:
  """(total, non-embedding) parameter count of a config's model."""
  from miras_jax.models import build_model  # pylint: disable=import-outside-toplevel

  m = config.model
  total = build_model(m).num_params()
  embed = m.vocab_size * m.d_model * (1 if m.tie_embeddings else 2)
  return total, total - embed


def matched_configs(families, args) -> dict:
  """Each family's config, its MLP widened or narrowed (a multiple of 8) so that its
  non-embedding count is within ``args.match`` of Transformer++'s (whether or not Transformer++ is
  among ``families``, so that a partial rerun matches the same count)."""
  target = counts(family_run_config('transformer', args))[1]
  out = {}
  for f in families:
    c = family_run_config(f, args)
    per_unit = 3 * args.d_model * args.n_layers  # SwiGLU: three d × mlp matrices per layer
    for _ in range(3):  # the count is linear in mlp_dim: one correction lands, two to be sure
      n = counts(c)[1]
      if abs(n - target) <= args.match * target:
        break
      mlp = max(8, int(round((c.model.mlp_dim + (target - n) / per_unit) / 8)) * 8)
      c = family_run_config(f, args, mlp)
    n = counts(c)[1]
    if abs(n - target) > args.match * target:
      raise ValueError(
        f'{f}: cannot match {target:,} non-embedding parameters within {args.match:.0%} '
        f'(closest {n:,}); change --d_model or --n_layers'
      )
    out[f] = c
  return out


# The arguments that define the measurement: a ``--before`` file must agree on all of them.
SETTING_ARGS = ('d_model', 'n_layers', 'vocab', 'seq_len', 'chunk', 'batch', 'steps', 'lr')
SETTING_ARGS += ('eval_batches', 'match', 'corpus')


def load_before(path: str, args) -> list[dict]:
  """The rows of an earlier run of this script at the same setting (``--before``)."""
  from miras_jax.studies import read_rows  # pylint: disable=import-outside-toplevel

  try:
    rows, diff = read_rows(path, args, SETTING_ARGS)
  except ValueError as e:
    raise ValueError(f'--before {path}: not a result file of this script ({e})') from None
  if diff:
    raise ValueError(f'--before {path}: different setting ({", ".join(diff)})')
  return rows


def merge(before: list[dict], results: list[dict]) -> list[dict]:
  """``results`` with each row's earlier loss as ``before_val_loss``, plus the ``before`` rows of
  the families not rerun (marked ``rerun: False``, before = after), in ``before``'s order."""
  old = {r['family']: r for r in before}
  new = {r['family']: r for r in results}
  order = [r['family'] for r in before] + [f for f in new if f not in old]
  out = []
  for f in order:
    if f in new:
      row = dict(new[f], rerun=True)
      if f in old:
        row['before_val_loss'] = old[f].get('before_val_loss', old[f]['val_loss'])
    else:  # not rerun: its model did not change, its loss is both the before and the after
      row = dict(old[f], rerun=False)
      row.setdefault('before_val_loss', row['val_loss'])
    out.append(row)
  return out


def table(results: list[dict]) -> str:
  before = any('before_val_loss' in r for r in results)
  cols = ['family', 'params', 'non-embedding', 'MLP', 'val loss', 'val ppl', 'train tok/s', 'wall']
  if before:
    cols.insert(4, 'before')
  lines = ['| ' + ' | '.join(cols) + ' |', '|' + ' --- |' * len(cols)]
  for r in results:
    name = LABELS.get(r['family'], r['family']) + ('' if r.get('rerun', True) else ' (not rerun)')
    cells = [
      name,
      f'{r["params"] / 1e3:.0f}K',
      f'{r["non_embedding"] / 1e3:.1f}K',
      str(r['mlp_dim']),
      f'{r["val_loss"]:.4f}',
      f'{math.exp(min(r["val_loss"], 50)):.1f}',
      f'{r["tokens_per_s"]:.0f}',
      f'{r["wall_s"]:.0f}s',
    ]
    if before:
      b = r.get('before_val_loss')
      cells.insert(4, '' if b is None else f'{b:.4f}')
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def plot(results: list[dict], path: Path) -> None:
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    xs = [h['step'] for h in r['train_curve']]
    a.plot(xs, [h['loss'] for h in r['train_curve']], label=LABELS.get(r['family'], r['family']))
  a.set_xlabel('step')
  a.set_ylabel('train loss')
  a.legend(fontsize=8)
  names = [LABELS.get(r['family'], r['family']) for r in results]
  b.bar(range(len(results)), [r['val_loss'] for r in results])
  b.set_xticks(range(len(results)), names, rotation=30, ha='right', fontsize=8)
  # The earlier loss of each rerun family (``--before``) as a black tick above or below its bar.
  moved = [(i, r['before_val_loss']) for i, r in enumerate(results) if r.get('rerun')]
  moved = [(i, v) for i, v in moved if v is not None]
  if moved:
    b.scatter(*zip(*moved), marker='_', s=500, color='k', label='before (--before file)')
    b.legend(fontsize=8)
  losses = [r['val_loss'] for r in results] + [v for _, v in moved]
  b.set_ylim(min(losses) - 0.3, max(losses) + 0.1)
  b.set_ylabel('validation loss')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--families', default=','.join(FAMILIES))
  p.add_argument('--d_model', type=int, default=64)
  p.add_argument('--n_layers', type=int, default=2)
  p.add_argument('--vocab', type=int, default=2048, help='tokenizer trained on the corpus')
  p.add_argument('--seq_len', type=int, default=1024)
  p.add_argument('--chunk', type=int, default=32, help='memory chunk size')
  p.add_argument('--batch', type=int, default=4)
  p.add_argument('--steps', type=int, default=60)
  p.add_argument('--lr', type=float, default=3e-3)
  p.add_argument('--eval_batches', type=int, default=4)
  p.add_argument('--match', type=float, default=0.1, help='parameter-count tolerance')
  p.add_argument('--corpus', default='default')
  p.add_argument('--workdir', default='runs/compare_families')
  p.add_argument('--out_dir', default='benchmarks/results')
  p.add_argument('--name', default='compare_families_cpu')
  p.add_argument('--quiet', type=int, default=1, help="hide the trainer's per-step lines")
  p.add_argument(
    '--before',
    default='',
    help='an earlier result json of this script at the same setting: its losses become the '
    '"before" column and its families not in --families are kept as rows',
  )
  args = p.parse_args(argv)
  families = [f for f in args.families.split(',') if f]
  try:
    if args.d_model % 16:
      raise ValueError(f'--d_model must be a multiple of 16 (heads of 16), got {args.d_model}')
    before = load_before(args.before, args) if args.before else None
    configs = matched_configs(families, args)
  except ValueError as e:
    print(f'compare_families: {e}', file=sys.stderr)
    return 2
  from miras_jax.train import loop  # pylint: disable=import-outside-toplevel

  run_root = Path(args.workdir) / time.strftime('run-%Y%m%dT%H%M%SZ', time.gmtime())
  out = Path(args.out_dir)
  out.mkdir(parents=True, exist_ok=True)
  results: list[dict] = []
  for f in families:
    c = configs[f]
    total, non_embed = counts(c)
    print(
      f'{f}: {total:,} parameters ({non_embed:,} non-embedding, MLP {c.model.mlp_dim})', flush=True
    )
    t0 = time.perf_counter()
    log = io.StringIO()
    with contextlib.redirect_stdout(log) if args.quiet else contextlib.nullcontext():
      res = loop.train(c, run_root / f)
    wall = time.perf_counter() - t0
    if res.val_loss is None:
      print(f'compare_families: {f} produced no validation loss', file=sys.stderr)
      return 1
    tokens = args.steps * args.batch * args.seq_len
    curve = [{'step': h['step'], 'loss': float(h['loss'])} for h in res.history if 'loss' in h]
    results.append(
      {
        'family': f,
        'params': total,
        'non_embedding': non_embed,
        'mlp_dim': int(c.model.mlp_dim),
        'val_loss': float(res.val_loss),
        'tokens_per_s': tokens / wall,
        'wall_s': wall,
        'train_curve': curve,
      }
    )
    print(f'{f}: val loss {res.val_loss:.4f} ({wall:.0f}s)', flush=True)
    # Written after every family, so an interrupted comparison keeps what it measured.
    setting = (
      f'{args.n_layers} layers x {args.d_model}, vocab {args.vocab}, context {args.seq_len}, '
      f'{args.steps} steps x {args.batch} rows = {args.steps * args.batch * args.seq_len:,} '
      f'training tokens each, lr {args.lr:g} (warmup + cosine), chunk {args.chunk}, '
      f'{args.eval_batches} x {args.batch} validation rows; corpus {args.corpus}'
    )
    rows = results if before is None else merge(before, results)
    md = f'{setting}\n\n{table(rows)}\n'
    (out / f'{args.name}.md').write_text(md)
    (out / f'{args.name}.json').write_text(
      json.dumps({'setting': setting, 'args': vars(args), 'results': rows}, indent=1) + '\n'
    )
    plot(rows, out / f'{args.name}.png')
  print(f'\n{md}')
  print(f'wrote {out / args.name}.{{md,json,png}}; runs in {run_root}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
