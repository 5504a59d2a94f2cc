"""The sampling rules (miras_jax/inference/sampling.py) against hand-worked cases and a
numpy reference of the filtered distribution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.inference.sampling import sample, top_k_filter, top_p_filter

LOGITS = jnp.log(jnp.asarray([[0.05, 0.5, 0.15, 0.3], [0.4, 0.1, 0.25, 0.25]]))


def _kept(x):
  return np.isfinite(np.asarray(x))


def test_top_k_keeps_the_k_largest():
  np.testing.assert_array_equal(
    _kept(top_k_filter(LOGITS, 2)), [[False, True, False, True], [True, False, True, True]]
  )  # row 2: a tie with the 2nd largest keeps both
  np.testing.assert_array_equal(_kept(top_k_filter(LOGITS, 1)).sum(-1), [1, 1])
  np.testing.assert_array_equal(top_k_filter(LOGITS, 0), LOGITS)
  np.testing.assert_array_equal(top_k_filter(LOGITS, 4), LOGITS)
  kept = np.asarray(top_k_filter(LOGITS, 2))
  np.testing.assert_array_equal(kept[_kept(kept)], np.asarray(LOGITS)[_kept(kept)])


@pytest.mark.parametrize(
  'p,row0',
  [
    (0.5, [False, True, False, False]),  # 0.5 alone reaches 0.5
    (0.7, [False, True, False, True]),  # 0.5 + 0.3
    (0.85, [False, True, True, True]),  # 0.5 + 0.3 + 0.15 (0.8 < 0.85)
    (0.01, [False, True, False, False]),  # the most probable token always stays
    (1.0, [True, True, True, True]),
  ],
)
def test_top_p_keeps_the_smallest_nucleus(p, row0):
  np.testing.assert_array_equal(_kept(top_p_filter(LOGITS, p))[0], row0)


def test_temperature_zero_is_argmax_and_bad_arguments_raise():
  key = jax.random.key(0)
  np.testing.assert_array_equal(sample(key, LOGITS, temperature=0.0), [1, 0])
  with pytest.raises(ValueError, match='temperature'):
    sample(key, LOGITS, temperature=-1.0)
  with pytest.raises(ValueError, match='top_p'):
    sample(key, LOGITS, top_p=0.0)


def test_sampled_frequencies_follow_the_filtered_distribution():
  """Per-row keys, temperature 0.5, top-k 3, top-p 0.9: the empirical frequencies over 4000
  draws match softmax(logits / T) renormalised over the tokens both filters keep (a numpy
  reference), and no filtered token is ever drawn."""
  n, t, k, p = 4000, 0.5, 3, 0.9
  logits = jnp.tile(LOGITS[:1], (n, 1))
  keys = jax.random.split(jax.random.key(1), n)
  draws = np.asarray(jax.jit(lambda ks, lg: sample(ks, lg, t, k, p))(keys, logits))
  z = np.asarray(LOGITS[0]) / t
  probs = np.exp(z - z.max())
  probs /= probs.sum()
  order = np.argsort(-probs)[:k]  # top-k, then the nucleus of the renormalised top-k
  pk = probs[order] / probs[order].sum()
  keep = order[(np.cumsum(pk) - pk) < p]
  want = np.zeros(4)
  want[keep] = probs[keep] / probs[keep].sum()
  got = np.bincount(draws, minlength=4) / n
  assert set(np.unique(draws)) <= set(keep.tolist())
  np.testing.assert_allclose(got, want, atol=0.03)
