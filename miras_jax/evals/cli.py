"""Evaluate a checkpoint: ``python -m miras_jax.eval --workdir=RUN_OR_CHECKPOINT [--tasks=...]``.

    python -m miras_jax.eval --workdir=runs/moneta_170m \\
        --tasks=piqa,hellaswag,winogrande,arc_easy,arc_challenge,siqa,boolq,lambada,wikitext \\
        [--step=N] [--data_dir=data/evals] [--limit=N] [--batch_size=8] [--max_len=4096] \\
        [--tokenizer=path/tokenizer.model] [--pack] [--output=results.json]
    python -m miras_jax.eval --workdir=... --tasks=niah,mqar --niah_lengths=1024,2048,4096
    python -m miras_jax.eval --workdir=runs/quickstart --tasks=heldout,copy_fixed  # the run's own split

``--workdir`` is a run directory (``config.json`` + ``checkpoints/``), its
``checkpoints/`` directory, or one ``checkpoints/<step>`` directory; the latest
committed step is used unless ``--step`` names one. The model, context length
and tokenizer come from the config saved *with that checkpoint* (the run's
``config.json`` only when the checkpoint has none): the context length defaults
to its ``train.seq_len`` (else the model's ``max_len``); the tokenizer to its
``data.tokenizer``, else the one named by a prepared ``data.corpus`` directory's
``index.json``, else the one the trainer trained under ``<data cache>/tokenizers/``.
Prints the papers' table and writes everything as JSON to
``<run>/eval/step_<step>.json`` (or ``--output``; its directory is checked for
writing before anything is scored). Every user error is one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ['main']


def _count(minimum: int):
  """An argparse type: an integer >= ``minimum`` (a bad value is argparse's one-line error)."""

  def parse(s: str) -> int:
    try:
      v = int(s)
    except ValueError:
      raise argparse.ArgumentTypeError(f'expected an integer, got {s!r}') from None
    if v < minimum:
      raise argparse.ArgumentTypeError(f'must be >= {minimum}, got {v}')
    return v

  return parse


def _ints(s: str) -> list[int]:
  out = []
  for x in s.split(','):
    x = x.strip().lower()
    if x:
      out.append(int(float(x[:-1]) * 1024) if x.endswith('k') else int(x))
  return out


class _Parser(argparse.ArgumentParser):
  """argparse with a one-line error (no usage block) and exit status 2."""

  def error(self, message: str):
    self.exit(2, f'{self.prog}: error: {" ".join(message.split())}\n')


def build_parser() -> argparse.ArgumentParser:
  p = _Parser(
    prog='python -m miras_jax.eval',
    description=__doc__.split('\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    '--workdir', required=True, help='run dir, its checkpoints/ dir, or a checkpoints/<step> dir'
  )
  p.add_argument(
    '--step', type=_count(0), default=None, help='checkpoint step (default: the latest)'
  )
  p.add_argument(
    '--tasks',
    default='paper',
    help='comma-separated: piqa,hellaswag,winogrande,arc_easy,arc_challenge,siqa,boolq,lambada,'
    "wikitext,niah,mqar,copy,copy_fixed,heldout,repeat ('paper' = the nine zero-shot tasks)",
  )
  p.add_argument(
    '--data_dir',
    default=None,
    help='task files (default: $MIRAS_SHARED_DATA, else data/evals from data/evals/download.py)',
  )
  p.add_argument('--limit', type=_count(1), default=None, help='first N documents of each task')
  p.add_argument(
    '--batch_size',
    type=_count(0),
    default=0,
    help='rows per forward pass (default: eval/train config, 8)',
  )
  p.add_argument(
    '--max_len',
    type=_count(0),
    default=0,
    help='context length (default: train.seq_len / model max_len)',
  )
  p.add_argument('--tokenizer', default=None, help="SentencePiece .model (default: the run's)")
  p.add_argument('--pack', action='store_true', help='pack several requests per row (same numbers)')
  p.add_argument(
    '--prefix_token',
    choices=['bos', 'eos'],
    default=None,
    help='token for empty contexts / the first rolling window (default: BOS if defined, like lm-eval)',
  )
  p.add_argument(
    '--output', default=None, help='JSON output path (default <run>/eval/step_<step>.json)'
  )
  p.add_argument('--niah_lengths', type=_ints, default=[1024, 2048, 4096, 8192, 16384])
  p.add_argument('--niah_samples', type=_count(1), default=10)
  p.add_argument('--niah_variants', default='passkey,number,word')
  p.add_argument('--mqar_pairs', type=_ints, default=[8, 32, 128, 256])
  p.add_argument('--mqar_samples', type=_count(1), default=10)
  p.add_argument('--copy_words', type=_ints, default=[8, 16])
  p.add_argument('--copy_samples', type=_count(1), default=16)
  p.add_argument(
    '--copy_fixed_length',
    type=_count(1),
    default=None,
    help="copy_fixed: tokens per reading (default: the run's data.copy_length, else 8)",
  )
  p.add_argument('--copy_fixed_samples', type=_count(1), default=32)
  p.add_argument('--heldout_tokens', type=_count(1), default=16384)
  p.add_argument('--repeat_passages', type=_count(1), default=64)
  p.add_argument(
    '--repeat_length',
    type=_count(2),
    default=None,
    help='tokens per passage (default: half the context)',
  )
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--quiet', action='store_true')
  return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = build_parser().parse_args(argv)
  from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  from miras_jax.evals import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.harness import evaluate, format_table, parse_tasks  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.repeat import format_repeat, initial_params  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.run_data import find_tokenizer, run_dataset_dir  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.synthetic import format_copy, format_copy_fixed  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.tasks import check_task_files  # pylint: disable=import-outside-toplevel
  from miras_jax.logs import quiet_logs  # pylint: disable=import-outside-toplevel
  from miras_jax.models.config import LMConfig  # pylint: disable=import-outside-toplevel

  quiet_logs()

  tasks = parse_tasks(args.tasks)
  check_task_files(tasks, args.data_dir)  # one line naming what is missing and how to fetch it
  ckpt = ckpt_lib.resolve_checkpoint(args.workdir, args.step)
  config = ckpt_lib.load_config(ckpt)
  if not config.get('model'):
    raise SystemExit(f'error: the config of {ckpt.step_dir} has no model section')
  try:  # the model section enters the evaluator here, converted once
    model_cfg = LMConfig.from_config(config['model'])
  except ValueError as e:
    raise SystemExit(f'error: the model config of {ckpt.step_dir}: {e}') from None
  tokenizer = Tokenizer(args.tokenizer or find_tokenizer(config, ckpt.run_dir))
  train = config.get('train') or {}
  max_len = args.max_len or int(train.get('seq_len') or 0) or model_cfg.max_len
  if not max_len:
    raise SystemExit('error: no context length in the config; pass --max_len')
  batch_size = args.batch_size or int((config.get('eval') or {}).get('batch_size') or 0) or 8
  prefix = None
  if args.prefix_token:
    prefix = tokenizer.bos_id if args.prefix_token == 'bos' else tokenizer.eos_id
  path = _output_path(args.output, ckpt)  # checked before any scoring
  verbose = not args.quiet
  if verbose:
    print(
      f'checkpoint: {ckpt.step_dir} (step {ckpt.step}); tokenizer {tokenizer.path}; max_len {max_len}; '
      f'batch {batch_size}; tasks {",".join(tasks)}',
      flush=True,
    )
  t0 = time.time()
  params = ckpt_lib.load_params(ckpt)
  if verbose:
    print(f'loaded params in {time.time() - t0:.1f}s', flush=True)
  out = evaluate(
    params,
    model_cfg,
    tokenizer,
    tasks,
    args.data_dir,
    args.limit,
    batch_size,
    max_len,
    pack=args.pack,
    prefix_token_id=prefix,
    niah_lengths=args.niah_lengths,
    niah_samples=args.niah_samples,
    niah_variants=[v for v in args.niah_variants.split(',') if v],
    mqar_pairs=args.mqar_pairs,
    mqar_samples=args.mqar_samples,
    copy_words=args.copy_words,
    copy_samples=args.copy_samples,
    copy_fixed_length=args.copy_fixed_length
    or int((config.get('data') or {}).get('copy_length') or 8),
    copy_fixed_samples=args.copy_fixed_samples,
    heldout_dir=run_dataset_dir(config, ckpt.run_dir)
    if {'heldout', 'repeat'} & set(tasks)
    else None,
    heldout_tokens=args.heldout_tokens,
    repeat_passages=args.repeat_passages,
    repeat_length=args.repeat_length or 0,
    init_params=initial_params(model_cfg, int(config.get('seed') or 0))
    if {'repeat', 'copy', 'copy_fixed'} & set(tasks)
    else None,
    seed=args.seed,
    verbose=verbose,
  )
  out['checkpoint'] = {'path': str(ckpt.step_dir), 'step': ckpt.step, 'tokenizer': tokenizer.path}
  if out['table']:
    print(format_table(out['table']))
  if 'heldout' in out:
    h = out['heldout']
    print(
      f'held-out perplexity {h["perplexity"]:.1f} (unigram baseline {h["unigram_perplexity"]:.1f}) '
      f'on {h["tokens"]} validation tokens'
    )
  if 'repeat' in out:
    print(format_repeat(out['repeat']))
  formats = {'copy': format_copy, 'copy_fixed': format_copy_fixed}
  for name, res in (out.get('synthetic') or {}).items():
    print(formats[name](res) if name in formats else f'{name}: {json.dumps(res)}')
  tmp = path.with_suffix('.json.tmp')
  tmp.write_text(json.dumps(out, indent=2) + '\n')
  os.replace(tmp, path)
  print(f'wrote {path}')
  return out


def _output_path(output: str | None, ckpt: Any) -> Path:
  """Where the results go; the directory is created and must be writable (checked up front)."""
  from miras_jax.workdir import eval_output  # pylint: disable=import-outside-toplevel

  if output:
    path = Path(output).expanduser()
  else:
    base = ckpt.run_dir if ckpt.run_dir is not None else ckpt.step_dir.parent
    path = eval_output(base, ckpt.step)
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise OSError(
      f'cannot create the output directory {str(path.parent)!r}: {e.strerror or e}'
    ) from None
  if not os.access(path.parent, os.W_OK | os.X_OK) or (
    path.exists() and not os.access(path, os.W_OK)
  ):
    raise OSError(f'cannot write the results to {str(path)!r} (read-only); pass --output')
  return path


def cli() -> None:
  from miras_jax.evals.checkpoint import CheckpointNotFoundError  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.tasks import TaskDataError  # pylint: disable=import-outside-toplevel

  try:
    main()
  except (TaskDataError, CheckpointNotFoundError, OSError, ValueError) as e:
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr)
    raise SystemExit(2) from None
