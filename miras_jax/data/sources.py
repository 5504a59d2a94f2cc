"""Iterate raw text documents from local files or a Hugging Face dataset.

Formats (the ``format`` argument of :func:`iter_documents`):

``text``
    Plain-text files, or directories searched recursively for files whose name
    ends in one of ``extensions`` (default ``.txt``; hidden files are skipped,
    order is sorted by path). Bytes are decoded as UTF-8 (a BOM is dropped),
    falling back to cp1252 and finally Latin-1, and line ends are normalised to
    ``\\n``. ``text_unit`` chooses what one document is: the whole ``file``
    (default), each ``paragraph`` (blocks separated by blank lines), or each
    non-empty ``line``.
``jsonl``
    JSON-lines files (``.jsonl``/``.json``, optionally ``.gz``); the document is
    the string at ``text_field`` (a dotted path such as ``meta.text`` reaches
    into nested objects).
``parquet``
    Parquet files; the document is the string column ``text_field``. Needs the
    optional ``pyarrow`` package.
``hf``
    A Hugging Face dataset loaded in streaming mode with
    ``datasets.load_dataset(source, hf_config, split=hf_split, data_files=...,
    streaming=True)``. Needs the optional ``datasets`` package.

Several inputs may be given as a list or as one comma-separated string. Empty
or whitespace-only documents are skipped; a missing input is a
:class:`~miras_jax.data.errors.DataFileNotFoundError`, an input that yields no
files an :class:`~miras_jax.data.errors.EmptyCorpusError`.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from miras_jax.data.errors import (
  DataError,
  DataFileNotFoundError,
  EmptyCorpusError,
  MissingDependencyError,
  UnknownFormatError,
)

__all__ = [
  'FORMATS',
  'TEXT_UNITS',
  'decode_text',
  'read_text_file',
  'split_inputs',
  'list_files',
  'iter_text_documents',
  'iter_jsonl_documents',
  'iter_parquet_documents',
  'iter_hf_documents',
  'iter_documents',
]

FORMATS = ('text', 'jsonl', 'parquet', 'hf')
TEXT_UNITS = ('file', 'paragraph', 'line')
DEFAULT_EXTENSIONS = {
  'text': ('.txt',),
  'jsonl': ('.jsonl', '.json', '.jsonl.gz', '.json.gz'),
  'parquet': ('.parquet',),
}
_PARAGRAPH_BREAK = re.compile(r'\n[ \t\f\v]*\n')

PathsLike = str | os.PathLike | Sequence[str | os.PathLike]


# --------------------------------------------------------------------- files
def decode_text(data: bytes) -> str:
  """Decode bytes as UTF-8, else cp1252, else Latin-1; normalise line ends to ``\\n``."""
  try:
    text = data.decode('utf-8-sig')
  except UnicodeDecodeError:
    try:
      text = data.decode('cp1252')
    except UnicodeDecodeError:  # cp1252 leaves 5 bytes undefined
      text = data.decode('latin-1')
  return text.replace('\r\n', '\n').replace('\r', '\n')


def read_text_file(path: str | os.PathLike) -> str:
  """The decoded text of one file (see :func:`decode_text`)."""
  with open(path, 'rb') as f:
    return decode_text(f.read())


def split_inputs(paths: PathsLike) -> list[str]:
  """Normalise ``paths`` (a comma-separated string or a sequence) to a list of strings."""
  if isinstance(paths, (str, os.PathLike)):
    items = str(paths).split(',')
  else:
    items = [str(p) for p in paths]
  items = [p.strip() for p in items if p and str(p).strip()]
  if not items:
    raise DataError('no input paths given')
  return items


def _is_hidden(rel: Path) -> bool:
  return any(part.startswith('.') for part in rel.parts)


def list_files(paths: PathsLike, extensions: Sequence[str]) -> list[Path]:
  """Expand files, directories (recursively) and glob patterns to a file list.

  Files named explicitly are always included; inside directories only files
  ending in one of ``extensions`` (case-insensitive) are taken. Directory
  contents are sorted, duplicates dropped, and the order is deterministic.

  Raises:
      DataFileNotFoundError: a path does not exist / a glob matches nothing.
      EmptyCorpusError: nothing matched at all.
  """
  exts = tuple(e.lower() for e in extensions)
  out: list[Path] = []
  seen: set[Path] = set()

  def add(p: Path) -> None:
    key = p.resolve()
    if key not in seen:
      seen.add(key)
      out.append(p)

  for item in split_inputs(paths):
    item = os.path.expanduser(item)
    if any(ch in item for ch in '*?['):
      matches = sorted(glob.glob(item, recursive=True))
      if not matches:
        raise DataFileNotFoundError(f'input pattern matches no files: {item!r}')
      candidates = [Path(m) for m in matches]
    else:
      candidates = [Path(item)]
    for path in candidates:
      if path.is_file():
        add(path)
      elif path.is_dir():
        found = sorted(
          p
          for p in path.rglob('*')
          if p.is_file() and p.name.lower().endswith(exts) and not _is_hidden(p.relative_to(path))
        )
        for p in found:
          add(p)
      else:
        raise DataFileNotFoundError(f'input not found: {str(path)!r}')
  if not out:
    raise EmptyCorpusError(f'no input files ending in {", ".join(exts)} under {str(paths)!r}')
  return out


# ---------------------------------------------------------------------- text
def iter_text_documents(
  paths: PathsLike,
  *,
  text_unit: str = 'file',
  extensions: Sequence[str] = DEFAULT_EXTENSIONS['text'],
) -> Iterator[str]:
  """Documents from plain-text files: one per file, paragraph or line (``text_unit``)."""
  if text_unit not in TEXT_UNITS:
    raise DataError(f'unknown text_unit {text_unit!r}; expected one of {", ".join(TEXT_UNITS)}')
  for path in list_files(paths, extensions):
    text = read_text_file(path)
    if text_unit == 'file':
      pieces: Iterable[str] = (text,)
    elif text_unit == 'paragraph':
      pieces = _PARAGRAPH_BREAK.split(text)
    else:
      pieces = text.split('\n')
    for piece in pieces:
      piece = piece.strip()
      if piece:
        yield piece


# --------------------------------------------------------------------- jsonl
def _get_field(record: Any, field: str, where: str) -> Any:
  value = record
  for key in field.split('.'):
    if not isinstance(value, dict) or key not in value:
      keys = sorted(record) if isinstance(record, dict) else type(record).__name__
      raise DataError(f'{where}: no text field {field!r} (record keys: {keys})')
    value = value[key]
  return value


def _as_document(value: Any, field: str, where: str) -> str | None:
  if value is None:
    return None
  if not isinstance(value, str):
    raise DataError(f'{where}: field {field!r} is {type(value).__name__}, expected a string')
  value = value.strip()
  return value or None


def iter_jsonl_documents(
  paths: PathsLike,
  *,
  text_field: str = 'text',
  extensions: Sequence[str] = DEFAULT_EXTENSIONS['jsonl'],
) -> Iterator[str]:
  """Documents from JSON-lines files: the string at ``text_field`` of each record."""
  for path in list_files(paths, extensions):
    opener = gzip.open if path.name.lower().endswith('.gz') else open
    with opener(path, 'rb') as f:
      for lineno, raw in enumerate(f, start=1):
        if not raw.strip():
          continue
        where = f'{path}:{lineno}'
        try:
          record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
          raise DataError(f'{where}: invalid JSON ({e})') from None
        doc = _as_document(_get_field(record, text_field, where), text_field, where)
        if doc is not None:
          yield doc


# ------------------------------------------------------------------- parquet
def _import_pyarrow_parquet():
  try:
    import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise MissingDependencyError(
      "reading parquet needs the optional 'pyarrow' package: pip install pyarrow"
    ) from None
  return pq


def iter_parquet_documents(
  paths: PathsLike,
  *,
  text_field: str = 'text',
  extensions: Sequence[str] = DEFAULT_EXTENSIONS['parquet'],
  batch_size: int = 1024,
) -> Iterator[str]:
  """Documents from Parquet files: the string column ``text_field`` (needs pyarrow)."""
  pq = _import_pyarrow_parquet()
  for path in list_files(paths, extensions):
    try:
      pf = pq.ParquetFile(str(path))
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
      raise DataError(f'{path}: not a readable parquet file ({e})') from None
    names = list(pf.schema_arrow.names)
    if text_field not in names:
      raise DataError(f'{path}: no column {text_field!r} (columns: {names})')
    row = 0
    for batch in pf.iter_batches(batch_size=batch_size, columns=[text_field]):
      for value in batch.column(0).to_pylist():
        row += 1
        doc = _as_document(value, text_field, f'{path} row {row}')
        if doc is not None:
          yield doc


# ------------------------------------------------------------------------ hf
def iter_hf_documents(
  name: str,
  *,
  config: str | None = None,
  split: str = 'train',
  text_field: str = 'text',
  data_files: PathsLike | None = None,
  streaming: bool = True,
  **load_kwargs: Any,
) -> Iterator[str]:
  """Documents from a Hugging Face dataset, streamed (``datasets`` imported lazily).

  ``name`` is a hub id (e.g. ``HuggingFaceFW/fineweb-edu`` with
  ``config="sample-10BT"``) or a builder such as ``"json"`` together with
  ``data_files``.
  """
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise MissingDependencyError(
      "format 'hf' needs the optional 'datasets' package: pip install datasets"
    ) from None
  if data_files is not None:
    data_files = split_inputs(data_files)
  ds = datasets.load_dataset(
    name, config, split=split, data_files=data_files, streaming=streaming, **load_kwargs
  )
  for i, example in enumerate(ds):
    where = f'{name}[{split}] example {i}'
    doc = _as_document(_get_field(example, text_field, where), text_field, where)
    if doc is not None:
      yield doc


# ------------------------------------------------------------------ dispatch
def iter_documents(
  source: PathsLike,
  format: str,  # pylint: disable=redefined-builtin
  *,
  text_field: str = 'text',
  text_unit: str = 'file',
  extensions: Sequence[str] | None = None,
  hf_config: str | None = None,
  hf_split: str = 'train',
  hf_data_files: PathsLike | None = None,
) -> Iterator[str]:
  """Documents of ``source`` read as ``format`` (one of :data:`FORMATS`).

  Raises:
      UnknownFormatError: ``format`` is not one of :data:`FORMATS`.
  """
  if format not in FORMATS:
    raise UnknownFormatError(
      f'unknown source format {format!r}; expected one of {", ".join(FORMATS)}'
    )
  if format == 'hf':
    return iter_hf_documents(
      str(source),
      config=hf_config,
      split=hf_split,
      text_field=text_field,
      data_files=hf_data_files,
    )
  exts = tuple(extensions) if extensions else DEFAULT_EXTENSIONS[format]
  if format == 'text':
    return iter_text_documents(source, text_unit=text_unit, extensions=exts)
  if format == 'jsonl':
    return iter_jsonl_documents(source, text_field=text_field, extensions=exts)
  return iter_parquet_documents(source, text_field=text_field, extensions=exts)
