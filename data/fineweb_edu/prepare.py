"""FineWeb-Edu for the paper-scale recipes, streamed from the Hugging Face hub and tokenised with
the Llama-2 SentencePiece model into the ArrayRecord layout the trainer reads.

    pip install datasets                  # or: pip install -e ".[hf]"
    python data/fineweb_edu/prepare.py --size=170m --tokenizer=PATH/tokenizer.model
    python -m miras_jax.train --config=configs/moneta.py:170m --workdir=runs/moneta_170m \\
        --config.data.corpus=data/fineweb_edu/170m --config.data.tokenizer=PATH/tokenizer.model
    python data/fineweb_edu/prepare.py --size=tiny --source=DIR   # offline: local parquet/jsonl

``--size`` (tiny, 170m, 340m, 760m, 1.3b) takes the token budget of that size's recipe
(``PAPER_RECIPE`` in miras_jax/train/defaults.py: 15B tokens at 170M and 340M, 30B at 760M,
100B at 1.3B, as in Miras / Titans §5) and the smallest FineWeb-Edu sample that holds it
(``sample-10BT``, ``sample-100BT``, ``sample-350BT``; the samples count GPT-2 tokens, which
Llama-2's tokenizer splits a little finer, so a budget equal to a sample's size is taken from
the next one). Documents are read in the hub's order until the budget is written (``--tokens``
sets another); 0.05% of them, chosen by a seeded hash, form the validation split. ``--tokenizer``
is Llama-2's 32000-piece ``tokenizer.model`` (the hub's ``meta-llama/Llama-2-7b-hf`` is gated,
so it is not fetched here; default: ``$MIRAS_SHARED_DATA/tokenizer_llama2/tokenizer.model``).

Output: ``<out>/<size>/`` (default ``data/fineweb_edu/170m``): ``train-*.array_record``,
``val-*.array_record`` and ``index.json``, written last (:mod:`miras_jax.data.prepare`; ids
as ``uint16``: 2 bytes a token, so 15B tokens take 30 GB). An existing complete output is
kept unless ``--overwrite``. The outputs are git-ignored.

``--source=DIR`` reads local files instead of the hub (FineWeb-Edu parquet shards fetched by
hand, or any ``.parquet`` / ``.jsonl`` files with a ``text`` field; for machines without the
hub, and the offline test tests/data/test_recipes.py).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
HUB_DATASET = 'HuggingFaceFW/fineweb-edu'
# (sample name, its size in GPT-2 tokens); a budget must be strictly smaller (see above).
SAMPLES = (('sample-10BT', 10e9), ('sample-100BT', 100e9), ('sample-350BT', 350e9))
VAL_FRACTION = 0.0005
DOCS_PER_SHARD = 20_000


def default_tokenizer() -> str:
  shared = os.environ.get('MIRAS_SHARED_DATA', '')
  return str(Path(shared) / 'tokenizer_llama2' / 'tokenizer.model') if shared else ''


def hub_sample(tokens: float) -> str:
  """The smallest FineWeb-Edu sample strictly larger than ``tokens``."""
  for name, size in SAMPLES:
    if tokens < size:
      return name
  return 'default'  # the whole dataset (~1.3T tokens)


def local_format(source: str) -> str:
  """'parquet' or 'jsonl', whichever the files under ``source`` are."""
  path = Path(source)
  names = [path.name] if path.is_file() else [p.name for p in path.rglob('*') if p.is_file()]
  kinds = {'parquet' for n in names if n.endswith('.parquet')}
  kinds |= {'jsonl' for n in names if n.endswith(('.jsonl', '.json'))}
  if len(kinds) != 1:
    raise SystemExit(f'error: --source {source!r} must hold .parquet or .jsonl files (one kind)')
  return kinds.pop()


def prepare_fineweb_edu(
  size: str,
  tokenizer: str,
  out: str | Path = HERE,
  *,
  tokens: int = 0,
  source: str | None = None,
  overwrite: bool = False,
) -> Path:
  """Write ``<out>/<size>/``; returns it (see the module docstring)."""
  from miras_jax.data.prepare import INDEX_FILE, prepare
  from miras_jax.train.defaults import PAPER_RECIPE

  if size not in PAPER_RECIPE:
    raise SystemExit(f'error: unknown --size {size!r}; choose one of {", ".join(PAPER_RECIPE)}')
  if not tokenizer or not Path(tokenizer).is_file():
    raise SystemExit(f'error: no Llama-2 tokenizer.model at {tokenizer!r} (pass --tokenizer)')
  budget = int(tokens or PAPER_RECIPE[size][0])
  target = Path(out).expanduser() / size
  if (target / INDEX_FILE).is_file() and not overwrite:
    print(f'fineweb_edu: {target} is complete (pass --overwrite to write it again)')
    return target
  if source is None:
    where = dict(source=HUB_DATASET, format='hf', hf_config=hub_sample(budget), hf_split='train')
  else:
    where = dict(source=source, format=local_format(source))
  print(f'fineweb_edu: {budget:,} tokens from {where} -> {target}', flush=True)
  prepare(
    **where,
    tokenizer=tokenizer,
    output_dir=target,
    val_fraction=VAL_FRACTION,
    docs_per_shard=DOCS_PER_SHARD,
    max_tokens=budget,
    overwrite=overwrite,
    log_every_docs=0,
  )
  return target


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(
    prog='python data/fineweb_edu/prepare.py',
    description=__doc__.split('\n\n', 1)[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--size', default='170m', help='the recipe: tiny, 170m, 340m, 760m, 1.3b')
  p.add_argument('--tokenizer', default=default_tokenizer(), help="Llama-2's tokenizer.model")
  p.add_argument('--out', default=str(HERE), help='writes <out>/<size>/ (default data/fineweb_edu)')
  p.add_argument('--tokens', type=int, default=0, help="token budget (default: the size's recipe)")
  p.add_argument('--source', default=None, help='local .parquet/.jsonl files instead of the hub')
  p.add_argument('--overwrite', action='store_true', help='replace a complete output')
  args = p.parse_args(argv)
  from miras_jax.data.errors import DataError, MissingDependencyError

  try:
    print(
      prepare_fineweb_edu(
        args.size,
        args.tokenizer,
        args.out,
        tokens=args.tokens,
        source=args.source,
        overwrite=args.overwrite,
      )
    )
  except (DataError, FileNotFoundError, MissingDependencyError) as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  sys.exit(main())
