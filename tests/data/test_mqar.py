"""The token-level MQAR generator (miras_jax/data/mqar.py) and scripts/mqar_study.py's machinery."""

import json

import numpy as np
import pytest

from miras_jax.data.mqar import make_mqar_batch, mqar_chance, seen_value_guess
from tests._scripts import load_file


def test_answers_are_the_values_bound_to_the_queried_keys():
  b = make_mqar_batch(np.random.default_rng(3), batch=8, seq_len=96, num_pairs=12, vocab_size=64)
  x, y, m = b['inputs'], b['targets'], b['loss_mask']
  assert x.shape == y.shape == m.shape == (8, 96)
  for row in range(8):
    # Read the pairs back from the tokens themselves (not from the generator's arrays).
    bound = {int(x[row, 2 * i]): int(x[row, 2 * i + 1]) for i in range(12)}
    assert len(bound) == 12  # distinct keys
    assert all(1 <= k < 32 for k in bound) and all(32 <= v < 64 for v in bound.values())
    pos = np.flatnonzero(m[row])
    assert len(pos) == 12 and pos.min() >= 24 and np.all((pos - 24) % 2 == 0)
    assert sorted(int(x[row, p]) for p in pos) == sorted(bound)  # every key queried once
    for p in pos:
      assert y[row, p] == bound[int(x[row, p])]
  assert mqar_chance(64) == 1 / 32


def test_generator_rejects_impossible_sizes():
  with pytest.raises(ValueError, match='seq_len'):
    make_mqar_batch(np.random.default_rng(0), 1, 30, 8, 256)
  with pytest.raises(ValueError, match='vocabulary'):
    make_mqar_batch(np.random.default_rng(0), 1, 256, 40, 64)


def test_study_script_trains_scores_and_writes_its_outputs(tmp_path, capsys):
  mod = load_file('scripts/mqar_study.py')
  argv = '--families=transformer --widths=16 --seq_len=16 --pairs=2,4 --vocab=32 --steps=2'
  argv += f' --batch=4 --eval_examples=4 --out_dir={tmp_path} --name=t'
  assert mod.main(argv.split()) == 0
  res = json.loads((tmp_path / 't.json').read_text())['results']
  assert [(r['family'], r['width']) for r in res] == [('transformer', 16)]
  assert set(res[0]['acc']) == {'2', '4'} and all(0 <= a <= 1 for a in res[0]['acc'].values())
  assert (tmp_path / 't.png').stat().st_size > 0
  assert '| Transformer++ | 16 |' in (tmp_path / 't.md').read_text()
  assert '| Transformer++ | 16 |' in capsys.readouterr().out
  assert mod.main(['--families=nope', f'--out_dir={tmp_path}']) == 2
  # --resume keeps the runs already there and trains only the rest (here: none).
  before = (tmp_path / 't.json').read_text()
  assert mod.main([*argv.split(), '--resume=1']) == 0
  assert json.loads((tmp_path / 't.json').read_text())['results'] == json.loads(before)['results']
  assert mod.main([*argv.split(), '--resume=1', '--steps=3']) == 2  # another setting
  assert 'another setting (steps)' in capsys.readouterr().err


def test_table_gathers_the_per_pair_count_runs_of_a_model_in_one_row():
  mod = load_file('scripts/mqar_study.py')

  def run(f, w, n, a, lr=3e-3):
    return {'family': f, 'width': w, 'lr': lr, 'params': 1000 * w, 'acc': {str(n): a}}

  # --per_pairs order: every model at 4 pairs, then at 8; deltanet at 8 not run yet.
  runs = [run('transformer', 16, 4, 0.5), run('deltanet', 16, 4, 0.25)]
  runs += [run('transformer', 32, 4, 0.75), run('transformer', 16, 8, 0.125, 1e-3)]
  rows = mod.grid(runs)
  assert list(rows) == [('transformer', 16), ('deltanet', 16), ('transformer', 32)]
  assert rows[('transformer', 16)]['acc'] == {'4': 0.5, '8': 0.125}
  lines = mod.table(runs, [4, 8], 0.1).splitlines()
  assert lines[2] == '| Transformer++ | 16 | 16K | 0.500 | 0.125 | 0.001, 0.003 |'
  assert lines[3] == '| DeltaNet | 16 | 16K | 0.250 |  | 0.003 |'
  assert lines[4] == '| Transformer++ | 32 | 32K | 0.750 |  | 0.003 |'
  with_guess = mod.table(runs, [4, 8], 0.1, guess=[0.25, 0.125]).splitlines()
  assert with_guess[5] == '| (no recall: a guess among the values read) | | | 0.250 | 0.125 | |'


def test_seen_value_guess_counts_the_values_read_before_each_query():
  # vocabulary 8: keys [1, 4), values [4, 8). Pairs 1->5, 2->6, then a filler value 7, then the
  # queries: at position 5 the values read are {5, 6, 7} (1/3); at 7 also {5, 6, 7} (3 is a key).
  inputs = np.array([[1, 5, 2, 6, 7, 1, 3, 2]])
  targets = np.zeros_like(inputs)
  mask = np.zeros(inputs.shape, np.float32)
  targets[0, [5, 7]], mask[0, [5, 7]] = [5, 6], 1.0
  batch = {'inputs': inputs, 'targets': targets, 'loss_mask': mask}
  assert seen_value_guess(batch, 8) == pytest.approx(1 / 3)
  targets[0, 7] = 4  # a value never read scores nothing
  assert seen_value_guess(batch, 8) == pytest.approx(1 / 6)
  # On generated rows: above chance (queries come soon after the pairs), below 1 / pairs.
  b = make_mqar_batch(np.random.default_rng(0), 64, 64, 4, 256)
  g = seen_value_guess(b, 256)
  assert mqar_chance(256) < g < 1 / 4
