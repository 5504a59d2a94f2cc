"""Tokenise a corpus into ArrayRecord shards for the training pipeline.

Usage::

    python -m miras_jax.data.prepare --source=corpus_dir --format=text \\
        --tokenizer=tokenizer.model --output_dir=data/corpus \\
        [--val_fraction=0.01] [--docs_per_shard=10000]

Every document (see :mod:`miras_jax.data.sources`) is encoded with the
SentencePiece model, an EOS id is appended (and BOS prepended with
``--add_bos``), and the ids are written as one ArrayRecord record: the raw
little-endian bytes of a 1-D array of ``index.json["dtype"]`` (``uint16`` when
the vocabulary fits, else ``int32``). ``--max_record_tokens=N`` cuts long
documents into records of at most N tokens (EOS only on the last piece), which
shuffles better when documents are whole books.

Each document goes to ``val`` with probability ``--val_fraction``, decided by a
hash of ``(seed, document number)``, so the split is reproducible and works in
one streaming pass; when the fraction is positive and at least two documents
exist, the val split is guaranteed one document. A corpus of a single document
(e.g. one text file with the default ``text_unit=file``) is split inside the
document: its last ``val_fraction`` of tokens (at least one) becomes the val
record and the rest the train records, so both splits are non-empty; a
document too short for that (under two tokens) fails here, before training.

Output directory layout::

    train-00000.array_record ...   # --docs_per_shard documents per shard
    val-00000.array_record ...
    index.json                     # written last: the dataset is complete iff it exists

``index.json`` holds the format version, record dtype, the tokenizer (path,
sha256, vocab size, special ids), the source options, and per split
``num_docs``, ``num_records``, ``num_tokens`` and the shard file names
(relative to the directory). An empty corpus is an error (exit status 2).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from miras_jax.data.errors import DataError, EmptyCorpusError, MissingDependencyError
from miras_jax.data.shard_writer import SplitWriter, is_val, split_records
from miras_jax.data.sources import FORMATS, TEXT_UNITS, iter_documents, split_inputs
from miras_jax.data.tokenizer import Tokenizer
from miras_jax.progress import Progress

__all__ = ['FORMAT_VERSION', 'INDEX_FILE', 'SPLITS', 'record_dtype', 'prepare', 'main']

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
INDEX_FILE = 'index.json'
SPLITS = ('train', 'val')


def record_dtype(vocab_size: int) -> str:
  """Name of the on-disk id dtype for a vocabulary: ``uint16`` if it fits, else ``int32``."""
  return 'uint16' if vocab_size <= 1 << 16 else 'int32'


def _prepare_output_dir(output_dir: Path, overwrite: bool) -> None:
  if output_dir.exists() and not output_dir.is_dir():
    raise DataError(f'output_dir exists and is not a directory: {str(output_dir)!r}')
  output_dir.mkdir(parents=True, exist_ok=True)
  ours = [output_dir / INDEX_FILE, *sorted(output_dir.glob('*.array_record'))]
  existing = [p for p in ours if p.exists()]
  if existing and not overwrite:
    raise DataError(
      f'output_dir {str(output_dir)!r} already holds a prepared dataset; pass --overwrite to replace it'
    )
  for p in existing:
    p.unlink()


def _batched(docs: Iterable[str], size: int) -> Iterable[list[str]]:
  batch: list[str] = []
  for doc in docs:
    batch.append(doc)
    if len(batch) >= size:
      yield batch
      batch = []
  if batch:
    yield batch


def prepare(
  source: str | Sequence[str],
  *,
  format: str,  # pylint: disable=redefined-builtin
  tokenizer: str | os.PathLike | Tokenizer,
  output_dir: str | os.PathLike,
  val_fraction: float = 0.01,
  docs_per_shard: int = 10_000,
  seed: int = 0,
  text_field: str = 'text',
  text_unit: str = 'file',
  extensions: Sequence[str] | None = None,
  hf_config: str | None = None,
  hf_split: str = 'train',
  hf_data_files: str | Sequence[str] | None = None,
  add_bos: bool = False,
  max_docs: int = 0,
  max_tokens: int = 0,
  max_record_tokens: int = 0,
  overwrite: bool = False,
  encode_batch_docs: int = 64,
  log_every_docs: int = 10_000,
  progress: bool = True,
) -> dict[str, Any]:
  """Tokenise ``source`` into ``output_dir``; returns the ``index.json`` contents.

  ``max_tokens``: stop after the batch of documents that brings the total (train + val) to at
  least this many tokens (0: no limit); for sizing a slice of a streamed corpus.

  ``progress``: a progress line on stderr (documents, documents/s, tokens/s, and an ETA when
  ``max_docs`` bounds the count; `miras_jax.progress`).

  Raises:
      DataFileNotFoundError: the source or tokenizer does not exist.
      UnknownFormatError: ``format`` is not one of ``text|jsonl|parquet|hf``.
      EmptyCorpusError: the source has no non-empty documents.
      DataError: other bad arguments or input (e.g. an existing dataset
          in ``output_dir`` without ``overwrite``).
  """
  if not 0.0 <= val_fraction < 1.0:
    raise DataError(f'val_fraction must be in [0, 1), got {val_fraction}')
  if docs_per_shard <= 0:
    raise DataError(f'docs_per_shard must be positive, got {docs_per_shard}')
  if max_docs < 0 or max_tokens < 0 or max_record_tokens < 0:
    raise DataError('max_docs, max_tokens and max_record_tokens must be >= 0 (0 means no limit)')
  tok = tokenizer if isinstance(tokenizer, Tokenizer) else Tokenizer(tokenizer)
  if tok.eos_id < 0 or (add_bos and tok.bos_id < 0):
    raise DataError(f'tokenizer {tok.path!r} defines no EOS{"/BOS" if add_bos else ""} id')
  docs = iter_documents(
    source,
    format,
    text_field=text_field,
    text_unit=text_unit,
    extensions=extensions,
    hf_config=hf_config,
    hf_split=hf_split,
    hf_data_files=hf_data_files,
  )
  # Pull the first document before touching output_dir, so that a missing or
  # empty source leaves nothing behind.
  first = next(docs, None)
  if first is None:
    raise EmptyCorpusError(f'source {str(source)!r} ({format}) has no non-empty documents')

  out = Path(output_dir).expanduser()
  _prepare_output_dir(out, overwrite)
  dtype = record_dtype(tok.vocab_size)
  writers = {name: SplitWriter(name, out, docs_per_shard, dtype) for name in SPLITS}

  def all_docs() -> Iterable[str]:
    yield first
    for n, doc in enumerate(docs, start=2):
      if max_docs and n > max_docs:
        return
      yield doc

  held: list[list[int]] | None = None  # newest train doc, kept back to top up an empty val split
  doc_index = 0
  num_tokens = 0
  start = time.monotonic()
  bar = Progress('prepare', total=max_docs or None, unit='docs', enabled=progress)
  try:
    for batch in _batched(all_docs(), encode_batch_docs):
      encoded = tok.encode_batch(batch, add_bos=add_bos, add_eos=True)
      bar.update(len(encoded), tokens=sum(len(ids) for ids in encoded))
      for ids in encoded:
        records = split_records(ids, max_record_tokens)
        if is_val(doc_index, seed, val_fraction):
          writers['val'].write_doc(records)
        else:
          if held is not None:
            writers['train'].write_doc(held)
          held = records
        doc_index += 1
        if log_every_docs and doc_index % log_every_docs == 0:
          rate = doc_index / max(time.monotonic() - start, 1e-9)
          log.info('prepared %d documents (%.0f docs/s)', doc_index, rate)
      num_tokens += sum(len(ids) for ids in encoded)
      if max_tokens and num_tokens >= max_tokens:
        break
    if held is not None:
      wants_val = val_fraction > 0 and writers['val'].num_docs == 0
      if wants_val and writers['train'].num_docs >= 1:
        writers['val'].write_doc(held)
      elif wants_val:  # a single document: split it so that both splits exist
        ids = [t for r in held for t in r]
        if len(ids) < 2:
          raise EmptyCorpusError(
            f'source {str(source)!r} is one document of {len(ids)} token(s): too short for '
            'a train and a val split (add text, or set val_fraction=0)'
          )
        n_val = min(len(ids) - 1, max(1, round(val_fraction * len(ids))))
        writers['train'].write_doc(split_records(ids[:-n_val], max_record_tokens))
        writers['val'].write_doc(split_records(ids[-n_val:], max_record_tokens))
        log.info('one document: its last %d of %d tokens are the val split', n_val, len(ids))
      else:
        writers['train'].write_doc(held)
  finally:
    bar.close()
    for w in writers.values():
      w.close()

  if writers['train'].num_docs == 0:  # possible only when every document hashed to val
    raise EmptyCorpusError(
      f'no training documents: all {doc_index} documents went to val (val_fraction={val_fraction})'
    )
  splits = {name: w.summary() for name, w in writers.items()}
  index = {
    'format_version': FORMAT_VERSION,
    'created_by': 'miras_jax.data.prepare',
    'dtype': dtype,
    'tokenizer': {
      'path': tok.path,
      'sha256': tok.sha256,
      'vocab_size': tok.vocab_size,
      'bos_id': tok.bos_id,
      'eos_id': tok.eos_id,
      'pad_id': tok.pad_id,
    },
    'add_bos': add_bos,
    'append_eos': True,
    'max_record_tokens': max_record_tokens,
    'source': {
      'source': source if isinstance(source, str) else split_inputs(source),
      'format': format,
      'text_field': text_field,
      'text_unit': text_unit,
      'hf_config': hf_config,
      'hf_split': hf_split,
      'hf_data_files': hf_data_files,
      'max_docs': max_docs,
      'max_tokens': max_tokens,
    },
    'val_fraction': val_fraction,
    'seed': seed,
    'docs_per_shard': docs_per_shard,
    'num_docs': sum(s['num_docs'] for s in splits.values()),
    'num_tokens': sum(s['num_tokens'] for s in splits.values()),
    'splits': splits,
  }
  tmp = out / (INDEX_FILE + '.tmp')
  tmp.write_text(json.dumps(index, indent=2) + '\n')
  os.replace(tmp, out / INDEX_FILE)
  log.info(
    'wrote %s: train %d docs / %d tokens, val %d docs / %d tokens',
    out / INDEX_FILE,
    splits['train']['num_docs'],
    splits['train']['num_tokens'],
    splits['val']['num_docs'],
    splits['val']['num_tokens'],
  )
  return index


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    prog='python -m miras_jax.data.prepare',
    description='Tokenise a corpus into ArrayRecord shards plus index.json.',
  )
  p.add_argument(
    '--source',
    required=True,
    help='files/dirs/globs, comma separated; for --format=hf a dataset name such as '
    "HuggingFaceFW/fineweb-edu or 'json'",
  )
  p.add_argument('--format', required=True, choices=FORMATS)
  p.add_argument('--tokenizer', required=True, help='SentencePiece .model file')
  p.add_argument('--output_dir', required=True)
  p.add_argument('--val_fraction', type=float, default=0.01)
  p.add_argument('--docs_per_shard', type=int, default=10_000)
  p.add_argument('--seed', type=int, default=0, help='seed of the train/val assignment')
  p.add_argument('--text_field', default='text', help='jsonl/parquet/hf field holding the text')
  p.add_argument(
    '--text_unit',
    choices=TEXT_UNITS,
    default='file',
    help='format=text: one document per file, per blank-line-separated paragraph, or per line',
  )
  p.add_argument(
    '--extensions', default=None, help='comma-separated file suffixes taken from directories'
  )
  p.add_argument('--hf_config', default=None)
  p.add_argument('--hf_split', default='train')
  p.add_argument('--hf_data_files', default=None, help='comma-separated data files for --format=hf')
  p.add_argument('--add_bos', action='store_true', help='prepend BOS to every document')
  p.add_argument('--max_docs', type=int, default=0, help='stop after this many documents (0: all)')
  p.add_argument(
    '--max_tokens', type=int, default=0, help='stop once this many tokens are written (0: all)'
  )
  p.add_argument(
    '--max_record_tokens',
    type=int,
    default=0,
    help='cut documents into records of at most this many tokens (0: one record per document)',
  )
  p.add_argument(
    '--overwrite', action='store_true', help='replace an existing dataset in output_dir'
  )
  return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point; returns the process exit status."""
  args = _parse_args(argv)
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(name)s: %(message)s')
  try:
    prepare(
      args.source,
      format=args.format,
      tokenizer=args.tokenizer,
      output_dir=args.output_dir,
      val_fraction=args.val_fraction,
      docs_per_shard=args.docs_per_shard,
      seed=args.seed,
      text_field=args.text_field,
      text_unit=args.text_unit,
      extensions=args.extensions.split(',') if args.extensions else None,
      hf_config=args.hf_config,
      hf_split=args.hf_split,
      hf_data_files=args.hf_data_files,
      add_bos=args.add_bos,
      max_docs=args.max_docs,
      max_tokens=args.max_tokens,
      max_record_tokens=args.max_record_tokens,
      overwrite=args.overwrite,
    )
  except (DataError, FileNotFoundError, MissingDependencyError) as e:
    print(f'prepare: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
