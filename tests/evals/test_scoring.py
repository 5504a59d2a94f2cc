"""Scoring on toy models with known answers; batch-size and packing invariance on a real tiny model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.evals.harness import format_table, paper_table, run_tasks
from miras_jax.evals.scoring import (
  Scorer,
  get_rolling_token_windows,
  length_buckets,
  make_disjoint_window,
)
from miras_jax.evals.tasks import LoglikelihoodDoc, MultipleChoiceDoc

V = 256
S = 5.0  # logit of the favoured token
LOGZ = math.log(math.exp(S) + V - 1)
HIT, MISS = S - LOGZ, -LOGZ  # log p of the favoured / any other token


def next_plus_one(params, tokens, segment_ids=None, positions=None):
  """Toy LM: after token t it predicts t + 1 (logit S, others 0)."""
  return params['s'] * jax.nn.one_hot((tokens + 1) % V, V, dtype=jnp.float32)


PARAMS = {'s': jnp.float32(S)}


def test_loglikelihood_known_values(char_tokenizer):
  sc = Scorer(next_plus_one, PARAMS, char_tokenizer, max_len=16, batch_size=2)
  res = sc.loglikelihood([('ab', 'cd'), ('ab', 'cx'), ('a', 'b'), ('', 'ab')])
  assert res[0][0] == pytest.approx(2 * HIT, abs=1e-5) and res[0][1]
  assert res[1][0] == pytest.approx(HIT + MISS, abs=1e-5) and not res[1][1]
  assert res[2][0] == pytest.approx(HIT, abs=1e-5) and res[2][1]
  # empty context: the prefix token (BOS=1) conditions the first token, which is then a miss
  assert res[3][0] == pytest.approx(MISS + HIT, abs=1e-5) and not res[3][1]


def test_with_params_scores_other_parameters_without_recompiling(char_tokenizer):
  sc = Scorer(next_plus_one, PARAMS, char_tokenizer, max_len=16, batch_size=2)
  flat = sc.with_params({'s': jnp.float32(0.0)})  # every logit 0: log p = -log V everywhere
  assert flat._score_plain is sc._score_plain  # the same compiled function
  assert flat.loglikelihood([('ab', 'cd')])[0][0] == pytest.approx(-2 * math.log(V), abs=1e-5)
  assert sc.loglikelihood([('ab', 'cd')])[0][0] == pytest.approx(2 * HIT, abs=1e-5)


def test_trailing_space_moves_to_continuation(char_tokenizer):
  sc = Scorer(next_plus_one, PARAMS, char_tokenizer, max_len=16)
  assert sc.encode_pair('ab ', 'c') == (char_tokenizer.encode('ab'), char_tokenizer.encode(' c'))


def test_left_truncation(char_tokenizer):
  sc = Scorer(next_plus_one, PARAMS, char_tokenizer, max_len=8, batch_size=1)
  # 20 context tokens + 3 continuation tokens: only the last 8 inputs are seen; same answer
  ctx = [10 + i for i in range(20)]
  ((ll, greedy),) = sc.loglikelihood_tokens([(ctx, [30, 31, 32])])
  assert ll == pytest.approx(3 * HIT, abs=1e-5) and greedy


def test_multiple_choice_acc_and_acc_norm(char_tokenizer):
  # choice 0 " bc" is all hits (3 tokens: ' ' is a miss); choice 1 " bcdefgh" has more tokens (lower ll) but
  # the same single miss: per character it is better. gold=1 -> acc 0, acc_norm 1.
  doc = MultipleChoiceDoc([('a', ' bc'), ('a', ' bcdefgh')], ['bc', 'bcdefgh'], 1)
  sc = Scorer(next_plus_one, PARAMS, char_tokenizer, max_len=16)
  ll = [r[0] for r in sc.loglikelihood(doc.requests)]
  assert ll[0] > ll[1]
  assert ll[0] / 2 < ll[1] / 7
  assert doc.metrics(sc.loglikelihood(doc.requests)) == {'acc': 0.0, 'acc_norm': 1.0}


def test_lambada_style_metrics(char_tokenizer):
  docs = [LoglikelihoodDoc([('xyzab', 'cd')]), LoglikelihoodDoc([('xyzab', 'cq')])]
  sc = Scorer(next_plus_one, PARAMS, char_tokenizer, max_len=16)
  m = [d.metrics(sc.loglikelihood(d.requests)) for d in docs]
  assert [x['acc'] for x in m] == [1.0, 0.0]
  assert m[1]['perplexity'] == pytest.approx(HIT + MISS, abs=1e-5)


def test_rolling_windows_match_lm_eval_definition():
  toks = list(range(100, 123))
  wins = [make_disjoint_window(w) for w in get_rolling_token_windows(toks, 1, 8, 1)]
  predicted = [t for _, cont in wins for t in cont]
  assert predicted == toks  # every token predicted exactly once
  assert wins[0] == ([1], toks[:8])
  for ctx, cont in wins[1:]:
    assert len(ctx) + len(cont) - 1 == 8 or cont == toks[-len(cont) :]
  try:
    from lm_eval import utils as lm_utils
  except ImportError:
    return
  ref = [
    lm_utils.make_disjoint_window(w) for w in lm_utils.get_rolling_token_windows(toks, 1, 8, 1)
  ]
  assert ref == wins


def test_rolling_loglikelihood_toy(char_tokenizer):
  sc = Scorer(next_plus_one, PARAMS, char_tokenizer, max_len=4, batch_size=3)
  text = 'abcdefghij'  # consecutive ids: every prediction but the first (after BOS) is a hit
  (ll,) = sc.loglikelihood_rolling([text])
  assert ll == pytest.approx(MISS + 9 * HIT, abs=1e-4)


def test_length_buckets():
  assert length_buckets(100) == [16, 24, 32, 48, 64, 96, 100]
  assert length_buckets(16) == [16]


def test_uniform_model_perplexities_and_table(data_dir, char_tokenizer):
  """A uniform model: every token costs log V, so the perplexities are known in closed form."""

  def uniform(params, tokens, segment_ids=None, positions=None):
    return jnp.zeros(tokens.shape + (V,), jnp.float32)

  sc = Scorer(uniform, {}, char_tokenizer, max_len=64, batch_size=4)
  res = run_tasks(sc, ['lambada', 'wikitext', 'piqa'], data_dir, limit=6)
  from miras_jax.evals.tasks import load_task

  lam = load_task('lambada', data_dir, 6)
  n_cont = [len(d.requests[0][1]) for d in lam]  # one token per character
  assert res['lambada']['perplexity'] == pytest.approx(
    math.exp(np.mean(n_cont) * math.log(V)), rel=1e-4
  )
  wiki = load_task('wikitext', data_dir, 6)
  chars, words = sum(len(d.text) for d in wiki), sum(d.words for d in wiki)
  assert res['wikitext']['word_perplexity'] == pytest.approx(
    math.exp(chars * math.log(V) / words), rel=1e-4
  )
  # piqa: the shorter solution always wins
  piqa = load_task('piqa', data_dir, 6)
  expect = np.mean([float(np.argmin([len(c) for c in d.choices]) == d.gold) for d in piqa])
  # per character, -(len + 1) / len * log V: the longer solution wins
  expect_norm = np.mean([float(np.argmax([len(c) for c in d.choices]) == d.gold) for d in piqa])
  assert res['piqa']['acc'] == pytest.approx(expect) and res['piqa']['acc_norm'] == pytest.approx(
    expect_norm
  )
  table = paper_table(res)
  assert list(table) == ['Wiki. ppl', 'LMB. ppl', 'LMB. acc', 'PIQA acc', 'Avg.']
  assert table['Avg.'] == pytest.approx(
    (100 * res['lambada']['acc'] + 100 * res['piqa']['acc']) / 2
  )
  assert 'Wiki. ppl' in format_table(table)


# ------------------------------------------------------------- a real tiny model
@pytest.fixture(scope='module')
def tiny_moneta():
  from miras_jax.models import build_model
  from miras_jax.models.presets import model_config

  cfg = model_config('moneta', 'tiny')
  model = build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params']
  return cfg, model, params


def _requests(seed=0, n=9, max_ctx=10, max_cont=5):
  rng = np.random.default_rng(seed)
  return [
    (
      list(rng.integers(3, V, rng.integers(1, max_ctx))),
      list(rng.integers(3, V, rng.integers(1, max_cont))),
    )
    for _ in range(n)
  ]


def test_batch_size_and_packing_invariance(tiny_moneta):
  """Same numbers one request per row or packed (segments), at any batch size; memories reset per request."""
  from miras_jax.evals.scoring import make_apply_fn

  cfg, model, params = tiny_moneta
  apply_fn = make_apply_fn(model)
  reqs = _requests()
  # reference: one request alone, unpadded, exactly as lm-eval's HF model would see it (two of them)
  fwd = jax.jit(apply_fn)
  ref_ll = []
  for c, x in reqs[:2]:
    logits = fwd(params, jnp.asarray([(c + x)[:-1]], jnp.int32), None, None)
    logp = np.asarray(jax.nn.log_softmax(logits[0], -1))
    tgt = np.asarray((c + x)[1:])
    ref_ll.append(float(logp[np.arange(len(tgt)), tgt][-len(x) :].sum()))
  runs = {
    'rows_b1': Scorer(apply_fn, params, max_len=16, batch_size=1),
    'rows_b4': Scorer(apply_fn, params, max_len=16, batch_size=4),
    'packed_b2': Scorer(
      apply_fn, params, max_len=16, batch_size=2, pack=True, pack_align=cfg.chunk_size
    ),
  }
  base = None
  for name, sc in runs.items():
    got = [g[0] for g in sc.loglikelihood_tokens(reqs)]
    np.testing.assert_allclose(got[:2], ref_ll, atol=2e-4, err_msg=name)
    if base is None:
      base = got
    np.testing.assert_allclose(got, base, atol=2e-4, err_msg=name)
  packed = runs['packed_b2']
  assert packed.num_batches < runs['rows_b1'].num_batches  # several requests did share rows


@pytest.mark.xfail(
  reason='chunked memory leaks state across a segment start that is not on a chunk boundary '
  '(miras_jax/memory; reported); the scorer aligns packed requests to chunk_size',
  strict=False,
)
def test_packing_unaligned_segments(tiny_moneta):
  from miras_jax.evals.scoring import make_apply_fn

  cfg, model, params = tiny_moneta
  reqs = [(list(range(30, 40)), [40, 41]), ([5, 6, 7, 8], [9, 10])]  # 2nd starts at 11, mid-chunk
  a = Scorer(make_apply_fn(model), params, max_len=16, batch_size=4).loglikelihood_tokens(reqs)
  b = Scorer(
    make_apply_fn(model), params, max_len=16, batch_size=4, pack=True
  ).loglikelihood_tokens(reqs)
  np.testing.assert_allclose([x[0] for x in a], [x[0] for x in b], atol=2e-4)
