"""A small synthetic recall corpus to mix into training data (opt-in).

Each line is a sequence of made-up words read twice: ``"bako tilu ... sefa. bako tilu ...
sefa."`` (4–16 words of two syllables, fresh random words on every line). The second reading
is predictable only from the context, so it trains in-context copying, the recall that
memories / KV caches exist for; the eval's ``copy`` task (miras_jax/evals/synthetic.py)
measures it on unseen words. Deterministic (seeded) and generated locally: nothing is
downloaded. Measured: mixed into the quickstart (a fifth or half of the tokens, 250–500
steps) it did not make the 0.3M-parameter Moneta learn the copy task, nor a Moneta + SWA(64)
hybrid (README; scripts/copy_probe.py measures the same on token-level copying alone). The
quickstart mixes in the fixed-offset copy task instead (miras_jax/data/copy_task.py: recall by
position, which its SWA → Moneta learns).

``data.corpus = 'default,recall'`` trains on both; the files are written once into
``<cache_dir>/recall-copy-v1-.../`` (default cache: that of miras_jax/data/default_corpus.py).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

from miras_jax.data.default_corpus import default_cache_dir

__all__ = ['copy_line', 'ensure_recall_corpus', 'CORPUS_NAME']

CORPUS_NAME = 'recall-copy-v1'
_CONS = 'bdfgklmnprstvz'
_VOWELS = 'aeiou'


def copy_line(rng: random.Random, min_words: int = 4, max_words: int = 16) -> str:
  """One line: ``n`` random two-syllable words and a full stop, twice."""
  n = rng.randint(min_words, max_words)
  words = [''.join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(2)) for _ in range(n)]
  seq = ' '.join(words) + '.'
  return f'{seq} {seq}'


def ensure_recall_corpus(
  cache_dir: str | os.PathLike | None = None,
  *,
  docs: int = 96,
  lines_per_doc: int = 256,
  seed: int = 0,
) -> str:
  """Directory of the recall corpus's ``.txt`` files (``docs`` files of ``lines_per_doc``
  lines, about 3 MB with the defaults), written atomically on first use."""
  root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  corpus = root / f'{CORPUS_NAME}-{docs}x{lines_per_doc}-s{seed}'
  if (corpus / '.complete').is_file():
    return str(corpus / 'texts')
  root.mkdir(parents=True, exist_ok=True)
  work = Path(tempfile.mkdtemp(prefix=f'.{CORPUS_NAME}.', dir=root))
  try:
    rng = random.Random(f'{CORPUS_NAME}-{seed}')
    texts = work / 'texts'
    texts.mkdir()
    for d in range(docs):
      lines = [copy_line(rng) for _ in range(lines_per_doc)]
      (texts / f'copy_{d:03d}.txt').write_text('\n'.join(lines) + '\n', encoding='utf-8')
    (work / '.complete').write_text(f'{docs}\n')
    if corpus.exists():  # an earlier, interrupted attempt
      shutil.rmtree(corpus)
    os.replace(work, corpus)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return str(corpus / 'texts')
