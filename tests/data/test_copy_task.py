"""The fixed-offset copy task mixed into training (miras_jax/data/copy_task.py): block layout,
the rows the pipeline appends, and an exact resume."""

import json
from pathlib import Path

import numpy as np
import pytest

from miras_jax.data.copy_task import copy_alphabet, copy_batch, copy_block
from miras_jax.data.errors import DataError
from miras_jax.data.pipeline import make_train_iterator
from miras_jax.data.train_tokenizer import train_tokenizer

SEQ, BATCH = 32, 4


def test_alphabet_is_the_byte_pieces(llama_tokenizer):
  ids = copy_alphabet(llama_tokenizer.path)
  assert len(ids) == 256 and np.all(np.diff(ids) == 1)
  sp_pieces = [llama_tokenizer._sp.IdToPiece(int(i)) for i in (ids[0], ids[-1])]
  assert sp_pieces == ['<0x00>', '<0xFF>']


def test_block_and_rows_train_only_the_second_reading():
  rng = np.random.default_rng(0)
  b = copy_block(rng, np.arange(10, 20), 5, marker=1)
  assert len(b) == 11 and b[0] == 1 and b[1:6] == b[6:] and set(b[1:]) <= set(range(10, 20))
  out = copy_batch(np.random.default_rng(1), 3, 22, np.arange(10, 20), 5, marker=1)
  assert all(v.shape == (3, 22) for v in out.values())
  for r in range(3):  # two blocks of 10 input positions, then padding
    np.testing.assert_array_equal(out['segment_ids'][r], [1] * 10 + [2] * 10 + [0, 0])
    np.testing.assert_array_equal(out['positions'][r, :20], np.tile(np.arange(10), 2))
    for j in (0, 10):
      assert out['inputs'][r, j] == 1
      np.testing.assert_array_equal(out['inputs'][r, j + 1 : j + 10], out['targets'][r, j : j + 9])
      mask = out['loss_mask'][r, j : j + 10]
      np.testing.assert_array_equal(mask, [0] * 5 + [1] * 5)
      # every trained target is the input 5 positions back: the same token of the first reading
      t = out['targets'][r, j + 5 : j + 10]
      np.testing.assert_array_equal(t, out['inputs'][r, j + 1 : j + 6])
    assert out['loss_mask'][r, 20:].sum() == 0
  with pytest.raises(DataError, match='do not fit'):
    copy_batch(rng, 1, 9, np.arange(10, 20), 5, marker=1)


def _it(data_dir, **kw):
  args = dict(seq_len=SEQ, batch_size=BATCH, seed=7, process_index=0, process_count=1)
  return make_train_iterator(data_dir, **{**args, **kw})


def test_pipeline_appends_copy_rows_and_resumes_exactly(prepared):
  data_dir, index, _ = prepared
  text, mixed = _it(data_dir, batch_size=3), _it(data_dir, copy_rows=1)
  state = None
  batches = []
  for step in range(4):
    if step == 2:
      state = json.loads(json.dumps(mixed.get_state()))
    t, m = next(text), next(mixed)
    batches.append(m)
    for k in t:  # the text rows are the text-only stream's; one copy row after them
      np.testing.assert_array_equal(m[k][:3], t[k], err_msg=k)
    alphabet = set(copy_alphabet(index['tokenizer']['path']).tolist())
    row = m['inputs'][3]
    assert row[0] == index['tokenizer']['bos_id'] and set(row[1:9].tolist()) <= alphabet
    assert m['loss_mask'][3].sum() == 2 * 8  # two blocks of 8, second readings only
  assert not np.array_equal(batches[0]['inputs'][3], batches[1]['inputs'][3])
  restored = _it(data_dir, copy_rows=1)
  restored.set_state(state)
  for want in batches[2:]:
    got = next(restored)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
  with pytest.raises(DataError, match='copy_rows: saved 1, now None'):
    _it(data_dir).set_state(state)
  with pytest.raises(DataError, match=r'copy_rows=4 must be in \[0, batch_size=4\)'):
    _it(data_dir, copy_rows=4)


@pytest.fixture
def no_byte_tokenizer(tmp_path) -> tuple[str, Path]:
  """(tokenizer path, its training text): a toy 40-piece vocabulary trained without byte
  fallback (as ``--no-byte_fallback`` gives), so it has no ``<0x..>`` pieces (0.02 s)."""
  words = 'the quick brown fox jumps over the lazy dog'.split()
  lines = [' '.join(words[i:] + words[:i]) for i in range(len(words))] * 20
  text = tmp_path / 'text.txt'
  text.write_text('\n'.join(lines))
  path = train_tokenizer(str(text), tmp_path / 'tok', 40, byte_fallback=False, progress=False)
  return path, text


def test_alphabet_of_a_tokenizer_without_byte_pieces_is_a_one_line_error(no_byte_tokenizer):
  # `python -m miras_jax.train` prints a DataError as its one-line error (train/__main__.py), so
  # the function's message is what the user sees
  path, _ = no_byte_tokenizer
  with pytest.raises(DataError, match='byte-fallback pieces') as e:
    copy_alphabet(path)
  message = str(e.value)
  assert path in message and 'train the tokenizer with byte_fallback' in message
  assert '\n' not in message


def _files(root: Path) -> dict[str, int]:
  return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob('*')}


def test_trainer_refuses_bad_data_before_writing_anything(
  tmp_path, no_byte_tokenizer, monkeypatch, capsys
):
  """`python -m miras_jax.train` with data.copy_fraction > 0 and that tokenizer: exit 2, the
  one line, and the workdir as it was (absent, or the same files and mtimes), for a prepared
  directory and for raw text with data.tokenizer (whose cache would go into the workdir). The
  pipeline only raises it at the first batch, after the model's init and config.json; so too
  its other errors (here: more data shards than records). A tokenizer with more pieces than the
  model's vocab_size (given, or to be trained: data.tokenizer_vocab_size) was refused only after
  the raw text was prepared into <workdir>/data; an empty corpus left empty cache folders."""
  from miras_jax.data.prepare import prepare
  from miras_jax.train import __main__ as cli
  from miras_jax.train.defaults import family_config

  tok, text = no_byte_tokenizer
  prepared = tmp_path / 'prepared'
  prepare(str(text), format='text', tokenizer=tok, output_dir=prepared, log_every_docs=0)
  blank = tmp_path / 'blank.txt'
  blank.write_text('\n \n')
  monkeypatch.setattr(cli, '_maybe_initialize_distributed', lambda: None)  # flags not parsed

  def run(workdir, expect, vocab=64, **data):
    c = family_config('transformer', 'tiny')
    c.model.vocab_size = vocab
    c.train.update(steps=2, batch_size=4, seq_len=32, compute_dtype='float32')
    c.data.update(data)
    status = cli.run(c, str(workdir))
    out, err = capsys.readouterr()
    err = [l for l in err.splitlines() if l.strip()]
    assert status == 2 and len(err) == 1 and err[0].startswith(cli.PROG), (status, err)
    assert expect in err[0], err
    return out

  existing = tmp_path / 'existing'
  (existing / 'notes').mkdir(parents=True)
  (existing / 'notes' / 'a.txt').write_text('mine')
  before = _files(existing)
  no_alphabet = f'{tok!r} has none (train the tokenizer with byte_fallback)'
  one_record = "split 'train' has 1 records, fewer than process_count=2"  # one document
  too_big = "tokenizer vocabulary (40) is larger than the model's vocab_size (32)"
  to_train = "data.tokenizer_vocab_size (300) is larger than the model's vocab_size (64)"
  no_docs = 'has no non-empty documents'  # (found when preparing; it left empty folders)
  no_copy = {'copy_fraction': 0.0}
  for workdir in (tmp_path / 'new' / 'run', existing):
    for corpus, expect, extra in [
      (prepared, no_alphabet, {}),
      (text, no_alphabet, {'tokenizer': tok}),  # raw: nothing prepared
      (prepared, one_record, {**no_copy, 'shards': 2}),
      (text, one_record, {**no_copy, 'shards': 2, 'tokenizer': tok, 'max_record_tokens': 0}),
      (text, too_big, {**no_copy, 'tokenizer': tok, 'vocab': 32}),
      (text, to_train, {**no_copy, 'tokenizer_vocab_size': 300}),
      (blank, no_docs, {**no_copy, 'tokenizer': tok}),
    ]:
      out = run(workdir, expect, corpus=str(corpus), **{'copy_fraction': 0.25, **extra})
      # refused before any tokenizer training or preparing, unless only preparing can show it
      assert ('data: preparing' in out) == (expect in (one_record, no_docs) and corpus != prepared)
      assert not (tmp_path / 'new').exists(), (corpus, workdir, extra)
      assert _files(existing) == before, (corpus, workdir, extra)


def _copy_rows_of(batch, length=8):
  """Which rows are copy-task rows, from their content: every block's trained targets are its
  first reading, and only those (two blocks of ``length`` a row at SEQ=32)."""
  span = 2 * length
  out = []
  for r in range(len(batch['inputs'])):
    x, y, mask = batch['inputs'][r], batch['targets'][r], batch['loss_mask'][r]
    blocks = [
      np.array_equal(y[j + length : j + span], x[j + 1 : j + length + 1])
      and mask[j : j + length].sum() == 0
      for j in range(0, SEQ, span)
    ]
    out.append(all(blocks) and mask.sum() == SEQ // 2)
  return np.array(out)


def test_copy_rows_are_spread_evenly_over_equal_batch_slices(prepared):
  """Each of N equal slices of a batch (the devices of a data-parallel step) holds the same
  number of copy rows; the other rows are the text-only stream's, in order; a resume is exact."""
  data_dir, _, _ = prepared
  for batch, copy, slices in [(8, 4, (2, 4)), (8, 2, (2,)), (12, 3, (3,)), (6, 1, ())]:
    text = _it(data_dir, batch_size=batch - copy)
    mixed = _it(data_dir, batch_size=batch, copy_rows=copy)
    for _ in range(2):
      t, m = next(text), next(mixed)
      is_copy = _copy_rows_of(m)
      assert is_copy.sum() == copy and not _copy_rows_of(t).any(), (batch, copy, is_copy)
      for k in t:
        np.testing.assert_array_equal(m[k][~is_copy], t[k], err_msg=k)
      for n in slices:
        counts = is_copy.reshape(n, batch // n).sum(1)
        assert counts.tolist() == [copy // n] * n, (batch, copy, n, is_copy)
    state = json.loads(json.dumps(mixed.get_state()))
    want = next(mixed)
    restored = _it(data_dir, batch_size=batch, copy_rows=copy)
    restored.set_state(state)
    got = next(restored)
    for k in want:
      np.testing.assert_array_equal(got[k], want[k], err_msg=k)
