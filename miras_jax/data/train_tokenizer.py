"""Train a SentencePiece tokenizer on local text.

Usage::

    python -m miras_jax.data.train_tokenizer \\
        --input=corpus_dir,extra.txt --model_prefix=out/tok \\
        --vocab_size=32000 --model_type=bpe

writes ``out/tok.model`` and ``out/tok.vocab``. Inputs are files, directories
(searched recursively for ``--extensions``, default ``.txt``) or globs, comma
separated; ``--format=jsonl|parquet`` reads a ``--text_field`` instead. Text is
decoded as UTF-8 with a cp1252 fallback (see :mod:`miras_jax.data.sources`) and
fed to the trainer line by line (blank lines skipped).

Defaults follow the Llama-2 tokenizer: byte fallback on (so no input is ever
``<unk>``), digits split, identity normalisation and whitespace kept (so
decode(encode(text)) == text), ids ``unk=0, bos=1, eos=2`` and no pad piece
(``--pad_id=3`` adds one). Unlike Llama-2, ``"\n"`` gets its own piece
(``--no-newline_piece`` turns that off): training sees text line by line, so
without it a newline would cost a byte piece, or be ``<unk>`` without byte
fallback. With byte fallback the vocabulary must hold the 256
byte pieces plus every character kept by ``--character_coverage`` plus the
special pieces; a smaller ``--vocab_size`` is reported as an error that says so
(use ``--no-byte_fallback`` for toy vocabularies).
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from miras_jax.data.errors import DataError, EmptyCorpusError, MissingDependencyError
from miras_jax.data.sources import FORMATS, iter_documents
from miras_jax.progress import Progress

__all__ = ['iter_training_lines', 'train_tokenizer', 'main']

MODEL_TYPES = ('bpe', 'unigram')


def iter_training_lines(
  inputs: str | Sequence[str],
  *,
  format: str = 'text',  # pylint: disable=redefined-builtin
  text_field: str = 'text',
  extensions: Sequence[str] | None = None,
) -> Iterator[str]:
  """Non-blank lines of every document of ``inputs`` (trailing whitespace removed)."""
  if format == 'hf':
    raise DataError('train_tokenizer reads local files only; use --format=text, jsonl or parquet')
  for doc in iter_documents(inputs, format, text_field=text_field, extensions=extensions):
    for line in doc.split('\n'):
      line = line.rstrip()
      if line:
        yield line


def train_tokenizer(
  inputs: str | Sequence[str],
  model_prefix: str | os.PathLike,
  vocab_size: int,
  model_type: str = 'bpe',
  *,
  format: str = 'text',  # pylint: disable=redefined-builtin
  text_field: str = 'text',
  extensions: Sequence[str] | None = None,
  byte_fallback: bool = True,
  character_coverage: float = 0.9995,
  input_sentence_size: int = 2_000_000,
  max_sentence_length: int = 16384,
  pad_id: int = -1,
  newline_piece: bool = True,
  num_threads: int | None = None,
  seed: int = 0,
  verbose: bool = False,
  progress: bool = True,
) -> str:
  """Train a SentencePiece model; returns the path of the written ``.model`` file.

  ``progress``: a progress line on stderr while SentencePiece reads the lines (lines/s, MB/s;
  the number of lines is not known in advance, so no ETA), then the elapsed time while it
  trains (SentencePiece reports nothing back until it returns). Quick runs print nothing.

  Raises:
      DataError: bad arguments, or SentencePiece rejected the settings (for
          example a vocabulary too small for byte fallback).
      EmptyCorpusError: the inputs contain no text.
  """
  if model_type not in MODEL_TYPES:
    raise DataError(f'unknown model_type {model_type!r}; expected one of {", ".join(MODEL_TYPES)}')
  if vocab_size <= 0:
    raise DataError(f'vocab_size must be positive, got {vocab_size}')
  lines = iter_training_lines(inputs, format=format, text_field=text_field, extensions=extensions)
  first = next(lines, None)
  if first is None:
    raise EmptyCorpusError(f'no text to train a tokenizer on in {inputs!r}')
  prefix = Path(model_prefix).expanduser()
  prefix.parent.mkdir(parents=True, exist_ok=True)
  spm.set_random_generator_seed(seed)
  bar = Progress('tokenizer: reading', total=None, unit='lines', enabled=progress)

  def counted(it):
    for line in it:
      bar.update(1, MB=len(line) / 1e6)
      yield line
    bar.close()

  training = Progress(f'tokenizer: training {vocab_size} {model_type} pieces', unit=None)
  training.enabled = progress
  try:
    with training.ticking():
      spm.SentencePieceTrainer.Train(
        sentence_iterator=counted(itertools.chain([first], lines)),
        model_prefix=str(prefix),
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        character_coverage=character_coverage,
        input_sentence_size=input_sentence_size,
        shuffle_input_sentence=True,
        max_sentence_length=max_sentence_length,
        split_digits=True,
        normalization_rule_name='identity',
        remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=pad_id,
        user_defined_symbols=['\n'] if newline_piece else [],
        num_threads=num_threads or os.cpu_count() or 1,
        minloglevel=0 if verbose else 2,
      )
  except RuntimeError as e:
    message = ' '.join(str(e).split())
    hint = ''
    if 'smaller than required_chars' in message and byte_fallback:
      hint = (
        ' (byte_fallback reserves 256 byte pieces on top of the characters;'
        ' raise --vocab_size or pass --no-byte_fallback)'
      )
    raise DataError(f'sentencepiece training failed: {message}{hint}') from None
  return f'{prefix}.model'


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog='python -m miras_jax.data.train_tokenizer',
    description='Train a SentencePiece tokenizer on local text files.',
  )
  p.add_argument('--input', required=True, help='files, directories or globs, comma separated')
  p.add_argument(
    '--model_prefix', required=True, help='output prefix; writes PREFIX.model and PREFIX.vocab'
  )
  p.add_argument('--vocab_size', type=int, required=True)
  p.add_argument('--model_type', choices=MODEL_TYPES, default='bpe')
  p.add_argument('--format', choices=[f for f in FORMATS if f != 'hf'], default='text')
  p.add_argument('--text_field', default='text', help='jsonl/parquet field holding the text')
  p.add_argument(
    '--extensions', default=None, help='comma-separated file suffixes to take from directories'
  )
  p.add_argument('--byte_fallback', action=argparse.BooleanOptionalAction, default=True)
  p.add_argument('--character_coverage', type=float, default=0.9995)
  p.add_argument(
    '--input_sentence_size', type=int, default=2_000_000, help='lines sampled for training'
  )
  p.add_argument('--pad_id', type=int, default=-1, help='id of a <pad> piece, -1 for none')
  p.add_argument(
    '--newline_piece',
    action=argparse.BooleanOptionalAction,
    default=True,
    help='give "\\n" its own piece',
  )
  p.add_argument('--num_threads', type=int, default=None)
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--verbose', action='store_true', help="show SentencePiece's training log")
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status."""
  args = _parse_args(argv)
  try:
    path = train_tokenizer(
      args.input,
      args.model_prefix,
      args.vocab_size,
      args.model_type,
      format=args.format,
      text_field=args.text_field,
      extensions=args.extensions.split(',') if args.extensions else None,
      byte_fallback=args.byte_fallback,
      character_coverage=args.character_coverage,
      input_sentence_size=args.input_sentence_size,
      pad_id=args.pad_id,
      newline_piece=args.newline_piece,
      num_threads=args.num_threads,
      seed=args.seed,
      verbose=args.verbose,
    )
  except (DataError, FileNotFoundError, MissingDependencyError) as e:
    print(f'train_tokenizer: error: {e}', file=sys.stderr)
    return 2
  print(f'wrote {path}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
