"""The quickstart's eval tasks: ``copy`` and ``copy_fixed`` score the two readings apart
(stand-in scorers that recall perfectly from their context), and the unigram baseline of
``heldout``."""

import math

import numpy as np

from miras_jax.evals.heldout import unigram_log_probs
from miras_jax.evals.synthetic import (
  format_copy,
  format_copy_fixed,
  make_copy,
  make_copy_fixed,
  run_copy,
  run_copy_fixed,
)


class _Copier:
  """Greedy is right exactly where the token already appeared earlier in the continuation
  (an ideal in-context copier that cannot guess anything new)."""

  def __init__(self, max_len):
    self.max_len = max_len

  def token_scores(self, requests):
    out = []
    for ctx, cont in requests:
      assert ctx == [] and len(cont) + 1 <= self.max_len
      m = len(cont) // 2
      greedy = np.array([i >= m for i in range(len(cont))])
      out.append((np.zeros(len(cont)), greedy))
    return out


def test_copy_scores_second_reading_against_first(char_tokenizer):
  data = make_copy(char_tokenizer, 8, samples=4, seed=1)
  assert len(data) == 4 and all(s[-1] == char_tokenizer.encode('.')[0] for s in data)
  assert data != make_copy(char_tokenizer, 8, samples=4, seed=2)
  res = run_copy(_Copier, char_tokenizer, (4, 8), samples=4, seed=1)
  assert res['first_acc'] == {'4': 0.0, '8': 0.0} and res['second_acc'] == {'4': 1.0, '8': 1.0}
  assert res['tokens']['8'] == max(2 * len(s) for s in data)


def test_copy_console_lines_show_trained_against_init():
  res = {'first_acc': {'8': 0.05}, 'second_acc': {'8': 0.9}, 'tokens': {'8': 40}}
  assert format_copy(res).endswith('8 words 5% -> 90%')
  res['init'] = {'first_acc': {'8': 0.0}, 'second_acc': {'8': 0.01}, 'tokens': {'8': 40}}
  lines = format_copy(res).splitlines()
  assert len(lines) == 2 and lines[1] == '  the same model at initialisation: 8 words 0% -> 1%'


class _OffsetCopier:
  """Greedy predicts the token ``offset`` positions back in ``context + continuation`` (the
  rule a model that learnt fixed-offset copying applies everywhere)."""

  def __init__(self, max_len, offset=6):
    self.max_len, self.offset = max_len, offset

  def token_scores(self, requests):
    out = []
    for ctx, cont in requests:
      assert len(ctx) + len(cont) <= self.max_len
      full = list(ctx) + list(cont)
      j = np.arange(len(ctx), len(full))
      pred = np.array([full[i - self.offset] if i >= self.offset else -1 for i in j])
      out.append((np.zeros(len(cont)), pred == np.array(cont)))
    return out


def test_copy_fixed_scores_second_reading_against_first(llama_tokenizer):
  blocks = make_copy_fixed(llama_tokenizer, 6, samples=5, seed=1)
  assert [len(b) for b in blocks] == [13] * 5 and blocks != make_copy_fixed(
    llama_tokenizer, 6, 5, 2
  )
  for b in blocks:  # BOS, then six byte pieces read twice
    assert b[0] == llama_tokenizer.bos_id and b[1:7] == b[7:]
    assert all(llama_tokenizer._sp.IsByte(t) for t in b[1:])
  res = run_copy_fixed(_OffsetCopier(13), llama_tokenizer, 6, samples=5, seed=1)
  assert res == {'first_acc': 0.0, 'second_acc': 1.0, 'length': 6, 'samples': 5}
  wrong = run_copy_fixed(_OffsetCopier(13, 5), llama_tokenizer, 6, samples=5, seed=1)
  assert wrong['second_acc'] < 0.2  # one position off: the copy is at exactly 6 back


def test_copy_fixed_console_lines_show_trained_against_init():
  res = {'first_acc': 0.004, 'second_acc': 0.97, 'length': 8, 'samples': 32}
  res['init'] = {'first_acc': 0.0, 'second_acc': 0.0, 'length': 8, 'samples': 32}
  lines = format_copy_fixed(res).splitlines()
  assert lines[0].startswith('fixed-offset copying (32 blocks of 8 random tokens read twice')
  assert lines[0].endswith(': 0% -> 97%') and lines[1].endswith('initialisation: 0% -> 0%')


def test_unigram_baseline_is_add_one_smoothed():
  logp = unigram_log_probs(np.array([0, 0, 1, 0]), vocab_size=3)
  np.testing.assert_allclose(np.exp(logp), [4 / 7, 2 / 7, 1 / 7])
  assert math.isclose(np.exp(logp).sum(), 1.0)
