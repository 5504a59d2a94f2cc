"""Token-level multi-query associative recall (MQAR), the Zoology protocol.

Arora et al. 2023, "Zoology: Measuring and Improving Recall in Efficient Language Models", §3.1
and App. E (their generator: ``zoology/data/associative_recall.py``, ``multiquery_ar``). One
example of length ``seq_len``:

    k_1 v_1 k_2 v_2 ... k_N v_N | filler ... k_{q_1} filler ... k_{q_2} ...

* the first ``2·N`` tokens are ``N`` key–value pairs; keys are distinct, drawn from the lower
  half of the vocabulary ``[1, V/2)``, values from the upper half ``[V/2, V)`` (0 is unused);
* every key is queried once, in a random order, after the pairs: query ``j`` sits at position
  ``2·N + 2·g_j`` where the gaps ``g_j`` are distinct, drawn with probability ∝ g^(a−1) (a power
  law with ``a = 0.01``, Zoology's default: most queries come soon after the pairs, some far);
* the target at a query position is the value bound to that key; every other position is
  unscored (``mask`` 0). Non-query positions after the pairs hold random tokens of the whole
  vocabulary (Zoology's ``random_non_queries``), so the model must tell a query from noise by
  what came before, not by position.

Inputs and targets are aligned (``targets[t]`` is what the model should predict after reading
``inputs[:t+1]``), as the trainer's ``inputs`` / ``targets`` / ``loss_mask`` batches.
Deterministic given the seed; NumPy only.
"""

from __future__ import annotations

import numpy as np

__all__ = ['POWER_A', 'make_mqar_batch', 'mqar_chance', 'seen_value_guess']

POWER_A = 0.01  # Zoology's default query-gap exponent


def make_mqar_batch(
  rng: np.random.Generator,
  batch: int,
  seq_len: int,
  num_pairs: int,
  vocab_size: int,
  power_a: float = POWER_A,
) -> dict[str, np.ndarray]:
  """``batch`` MQAR examples.

  Returns ``{'inputs', 'targets', 'loss_mask'}``, each ``[batch, seq_len]`` (int32, int32,
  float32); exactly ``num_pairs`` positions per row have ``loss_mask`` 1.
  """
  half = vocab_size // 2
  ctx = 2 * num_pairs
  space = (seq_len - ctx) // 2  # query slots: every other position after the pairs
  if num_pairs < 1 or half - 1 < num_pairs:
    raise ValueError(f'mqar: {num_pairs} pairs need a vocabulary > {2 * num_pairs + 1}')
  if space < num_pairs:
    raise ValueError(f'mqar: {num_pairs} pairs need seq_len >= {4 * num_pairs}, got {seq_len}')
  p = power_a * np.arange(1, space + 1, dtype=np.float64) ** (power_a - 1)
  p /= p.sum()
  inputs = rng.integers(0, vocab_size, size=(batch, seq_len)).astype(np.int32)
  targets = np.zeros((batch, seq_len), np.int32)
  mask = np.zeros((batch, seq_len), np.float32)
  for b in range(batch):
    keys = rng.choice(np.arange(1, half), size=num_pairs, replace=False)
    values = rng.integers(half, vocab_size, size=num_pairs)
    inputs[b, 0:ctx:2] = keys
    inputs[b, 1:ctx:2] = values
    gaps = rng.choice(space, size=num_pairs, replace=False, p=p)
    pos = ctx + 2 * gaps
    order = rng.permutation(num_pairs)  # which key each query slot asks for
    inputs[b, pos] = keys[order]
    targets[b, pos] = values[order]
    mask[b, pos] = 1.0
  return {'inputs': inputs, 'targets': targets, 'loss_mask': mask}


def mqar_chance(vocab_size: int) -> float:
  """Accuracy of guessing a value uniformly (from the value half of the vocabulary)."""
  return 1.0 / (vocab_size - vocab_size // 2)


def seen_value_guess(batch: dict[str, np.ndarray], vocab_size: int) -> float:
  """Accuracy of a model that recalls nothing but guesses uniformly among the distinct value
  tokens (upper vocabulary half) it has read up to each query, the bound one among them.

  No key-value binding is needed to reach it, so it is the level recall must beat: the queries
  come soon after the pairs (power-law gaps), so few filler values are read before them and
  this is well above ``mqar_chance`` (e.g. ~0.15 at 4 pairs, seq_len 64, vocabulary 256).
  ``batch``: ``make_mqar_batch``'s output."""
  half = vocab_size // 2
  hits = []
  for x, y, m in zip(batch['inputs'], batch['targets'], batch['loss_mask']):
    for t in np.nonzero(m)[0]:
      seen = np.unique(x[: t + 1][x[: t + 1] >= half])
      hits.append(float(np.isin(y[t], seen)) / len(seen))
  return float(np.mean(hits))
