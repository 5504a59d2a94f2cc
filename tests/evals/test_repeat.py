"""The ``repeat`` task (evals/repeat.py): passages cut from the validation documents, and the
two readings' loss / accuracy checked against a forward pass of a toy LM computed here."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.evals.repeat import format_repeat, repeat_scores, repeat_segments
from miras_jax.evals.scoring import Scorer


def test_segments_are_disjoint_windows_of_each_document():
  docs = [np.arange(10), np.arange(100, 103), np.arange(200, 209)]
  segs = repeat_segments(iter(docs), 4, count=4)
  # doc 0 gives two windows (its last 2 tokens are skipped), doc 1 none, doc 2 two
  assert segs == [[0, 1, 2, 3], [4, 5, 6, 7], [200, 201, 202, 203], [204, 205, 206, 207]]
  assert repeat_segments(docs, 4, count=1) == [[0, 1, 2, 3]]


def toy_lm(params, tokens, segment_ids=None, positions=None):
  """A random two-token-context LM: logits = A[t] + B[t_prev] (per-position losses all differ)."""
  prev = jnp.pad(tokens, ((0, 0), (1, 0)))[:, :-1]
  return params['a'][tokens] + params['b'][prev]


def test_readings_scored_on_their_own_positions(char_tokenizer):
  k1, k2 = jax.random.split(jax.random.key(3))
  params = {'a': 3 * jax.random.normal(k1, (256, 256)), 'b': 3 * jax.random.normal(k2, (256, 256))}
  rng = np.random.default_rng(0)
  segs = [list(rng.integers(3, 256, 7)) for _ in range(3)]
  res = repeat_scores(Scorer(toy_lm, params, char_tokenizer, max_len=16, batch_size=2), segs)

  # By hand: the sequence [BOS, s, s]; logits at input position j predict token j + 1, so the
  # first reading's tokens 1..6 are predicted at positions 1..6, the second's at 8..13.
  x = jnp.array([[char_tokenizer.bos_id, *s, *s] for s in segs], jnp.int32)
  logp = np.asarray(jax.nn.log_softmax(toy_lm(params, x), -1), np.float64)
  pred = np.take_along_axis(logp[:, :-1], np.asarray(x[:, 1:])[..., None], -1)[..., 0]
  hit = np.asarray(np.argmax(logp[:, :-1], -1) == np.asarray(x[:, 1:]), np.float64)
  first, second = np.arange(1, 7), np.arange(8, 14)
  assert res['first_loss'] == pytest.approx(-pred[:, first].mean(), rel=1e-5)
  assert res['second_loss'] == pytest.approx(-pred[:, second].mean(), rel=1e-5)
  assert res['first_acc'] == pytest.approx(hit[:, first].mean())
  assert res['second_acc'] == pytest.approx(hit[:, second].mean())
  assert (res['passages'], res['length']) == (3, 7)
  assert 'loss' in format_repeat({'trained': res, 'init': res})
  with pytest.raises(ValueError, match='does not fit'):
    repeat_scores(Scorer(toy_lm, params, char_tokenizer, max_len=13), segs)
