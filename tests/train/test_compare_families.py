"""scripts/compare_families.py's ``--before`` merge (a partial rerun beside an earlier result)."""

import argparse
import json

import pytest

from tests._scripts import load_file


def _script():
  return load_file('scripts/compare_families.py')


def _row(family, loss):
  return {
    'family': family,
    'params': 2000,
    'non_embedding': 1000,
    'mlp_dim': 8,
    'val_loss': loss,
    'tokens_per_s': 10.0,
    'wall_s': 1.0,
    'train_curve': [],
  }


def test_rerun_rows_replace_and_keep_the_earlier_loss_as_before():
  mod = _script()
  before = [_row('moneta', 6.0), _row('yaad', 7.5), _row('transformer', 5.5)]
  rows = mod.merge(before, [_row('yaad', 6.5)])
  assert [r['family'] for r in rows] == ['moneta', 'yaad', 'transformer']
  assert [(r['val_loss'], r['before_val_loss'], r['rerun']) for r in rows] == [
    (6.0, 6.0, False),
    (6.5, 7.5, True),
    (5.5, 5.5, False),
  ]
  lines = mod.table(rows).splitlines()
  assert lines[0].startswith('| family | params | non-embedding | MLP | before | val loss |')
  assert lines[3].startswith('| Yaad | 2K | 1.0K | 8 | 7.5000 | 6.5000 |')
  assert lines[2].startswith('| Moneta (not rerun) |')
  # A merge of a merged file keeps the first "before".
  assert mod.merge(rows, [_row('yaad', 6.4)])[1]['before_val_loss'] == 7.5


def test_before_file_must_be_a_result_at_the_same_setting(tmp_path):
  mod = _script()
  args = argparse.Namespace(d_model=64, n_layers=2, vocab=2048, seq_len=1024, chunk=32, batch=4)
  args.__dict__.update(steps=60, lr=3e-3, eval_batches=4, match=0.1, corpus='default')
  good = tmp_path / 'a.json'
  good.write_text(json.dumps({'args': dict(vars(args)), 'results': [_row('yaad', 7.5)]}))
  assert mod.load_before(str(good), args)[0]['val_loss'] == 7.5
  args.steps = 61
  with pytest.raises(ValueError, match=r'different setting \(steps\)'):
    mod.load_before(str(good), args)
  bad = tmp_path / 'b.json'
  bad.write_text('{}')
  with pytest.raises(ValueError, match='not a result file'):
    mod.load_before(str(bad), args)
