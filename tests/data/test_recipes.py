"""The data/ recipes, offline: data/quickstart/prepare.py on local text, data/fineweb_edu/prepare.py
on local parquet and jsonl files (the hub path is the same `prepare` call with format 'hf')."""

import json

import pytest

from miras_jax.data.pipeline import load_index, split_dataset
from tests._scripts import load_file


def _recipe(name: str):
  return load_file(f'data/{name}/prepare.py', f'recipe_{name}')


def _records(data_dir) -> list[list[int]]:
  return [r['tokens'].tolist() for s in ('train', 'val') for r in split_dataset(data_dir, s)]


def test_quickstart_recipe_is_what_the_trainer_reads(tmp_path, tinyshakespeare_path):
  text = tinyshakespeare_path.read_text()
  src = tmp_path / 'texts'
  src.mkdir()
  for i in range(4):  # the quickstart's unit is a file: four documents
    (src / f'part{i}.txt').write_text(text[i * 20_000 : (i + 1) * 20_000])
  out = tmp_path / 'cache'
  recipe = _recipe('quickstart')
  path = recipe.prepare_quickstart(out, source=str(src), vocab_size=400)
  index = load_index(path)
  assert path.parent == out / 'prepared'
  assert index['tokenizer']['vocab_size'] == 400
  assert index['tokenizer']['path'].startswith(str(out / 'tokenizers' / 'spm400-'))
  # The quickstart's options, read from configs/quickstart.py.
  assert index['max_record_tokens'] == 1024 and index['val_fraction'] == 0.05
  assert index['splits']['val']['num_docs'] >= 1 and index['source']['text_unit'] == 'file'
  assert max(len(r) for r in _records(path)) <= 1024
  # The trainer given this folder as its cache finds the same dataset (nothing rebuilt).
  from miras_jax.train.data import resolve_dataset

  stamp = (path / 'index.json').stat().st_mtime_ns
  data = recipe.runpy.run_path(str(recipe.CONFIG))['get_config']().data
  data.corpus, data.cache_dir, data.tokenizer_vocab_size = str(src), str(out), 400
  assert resolve_dataset(data, tmp_path / 'run', model_vocab=2048) == path
  assert (path / 'index.json').stat().st_mtime_ns == stamp


@pytest.mark.parametrize('kind', ['parquet', 'jsonl'])
def test_fineweb_edu_recipe_offline(tmp_path, kind, corpus_docs, llama_model_path, llama_tokenizer):
  src = tmp_path / 'fineweb'
  src.mkdir()
  rows = [{'text': d, 'id': f'<urn:{i}>', 'score': 3.5} for i, d in enumerate(corpus_docs)]
  if kind == 'parquet':
    import pyarrow as pa
    import pyarrow.parquet as pq

    for part in range(2):  # two shards, read in name order
      pq.write_table(
        pa.Table.from_pylist(rows[part * 75 : part * 75 + 75]), src / f'{part}.parquet'
      )
  else:
    (src / 'rows.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  encoded = [llama_tokenizer.encode(r['text']) + [llama_tokenizer.eos_id] for r in rows]
  # Documents are encoded 64 at a time; the budget is reached inside the second batch.
  budget = sum(len(e) for e in encoded[:70])
  recipe = _recipe('fineweb_edu')
  out = recipe.prepare_fineweb_edu(
    'tiny', str(llama_model_path), tmp_path / 'out', tokens=budget, source=str(src)
  )
  assert out == tmp_path / 'out' / 'tiny'
  index = load_index(out)
  assert index['tokenizer']['vocab_size'] == 32000 and index['dtype'] == 'uint16'
  assert index['source']['format'] == kind and index['source']['max_tokens'] == budget
  assert index['splits']['val']['num_docs'] >= 1
  # The first 128 documents (two batches), in Llama-2 ids, each once; the rest not read.
  assert sorted(_records(out)) == sorted(encoded[:128])
  assert index['num_tokens'] == sum(len(e) for e in encoded[:128]) >= budget
  # A complete output is kept: the second call writes nothing.
  stamp = (out / 'index.json').stat().st_mtime_ns
  recipe.prepare_fineweb_edu('tiny', str(llama_model_path), tmp_path / 'out', source=str(src))
  assert (out / 'index.json').stat().st_mtime_ns == stamp


def test_fineweb_edu_sizes_and_errors(tmp_path):
  recipe = _recipe('fineweb_edu')
  assert recipe.hub_sample(5e6) == 'sample-10BT'  # tiny
  assert recipe.hub_sample(15e9) == 'sample-100BT'  # 170m, 340m
  assert recipe.hub_sample(100e9) == 'sample-350BT'  # 1.3b: Llama-2 splits finer than GPT-2
  with pytest.raises(SystemExit, match='unknown --size'):
    recipe.prepare_fineweb_edu('7b', 'x', tmp_path)
  with pytest.raises(SystemExit, match='no Llama-2 tokenizer.model'):
    recipe.prepare_fineweb_edu('170m', str(tmp_path / 'missing.model'), tmp_path)
  (tmp_path / 'a.txt').write_text('x')
  with pytest.raises(SystemExit, match='must hold .parquet or .jsonl'):
    recipe.local_format(str(tmp_path))
