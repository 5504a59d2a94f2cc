"""Document sources: text files/dirs (file, paragraph, line units), jsonl, parquet, Hugging Face."""

import gzip
import json
import sys

import pytest

from miras_jax.data import sources
from miras_jax.data.errors import (
  DataError,
  DataFileNotFoundError,
  EmptyCorpusError,
  MissingDependencyError,
  UnknownFormatError,
)


@pytest.fixture
def text_tree(tmp_path):
  root = tmp_path / 'corpus'
  (root / 'b').mkdir(parents=True)
  (root / '.hidden').mkdir()
  (root / 'a.txt').write_text('First para line 1\nline 2\n\n  \nSecond para\n')
  (root / 'b' / 'c.TXT').write_bytes(b'\xef\xbb\xbfBOM and CRLF\r\nsecond line\r\n')
  (root / 'b' / 'd.txt').write_bytes(b'cp1252 \x93quotes\x94 and \x97dash\n')
  (root / 'README').write_text('skipped: no .txt suffix')
  (root / '.hidden' / 'e.txt').write_text('skipped: hidden')
  (root / 'empty.txt').write_text('  \n\n')
  return root


def test_decode_text_fallbacks():
  assert sources.decode_text('é✓'.encode()) == 'é✓'
  assert sources.decode_text(b'\xef\xbb\xbfx\r\ny\rz') == 'x\ny\nz'
  assert sources.decode_text(b'\x93hi\x94') == '\u201chi\u201d'  # cp1252
  assert sources.decode_text(b'\x81') == '\x81'  # undefined in cp1252: Latin-1


def test_text_documents_per_file(text_tree):
  docs = list(sources.iter_documents(str(text_tree), 'text'))
  assert docs == [
    'First para line 1\nline 2\n\n  \nSecond para',
    'BOM and CRLF\nsecond line',
    'cp1252 \u201cquotes\u201d and \u2014dash',
  ]


def test_text_documents_per_paragraph_and_line(text_tree):
  a = text_tree / 'a.txt'
  assert list(sources.iter_text_documents(a, text_unit='paragraph')) == [
    'First para line 1\nline 2',
    'Second para',
  ]
  assert list(sources.iter_text_documents(a, text_unit='line')) == [
    'First para line 1',
    'line 2',
    'Second para',
  ]
  with pytest.raises(DataError, match="unknown text_unit 'sentence'"):
    list(sources.iter_text_documents(a, text_unit='sentence'))


def test_inputs_comma_separated_globs_and_explicit_files(text_tree):
  files = sources.list_files(
    f'{text_tree / "README"},{text_tree}/b/*.txt,{text_tree / "a.txt"}', ['.txt']
  )
  assert [f.name for f in files] == [
    'README',
    'd.txt',
    'a.txt',
  ]  # explicit files ignore the suffix filter
  files = sources.list_files([text_tree, text_tree / 'a.txt'], ['.txt'])  # duplicates dropped
  assert [f.name for f in files] == ['a.txt', 'c.TXT', 'd.txt', 'empty.txt']


def test_missing_and_empty_inputs(tmp_path):
  with pytest.raises(DataFileNotFoundError, match='input not found: .*nothere'):
    list(sources.iter_documents(str(tmp_path / 'nothere'), 'text'))
  with pytest.raises(DataFileNotFoundError, match='matches no files'):
    sources.list_files(str(tmp_path / '*.txt'), ['.txt'])
  with pytest.raises(EmptyCorpusError, match='no input files ending in .txt'):
    list(sources.iter_documents(str(tmp_path), 'text'))
  with pytest.raises(DataError, match='no input paths'):
    sources.list_files(' , ', ['.txt'])


def test_unknown_format():
  with pytest.raises(
    UnknownFormatError, match="unknown source format 'xml'; expected one of text, jsonl"
  ):
    sources.iter_documents('x', 'xml')


def test_jsonl_fields_gzip_and_nulls(tmp_path):
  rows = [
    {'text': 'one', 'meta': {'body': 'nested one'}},
    {'text': None, 'meta': {'body': ' '}},
    {'text': '  three ', 'meta': {'body': 'nested three'}},
  ]
  (tmp_path / 'a.jsonl').write_text('\n'.join(json.dumps(r) for r in rows) + '\n\n')
  with gzip.open(tmp_path / 'b.jsonl.gz', 'wt') as f:
    f.write(json.dumps({'text': 'gz', 'meta': {'body': 'nested gz'}}) + '\n')
  assert list(sources.iter_documents(str(tmp_path), 'jsonl')) == ['one', 'three', 'gz']
  assert list(sources.iter_documents(str(tmp_path), 'jsonl', text_field='meta.body')) == [
    'nested one',
    'nested three',
    'nested gz',
  ]


def test_jsonl_errors_name_file_and_line(tmp_path):
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"text": "ok"}\n{"content": "x"}\n')
  with pytest.raises(
    DataError, match=r"bad.jsonl:2: no text field 'text' \(record keys: \['content'\]\)"
  ):
    list(sources.iter_jsonl_documents(bad))
  bad.write_text('{"text": "ok"}\n{not json\n')
  with pytest.raises(DataError, match='bad.jsonl:2: invalid JSON'):
    list(sources.iter_jsonl_documents(bad))
  bad.write_text('{"text": 5}\n')
  with pytest.raises(DataError, match="field 'text' is int, expected a string"):
    list(sources.iter_jsonl_documents(bad))


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
  (tmp_path / 'a.parquet').write_bytes(b'PAR1')
  monkeypatch.setitem(sys.modules, 'pyarrow', None)  # makes `import pyarrow...` raise ImportError
  monkeypatch.setitem(sys.modules, 'pyarrow.parquet', None)
  with pytest.raises(MissingDependencyError, match='pip install pyarrow'):
    list(sources.iter_documents(str(tmp_path), 'parquet'))


def test_parquet_documents(tmp_path):
  pa = pytest.importorskip('pyarrow', reason='pyarrow (optional) not installed')
  import pyarrow.parquet as pq

  table = pa.table({'id': [1, 2, 3, 4], 'text': ['alpha', None, ' ', 'delta']})
  pq.write_table(table, tmp_path / 'a.parquet', row_group_size=2)
  assert list(sources.iter_documents(str(tmp_path), 'parquet')) == ['alpha', 'delta']
  with pytest.raises(DataError, match=r"no column 'body' \(columns: \['id', 'text'\]\)"):
    list(sources.iter_documents(str(tmp_path), 'parquet', text_field='body'))


def test_hf_without_datasets_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(sys.modules, 'datasets', None)
  with pytest.raises(MissingDependencyError, match='pip install datasets'):
    list(sources.iter_documents('json', 'hf', hf_data_files='x.jsonl'))


def test_hf_streaming_local_json(tmp_path):
  pytest.importorskip('datasets', reason='datasets (optional) not installed')
  path = tmp_path / 'a.jsonl'
  path.write_text(''.join(json.dumps({'text': t}) + '\n' for t in ['one', '', 'three']))
  docs = list(sources.iter_documents('json', 'hf', hf_data_files=str(path), hf_split='train'))
  assert docs == ['one', 'three']
