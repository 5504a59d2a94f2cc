"""grain pipeline: packing contract, determinism, per-process sharding, checkpoint/restore, val."""

import json

import numpy as np
import pytest

from miras_jax.data.errors import DataError, DataFileNotFoundError
from miras_jax.data.pipeline import BATCH_KEYS, load_index, make_train_iterator, make_val_iterator
from miras_jax.data.prepare import prepare

SEQ, BATCH, EOS = 32, 4, 2


def train_iter(data_dir, **kw):
  args = dict(seq_len=SEQ, batch_size=BATCH, seed=7, process_index=0, process_count=1)
  args.update(kw)
  return make_train_iterator(data_dir, **args)


def take(it, n):
  return [next(it) for _ in range(n)]


def rows(batches):
  """Full packed rows (seq_len + 1 tokens) of a list of batches, in stream order."""
  for b in batches:
    for inputs, targets in zip(b['inputs'], b['targets']):
      yield np.append(inputs, targets[-1])


def stream_documents(batches):
  """Split the concatenated token stream back into documents (each ends with EOS).

  Padding (id 0, never produced by the Llama-2 tokenizer) can only trail the stream.
  """
  stream = np.concatenate(list(rows(batches)))
  stream = np.trim_zeros(stream, 'b')
  assert stream[-1] == EOS
  ends = np.flatnonzero(stream == EOS) + 1
  return [stream[s:e].tolist() for s, e in zip(np.r_[0, ends[:-1]], ends)]


def assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_round_trip_tokens_out_equal_tokens_in(prepared):
  data_dir, _, records = prepared
  it = train_iter(data_dir, shuffle=False, num_epochs=1, batch_size=1)
  assert stream_documents(list(it)) == records['train']


def test_batch_shapes_and_dtypes(prepared):
  batch = next(train_iter(prepared[0]))
  assert set(batch) == set(BATCH_KEYS)
  for k in BATCH_KEYS:
    assert batch[k].shape == (BATCH, SEQ), k
    assert batch[k].dtype == (np.float32 if k == 'loss_mask' else np.int32), k


def test_packing_invariants(prepared):
  batches = take(train_iter(prepared[0]), 40)
  n_continued = 0
  for b in batches:
    np.testing.assert_array_equal(b['targets'][:, :-1], b['inputs'][:, 1:])
    for inputs, seg, pos, mask in zip(
      b['inputs'], b['segment_ids'], b['positions'], b['loss_mask']
    ):
      assert seg[0] == 1 and pos[0] == 0
      steps = np.diff(seg)
      assert set(steps.tolist()) <= {0, 1}  # 1, 2, 3, ... in order, no padding mid-stream
      new_segment = np.r_[True, steps == 1]
      expected_pos = np.zeros(SEQ, np.int32)
      for t in range(1, SEQ):
        expected_pos[t] = 0 if new_segment[t] else expected_pos[t - 1] + 1
      np.testing.assert_array_equal(pos, expected_pos)
      np.testing.assert_array_equal(mask[:-1], (seg[1:] == seg[:-1]).astype(np.float32))
      # A segment ending inside the row ends with its document's EOS; the EOS -> next
      # document transition is not a training target.
      ends = np.flatnonzero(steps == 1)
      assert np.all(inputs[ends] == EOS) and np.all(mask[ends] == 0)
    # Rows not ending in EOS cut a document, which continues in the next row (checked
    # token for token by the round-trip test) as segment 1 from position 0 (checked above).
    n_continued += sum(int(row[-1] != EOS) for row in rows([b]))
  assert n_continued > 0  # the corpus has documents longer than a row


def test_loss_mask_counts(prepared):
  # Over one shuffled epoch, masked-in targets = tokens - (one boundary per document) - (one per row).
  data_dir, index, _ = prepared
  batches = list(train_iter(data_dir, num_epochs=1, batch_size=1))
  n_tokens = index['splits']['train']['num_tokens']
  n_docs = index['splits']['train']['num_docs']
  n_rows = len(batches)
  assert n_rows == -(-n_tokens // (SEQ + 1))
  total = sum(float(b['loss_mask'].sum()) for b in batches)
  # Row boundaries lose the (last token, next row's first token) pair, document ends
  # lose EOS -> next document. Both can coincide, hence the range.
  assert n_tokens - n_docs - n_rows <= total <= n_tokens - n_rows


def test_deterministic_given_seed(prepared):
  data_dir = prepared[0]
  a, b = take(train_iter(data_dir, seed=3), 12), take(train_iter(data_dir, seed=3), 12)
  assert_batches_equal(a, b)
  c = take(train_iter(data_dir, seed=4), 12)
  assert any(not np.array_equal(x['inputs'], y['inputs']) for x, y in zip(a, c))


def test_each_epoch_is_a_new_permutation(prepared):
  data_dir, _, records = prepared
  docs = stream_documents(list(train_iter(data_dir, num_epochs=2, batch_size=1)))
  n = len(records['train'])
  first, second = docs[:n], docs[n:]
  assert sorted(first) == sorted(second) == sorted(records['train'])
  assert first != records['train'] and first != second


@pytest.mark.parametrize('process_count', [2, 3])
def test_processes_read_disjoint_documents(prepared, process_count):
  data_dir, _, records = prepared
  per_process = [
    stream_documents(
      list(
        train_iter(
          data_dir, num_epochs=1, batch_size=1, process_index=p, process_count=process_count
        )
      )
    )
    for p in range(process_count)
  ]
  keys = [{tuple(d) for d in docs} for docs in per_process]
  for i in range(process_count):
    assert len(keys[i]) == len(per_process[i])
    for j in range(i):
      assert not keys[i] & keys[j]
  assert sorted(d for docs in per_process for d in docs) == sorted(records['train'])
  sizes = [len(d) for d in per_process]
  assert max(sizes) - min(sizes) <= 1


def test_state_restore_gives_identical_next_batches(prepared):
  data_dir, index, _ = prepared
  batches_per_epoch = index['splits']['train']['num_tokens'] // ((SEQ + 1) * BATCH)
  checkpoints = [
    0,
    1,
    2,
    5,
    13,
    batches_per_epoch - 1,
    batches_per_epoch + 3,
  ]  # includes an epoch boundary
  ref = train_iter(data_dir)
  states, produced = {}, []
  for step in range(max(checkpoints) + 6):
    if step in checkpoints:
      states[step] = json.loads(json.dumps(ref.get_state()))  # as a checkpoint stores it
    produced.append(next(ref))
  for step, state in states.items():
    restored = train_iter(data_dir)
    restored.set_state(state)
    assert_batches_equal(take(restored, 6), produced[step : step + 6])


def test_state_from_other_pipeline_is_rejected(prepared):
  data_dir = prepared[0]
  it = train_iter(data_dir)
  next(it)
  state = it.get_state()
  other = train_iter(data_dir, seed=8)
  with pytest.raises(DataError, match='different data pipeline .*seed: saved 7, now 8'):
    other.set_state(state)
  with pytest.raises(DataError, match='process_count: saved 1, now 2'):
    train_iter(data_dir, process_count=2).set_state(state)
  with pytest.raises(DataError, match='not a miras_jax data-iterator state'):
    it.set_state({'next_index': 3})


def test_val_iterator(prepared):
  data_dir, _, records = prepared
  val = list(
    make_val_iterator(data_dir, seq_len=SEQ, batch_size=BATCH, process_index=0, process_count=1)
  )
  again = list(
    make_val_iterator(data_dir, seq_len=SEQ, batch_size=BATCH, process_index=0, process_count=1)
  )
  assert_batches_equal(val, again)  # repeatable
  assert all(b['inputs'].shape == (BATCH, SEQ) for b in val)  # last batch padded to full size
  assert stream_documents(val) == records['val']  # stored order, nothing lost
  last = val[-1]
  assert np.all(last['loss_mask'][last['segment_ids'] == 0] == 0)
  n_val_tokens = sum(len(r) for r in records['val'])
  n_rows = -(-n_val_tokens // (SEQ + 1))  # ceil division
  assert len(val) == -(-n_rows // BATCH)


def test_val_iterator_fixed_batch_count_and_sharding(prepared):
  data_dir, _, records = prepared
  kw = dict(seq_len=SEQ, batch_size=BATCH, process_count=2)
  parts = [
    list(make_val_iterator(data_dir, process_index=p, num_batches=50, **kw)) for p in range(2)
  ]
  assert [len(p) for p in parts] == [50, 50]
  assert float(parts[0][-1]['loss_mask'].sum()) == 0.0  # padding batches
  docs = [stream_documents(p) for p in parts]
  assert docs[0] == records['val'][0::2] and docs[1] == records['val'][1::2]
  assert len(list(make_val_iterator(data_dir, process_index=0, num_batches=1, **kw))) == 1


def test_pipeline_errors(prepared, tmp_path, llama_model_path):
  data_dir, index, _ = prepared
  with pytest.raises(DataFileNotFoundError, match='no prepared dataset at'):
    make_train_iterator(
      tmp_path / 'nothing', seq_len=SEQ, batch_size=BATCH, process_index=0, process_count=1
    )
  with pytest.raises(DataError, match='fewer than process_count'):
    train_iter(data_dir, process_count=10_000, process_index=0)
  with pytest.raises(DataError, match='bad process layout'):
    train_iter(data_dir, process_index=2, process_count=2)
  with pytest.raises(DataError, match='seq_len and batch_size must be positive'):
    train_iter(data_dir, seq_len=0)
  (tmp_path / 'a.txt').write_text('only train')
  out = tmp_path / 'noval'
  prepare(
    str(tmp_path / 'a.txt'),
    format='text',
    tokenizer=llama_model_path,
    output_dir=out,
    val_fraction=0,
  )
  with pytest.raises(DataError, match="split 'val' .* is empty"):
    make_val_iterator(out, seq_len=SEQ, batch_size=BATCH, process_index=0, process_count=1)
  assert load_index(out)['splits']['train']['num_docs'] == 1


def test_orbax_checkpoint_round_trip(prepared, tmp_path):
  ocp = pytest.importorskip('orbax.checkpoint', reason='orbax-checkpoint not installed')
  import grain

  data_dir = prepared[0]
  it = train_iter(data_dir)
  take(it, 9)
  with ocp.CheckpointManager(tmp_path / 'ckpt', item_names=('data',)) as mgr:
    mgr.save(9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
    mgr.wait_until_finished()
    expected = take(it, 4)
    restored = train_iter(data_dir)
    mgr.restore(9, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
  assert_batches_equal(take(restored, 4), expected)
