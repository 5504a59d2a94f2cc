"""Sample from a checkpoint: ``python -m miras_jax.generate --workdir=RUN --prompt="..."``.

    python -m miras_jax.generate --workdir=runs/quickstart --prompt="ROMEO:" \\
        [--step=N] [--max_new_tokens=200] [--temperature=0.8] [--top_k=0] [--top_p=0.95] \\
        [--seed=0] [--tokenizer=path/tokenizer.model]
    python -m miras_jax.generate --workdir=runs/quickstart --prompts_file=prompts.txt \\
        [--batch_size=8] [--output=completions.jsonl]

``--workdir`` is read as by ``python -m miras_jax.eval`` (a run directory, its
``checkpoints/`` or one ``checkpoints/<step>``; the latest step unless ``--step``).
A single prompt streams its continuation to the console; a prompts file (one
prompt per line) is generated ``--batch_size`` prompts at a time, with a
progress line, and each completion printed (and written as JSON lines to
``--output``). The last line reports tokens/s of the decoding steps (the first
step and the prefill, which include compilation, are reported apart).
Decoding goes through the model's caches (miras_jax/inference/generation.py).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ['main', 'cli']


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog='python -m miras_jax.generate',
    description=__doc__.split('\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--workdir', required=True, help='run dir, its checkpoints/ dir, or a step dir')
  p.add_argument('--step', type=int, default=None, help='checkpoint step (default: the latest)')
  src = p.add_mutually_exclusive_group(required=True)
  src.add_argument('--prompt', default=None, help='one prompt ("" starts a fresh document)')
  src.add_argument('--prompts_file', default=None, help='a text file, one prompt per line')
  p.add_argument('--max_new_tokens', type=int, default=128)
  p.add_argument('--temperature', type=float, default=0.8, help='0 = greedy')
  p.add_argument('--top_k', type=int, default=0, help='0 = off')
  p.add_argument('--top_p', type=float, default=0.95, help='1 = off')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--batch_size', type=int, default=8, help='prompts per batch')
  p.add_argument('--tokenizer', default=None, help="SentencePiece .model (default: the run's)")
  p.add_argument('--no_stop_at_eos', action='store_true', help='keep generating after EOS')
  p.add_argument('--output', default=None, help='write completions as JSON lines here')
  p.add_argument('--quiet', action='store_true', help='only the completions')
  return p


def _check(args: argparse.Namespace) -> None:
  if args.max_new_tokens < 1:
    raise ValueError(f'--max_new_tokens must be >= 1, got {args.max_new_tokens}')
  if args.temperature < 0:
    raise ValueError(f'--temperature must be >= 0, got {args.temperature}')
  if not 0.0 < args.top_p <= 1.0:
    raise ValueError(f'--top_p must be in (0, 1], got {args.top_p}')
  if args.top_k < 0:
    raise ValueError(f'--top_k must be >= 0, got {args.top_k}')
  if args.batch_size < 1:
    raise ValueError(f'--batch_size must be >= 1, got {args.batch_size}')


def read_prompts(args: argparse.Namespace) -> list[str]:
  if args.prompt is not None:
    return [args.prompt]
  path = Path(args.prompts_file).expanduser()
  if not path.is_file():
    raise FileNotFoundError(f'prompts file not found: {str(path)!r}')
  prompts = [line.rstrip('\n') for line in path.read_text(encoding='utf-8').splitlines()]
  prompts = [p for p in prompts if p.strip()]
  if not prompts:
    raise ValueError(f'prompts file {str(path)!r} holds no prompts')
  return prompts


class _Stream:
  """Prints one row's continuation as it grows (SentencePiece decodes whole pieces, so the
  text of the ids so far is decoded and only its new suffix printed)."""

  def __init__(self, tokenizer):
    self.tok, self.ids, self.shown = tokenizer, [], ''

  def __call__(self, step, total, new):
    if new[0] is None:
      return
    self.ids.append(new[0])
    text = self.tok.decode(self.ids)
    if text.startswith(self.shown):
      sys.stdout.write(text[len(self.shown) :])
      sys.stdout.flush()
      self.shown = text


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
  args = build_parser().parse_args(argv)
  _check(args)
  prompts = read_prompts(args)
  from miras_jax.logs import quiet_logs  # pylint: disable=import-outside-toplevel

  quiet_logs()
  from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  from miras_jax.evals import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.run_data import find_tokenizer  # pylint: disable=import-outside-toplevel
  from miras_jax.inference.generation import GenerationStats, generate  # pylint: disable=import-outside-toplevel
  from miras_jax.models import build_model  # pylint: disable=import-outside-toplevel
  from miras_jax.progress import Progress  # pylint: disable=import-outside-toplevel

  ckpt = ckpt_lib.resolve_checkpoint(args.workdir, args.step)
  config = ckpt_lib.load_config(ckpt)
  if not config.get('model'):
    raise ValueError(f'the config of {ckpt.step_dir} has no model section')
  tokenizer = Tokenizer(args.tokenizer or find_tokenizer(config, ckpt.run_dir))
  model = build_model(config['model'])
  if tokenizer.vocab_size > model.cfg.vocab_size:
    raise ValueError(
      f'tokenizer {tokenizer.path} has {tokenizer.vocab_size} pieces but the model only '
      f'{model.cfg.vocab_size}'
    )
  verbose = not args.quiet
  t0 = time.perf_counter()
  params = ckpt_lib.load_params(ckpt)
  if verbose:
    print(
      f'checkpoint {ckpt.step_dir} (step {ckpt.step}), loaded in {time.perf_counter() - t0:.1f}s;'
      f' tokenizer {tokenizer.path}',
      file=sys.stderr,
      flush=True,
    )
  # Training documents end with EOS and start fresh (no BOS unless prepared with --add_bos):
  # an empty prompt starts from BOS when the tokenizer has one, else from EOS.
  start = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
  ids = [tokenizer.encode(p) or [start] for p in prompts]
  eos = None if args.no_stop_at_eos or tokenizer.eos_id < 0 else tokenizer.eos_id
  kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed)
  results, total = [], GenerationStats()
  bar = Progress('generate', total=len(prompts) * args.max_new_tokens, unit='tokens')
  bar.enabled = verbose and len(prompts) > 1
  for lo in range(0, len(prompts), args.batch_size):
    batch = list(range(lo, min(lo + args.batch_size, len(prompts))))
    if len(prompts) == 1:
      sys.stdout.write(prompts[0])
      callback = _Stream(tokenizer)
    else:
      callback = lambda step, n, new: bar.update(sum(t is not None for t in new))
    outs, stats = generate(
      model,
      params,
      [ids[i] for i in batch],
      args.max_new_tokens,
      row_ids=batch,
      eos_id=eos,
      callback=callback,
      **kw,
    )
    for name in ('rows', 'prompt_tokens', 'new_tokens', 'steps', 'decode_tokens'):
      setattr(total, name, getattr(total, name) + getattr(stats, name))
    for name in ('prefill_s', 'first_step_s', 'decode_s'):
      setattr(total, name, getattr(total, name) + getattr(stats, name))
    for i, out in zip(batch, outs):
      text = tokenizer.decode([t for t in out if t != eos])
      results.append({'prompt': prompts[i], 'completion': text, 'tokens': len(out)})
      if len(prompts) == 1:
        sys.stdout.write('\n')
      else:
        print(f'--- [{i}] ---\n{prompts[i]}{text}', flush=True)
  bar.close()
  if verbose:
    print(
      f'generated {total.new_tokens} tokens for {total.rows} prompt(s): '
      f'{total.tokens_per_s:.1f} tokens/s decoding (batch {min(args.batch_size, len(prompts))}); '
      f'prefill {total.prefill_s:.1f}s + first step {total.first_step_s:.1f}s incl. compilation',
      file=sys.stderr,
      flush=True,
    )
  if args.output:
    with open(args.output, 'w', encoding='utf-8') as f:
      for r in results:
        f.write(json.dumps(r) + '\n')
  return results


def cli() -> None:
  from miras_jax.data.errors import DataError  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.checkpoint import CheckpointNotFoundError  # pylint: disable=import-outside-toplevel

  try:
    main()
  except (CheckpointNotFoundError, FileNotFoundError, ValueError, DataError) as e:
    print(f'error: {e}', file=sys.stderr)
    raise SystemExit(2) from None
  except KeyboardInterrupt:
    print('\ninterrupted', file=sys.stderr)
    raise SystemExit(130) from None
