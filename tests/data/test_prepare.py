"""prepare: text/jsonl -> ArrayRecord shards + index.json, and its errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from array_record.python import array_record_module

from miras_jax.data.errors import (
  DataError,
  DataFileNotFoundError,
  EmptyCorpusError,
  UnknownFormatError,
)
from miras_jax.data.pipeline import load_index, split_dataset
from miras_jax.data.prepare import main, prepare, record_dtype

from .conftest import REPO_ROOT

LLAMA2_SHA256 = '9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347'


def test_index_contents(prepared, corpus_docs, llama_model_path):
  data_dir, index, records = prepared
  assert json.loads((data_dir / 'index.json').read_text()) == index == load_index(data_dir)
  assert index['tokenizer']['path'] == str(llama_model_path.resolve())
  assert index['tokenizer']['sha256'] == LLAMA2_SHA256
  assert index['tokenizer']['vocab_size'] == 32000
  assert index['dtype'] == 'uint16'
  train, val = index['splits']['train'], index['splits']['val']
  assert train['num_docs'] + val['num_docs'] == index['num_docs'] == len(corpus_docs)
  assert 5 <= val['num_docs'] <= 30  # val_fraction=0.1 of 150
  for name, info in (('train', train), ('val', val)):
    assert info['num_records'] == info['num_docs'] == len(records[name])
    assert info['num_tokens'] == sum(len(r) for r in records[name])
    assert info['shards'] == [
      f'{name}-{i:05d}.array_record' for i in range(-(-info['num_docs'] // 16))
    ]
    assert all((data_dir / s).is_file() for s in info['shards'])
  assert index['num_tokens'] == train['num_tokens'] + val['num_tokens']
  assert sorted(p.name for p in data_dir.iterdir()) == sorted(
    ['index.json', *train['shards'], *val['shards']]
  )


def test_records_are_documents_plus_eos(prepared, corpus_docs, llama_tokenizer):
  _, _, records = prepared
  expected = [llama_tokenizer.encode(d) + [llama_tokenizer.eos_id] for d in corpus_docs]
  # Each document is in exactly one split, and both splits keep the source order.
  assert sorted(records['train'] + records['val']) == sorted(expected)
  for split in ('train', 'val'):
    positions = [expected.index(r) for r in records[split]]
    assert positions == sorted(positions)
  # Raw record bytes: little-endian uint16 ids.
  reader = array_record_module.ArrayRecordReader(str(prepared[0] / 'train-00000.array_record'))
  raw = reader.read([0])[0]
  reader.close()
  assert np.frombuffer(raw, '<u2').tolist() == records['train'][0]


def test_text_format_paragraphs_bos_and_chunking(tmp_path, llama_tokenizer, llama_model_path):
  src = tmp_path / 'src'
  src.mkdir()
  (src / 'a.txt').write_text('Alpha one.\n\nAlpha two is a somewhat longer paragraph of words.\n')
  (src / 'b.txt').write_bytes(b'Beta \x93quoted\x94.\r\n')
  out = tmp_path / 'out'
  index = prepare(
    str(src),
    format='text',
    tokenizer=llama_model_path,
    output_dir=out,
    text_unit='paragraph',
    val_fraction=0.0,
    add_bos=True,
    max_record_tokens=5,
  )
  docs = [
    'Alpha one.',
    'Alpha two is a somewhat longer paragraph of words.',
    'Beta \u201cquoted\u201d.',
  ]
  ids = [llama_tokenizer.encode(d, add_bos=True, add_eos=True) for d in docs]
  chunks = [c[i : i + 5] for c in ids for i in range(0, len(c), 5)]
  assert [r['tokens'].tolist() for r in split_dataset(out, 'train')] == chunks
  assert index['splits']['train']['num_docs'] == 3
  assert index['splits']['train']['num_records'] == len(chunks)
  assert index['splits']['val'] == {'num_docs': 0, 'num_records': 0, 'num_tokens': 0, 'shards': []}


def test_val_split_gets_a_document_even_when_tiny(tmp_path, llama_model_path):
  src = tmp_path / 'docs.jsonl'
  src.write_text(''.join(json.dumps({'text': f'doc {i}'}) + '\n' for i in range(3)))
  index = prepare(
    str(src),
    format='jsonl',
    tokenizer=llama_model_path,
    output_dir=tmp_path / 'o',
    val_fraction=0.01,
  )
  assert index['splits']['val']['num_docs'] == 1 and index['splits']['train']['num_docs'] == 2


def test_refuses_to_overwrite_without_flag(tmp_path, llama_model_path):
  src = tmp_path / 'a.txt'
  src.write_text('some text')
  out = tmp_path / 'out'
  prepare(str(src), format='text', tokenizer=llama_model_path, output_dir=out)
  with pytest.raises(DataError, match='already holds a prepared dataset; pass --overwrite'):
    prepare(str(src), format='text', tokenizer=llama_model_path, output_dir=out)
  prepare(
    str(src),
    format='text',
    tokenizer=llama_model_path,
    output_dir=out,
    overwrite=True,
    docs_per_shard=1,
  )


def test_empty_corpus_is_an_error(tmp_path, llama_model_path):
  (tmp_path / 'src').mkdir()
  (tmp_path / 'src' / 'blank.txt').write_text(' \n\n\t\n')
  with pytest.raises(EmptyCorpusError, match='has no non-empty documents'):
    prepare(
      str(tmp_path / 'src'), format='text', tokenizer=llama_model_path, output_dir=tmp_path / 'out'
    )
  assert not (tmp_path / 'out').exists()  # nothing written


def test_bad_inputs_are_clear_errors(tmp_path, llama_model_path):
  (tmp_path / 'a.txt').write_text('text')
  with pytest.raises(DataFileNotFoundError, match='tokenizer model not found'):
    prepare(
      str(tmp_path), format='text', tokenizer=tmp_path / 'missing.model', output_dir=tmp_path / 'o'
    )
  with pytest.raises(UnknownFormatError, match="unknown source format 'csv'"):
    prepare(str(tmp_path), format='csv', tokenizer=llama_model_path, output_dir=tmp_path / 'o')
  with pytest.raises(DataFileNotFoundError, match='input not found'):
    prepare(
      str(tmp_path / 'nope'), format='text', tokenizer=llama_model_path, output_dir=tmp_path / 'o'
    )
  with pytest.raises(DataError, match='val_fraction must be in'):
    prepare(
      str(tmp_path),
      format='text',
      tokenizer=llama_model_path,
      output_dir=tmp_path / 'o',
      val_fraction=1.5,
    )


def test_cli_errors_exit_nonzero_with_one_line(tmp_path, llama_model_path, capsys):
  (tmp_path / 'src').mkdir()
  rc = main(
    [
      f'--source={tmp_path / "src"}',
      '--format=text',
      f'--tokenizer={llama_model_path}',
      f'--output_dir={tmp_path / "out"}',
    ]
  )
  err = capsys.readouterr().err.strip()
  assert rc == 2 and err.startswith('prepare: error: no input files') and '\n' not in err
  rc = main(
    [
      f'--source={tmp_path / "src"}',
      '--format=text',
      f'--tokenizer={tmp_path / "x.model"}',
      f'--output_dir={tmp_path / "out"}',
    ]
  )
  assert rc == 2 and 'tokenizer model not found' in capsys.readouterr().err


def test_cli_subprocess_empty_corpus(tmp_path, llama_model_path):
  (tmp_path / 'src').mkdir()
  (tmp_path / 'src' / 'blank.txt').write_text('\n')
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'miras_jax.data.prepare',
      f'--source={tmp_path / "src"}',
      '--format=text',
      f'--tokenizer={llama_model_path}',
      f'--output_dir={tmp_path / "out"}',
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO_ROOT,
    timeout=120,
  )
  assert proc.returncode == 2
  assert 'no non-empty documents' in proc.stderr
  proc = subprocess.run(
    [
      sys.executable,
      '-m',
      'miras_jax.data.prepare',
      '--source=x',
      '--format=xml',
      f'--tokenizer={llama_model_path}',
      f'--output_dir={tmp_path / "out"}',
    ],
    capture_output=True,
    text=True,
    env=env,
    cwd=REPO_ROOT,
    timeout=120,
  )
  assert proc.returncode == 2 and "invalid choice: 'xml'" in proc.stderr


def test_record_dtype():
  assert record_dtype(32000) == 'uint16' and record_dtype(65536) == 'uint16'
  assert record_dtype(65537) == 'int32'
