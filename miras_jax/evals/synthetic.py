"""Synthetic long-context recall, generated offline and deterministically (seeded).

``niah``: RULER-style single-needle-in-a-haystack. The haystack is RULER's noise
("The grass is green. The sky is blue. The sun is yellow. Here we go. There and
back again.") repeated to the target length in tokens; one needle is put at a
depth spread evenly over [0, 1] across samples. Three variants:

* ``passkey``: needle "The pass key is {7 digits}. Remember it. {7 digits} is the pass
  key."; question "What is the pass key? The pass key is" -> " {7 digits}".
* ``number``: RULER niah_single: "One of the special magic numbers for {key} is:
  {7 digits}."; question "What is the special magic number for {key} mentioned in
  the provided text? The special magic number for {key} mentioned in the provided
  text is" -> " {7 digits}".
* ``word``: as ``number`` with a (made-up, pronounceable) word as the value.

The whole prompt is RULER's template (instruction, haystack, question); its
length in tokens is the nominal length (1K = 1024 ... 16K = 16384) within a
few tokens. A sample counts as correct when greedy decoding would produce the
whole answer (every answer token is the argmax under teacher forcing, which is
the same thing). Reported: accuracy per variant and length.

``mqar``: multi-query associative recall (Zoology) in text form:
"Remember the pairs. {k1} {v1}, {k2} {v2}, ... Recall. {k_q1} {v_q1}, {k_q2} {v_q2}, ...";
keys are made-up words, values 3-digit numbers, queries are all keys in a random
order. Every value after "Recall." is scored (teacher forcing over the query
part, as Zoology); accuracy per number of pairs (and the token length).

``copy``: in-context copying of a short sequence of made-up words read twice (`run_copy`):
token accuracy on the second reading against the first; the evaluator also scores the model at
initialisation (``init``), so what training added shows (`format_copy`). Short enough for a
model trained on 128-token windows (the quickstart's 0.3M-parameter models learn none of it in
500 steps, README).

``copy_fixed``: fixed-offset copying (`run_copy_fixed`), the blocks the trainer mixes in with
``data.copy_fraction`` (miras_jax/data/copy_task.py): a marker, then ``L`` random byte pieces,
then the same ``L`` again; accuracy on the second reading against the first, trained and at
initialisation (`format_copy_fixed`). Each copied token is exactly ``L`` back, so this is
recall by position, the easier variant (the Copying task of Gu & Dao 2023, §4.1.1); ``copy``
is recall by content. The quickstart's model learns this one (README).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
  'NIAH_VARIANTS',
  'NiahSample',
  'make_niah',
  'make_mqar',
  'run_niah',
  'run_mqar',
  'make_copy',
  'run_copy',
  'made_up_words',
  'format_copy',
  'make_copy_fixed',
  'run_copy_fixed',
  'format_copy_fixed',
]

NIAH_VARIANTS = ('passkey', 'number', 'word')
NOISE = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again.'
_CONS = 'bdfgklmnprstvz'
_VOWELS = 'aeiou'


def made_up_words(rng: random.Random, n: int, syllables: int = 2) -> list[str]:
  """``n`` distinct pronounceable made-up words ('bako', 'tilu', ...)."""
  out, seen = [], set()
  while len(out) < n:
    w = ''.join(rng.choice(_CONS) + rng.choice(_VOWELS) for _ in range(syllables))
    if w not in seen:
      seen.add(w)
      out.append(w)
  return out


@dataclasses.dataclass
class NiahSample:
  variant: str
  length: int
  depth: float
  context: list[int]
  answer: list[int]
  answer_text: str


def _niah_parts(variant: str, rng: random.Random) -> tuple[str, str, str, str]:
  """(instruction, needle, question, answer) of one sample."""
  if variant == 'passkey':
    value = str(rng.randint(1_000_000, 9_999_999))
    return (
      'There is an important info hidden inside a lot of irrelevant text. Find it and memorize it. '
      'I will quiz you about the important information there.',
      f'The pass key is {value}. Remember it. {value} is the pass key.',
      'What is the pass key? The pass key is',
      value,
    )
  key = made_up_words(rng, 1, 3)[0]
  if variant == 'number':
    value, kind = str(rng.randint(1_000_000, 9_999_999)), 'number'
  elif variant == 'word':
    value, kind = made_up_words(rng, 1, 3)[0], 'word'
  else:
    raise ValueError(f'unknown niah variant {variant!r}; known: {", ".join(NIAH_VARIANTS)}')
  return (
    f'Some special magic {kind}s are hidden within the following text. Make sure to memorize it. '
    f'I will quiz you about the {kind}s afterwards.',
    f'One of the special magic {kind}s for {key} is: {value}.',
    f'What is the special magic {kind} for {key} mentioned in the provided text? '
    f'The special magic {kind} for {key} mentioned in the provided text is',
    value,
  )


def make_niah(
  tokenizer: Any,
  lengths: Sequence[int] = (1024, 2048, 4096, 8192, 16384),
  variants: Sequence[str] = NIAH_VARIANTS,
  samples: int = 10,
  seed: int = 0,
) -> list[NiahSample]:
  """``samples`` prompts per (variant, length), needle depths evenly spread over [0, 1]."""
  enc = tokenizer.encode
  noise = enc(NOISE)
  out = []
  for variant in variants:
    for length in lengths:
      rng = random.Random(f'{seed}-{variant}-{length}')
      for s in range(samples):
        depth = s / (samples - 1) if samples > 1 else 0.5
        instr, needle, question, answer = _niah_parts(variant, rng)
        head, needle_ids, tail = enc(instr), enc(needle), enc(question)
        ans = enc(answer)  # "▁1234567": a word after a space, as in the prompt
        budget = max(0, int(length) - len(head) - len(needle_ids) - len(tail) - len(ans))
        reps = budget // len(noise)
        hay = noise * reps
        hay += noise[: budget - len(hay)] if budget - len(hay) > 0 else []
        # insert at a sentence boundary of the noise (a multiple of the noise block)
        cut = int(round(depth * reps)) * len(noise)
        ctx = head + hay[:cut] + needle_ids + hay[cut:] + tail
        out.append(NiahSample(variant, int(length), depth, ctx, ans, answer))
  return out


def run_niah(
  scorer_factory,
  tokenizer: Any,
  lengths: Sequence[int],
  variants: Sequence[str] = NIAH_VARIANTS,
  samples: int = 10,
  seed: int = 0,
) -> dict[str, Any]:
  """Accuracy per variant and length; ``scorer_factory(max_len)`` gives a Scorer for that length."""
  data = make_niah(tokenizer, lengths, variants, samples, seed)
  results: dict[str, Any] = {}
  for length in lengths:
    group = [d for d in data if d.length == length]
    scorer = scorer_factory(max(len(d.context) + len(d.answer) for d in group))
    res = scorer.loglikelihood_tokens([(d.context, d.answer) for d in group])
    for variant in variants:
      hits = [float(r[1]) for d, r in zip(group, res) if d.variant == variant]
      results.setdefault(variant, {})[str(length)] = float(np.mean(hits)) if hits else float('nan')
  results['mean'] = {
    str(n): float(np.mean([results[v][str(n)] for v in variants])) for n in lengths
  }
  return results


def make_mqar(tokenizer: Any, num_pairs: int, samples: int = 10, seed: int = 0):
  """``[(context ids, query ids, value spans [(start, end)] within the query ids)]``."""
  enc = tokenizer.encode
  rng = random.Random(f'{seed}-mqar-{num_pairs}')
  out = []
  for _ in range(samples):
    keys = made_up_words(rng, num_pairs, 2)
    values = [str(rng.randint(100, 999)) for _ in keys]
    ctx = enc('Remember the pairs.')
    for k, v in zip(keys, values):
      ctx += enc(f'{k} {v},')
    ctx += enc('Recall.')
    order = list(range(num_pairs))
    rng.shuffle(order)
    query, spans = [], []
    for i in order:
      query += enc(keys[i])
      v = enc(values[i])
      spans.append((len(query), len(query) + len(v)))
      query += v + enc(',')[-1:] if enc(',') else v
    out.append((ctx, query, spans))
  return out


def run_mqar(
  scorer_factory,
  tokenizer: Any,
  num_pairs: Sequence[int] = (8, 32, 128, 256),
  samples: int = 10,
  seed: int = 0,
) -> dict[str, Any]:
  """Accuracy (fraction of values recalled exactly) per number of pairs, with the token length."""
  acc, lengths = {}, {}
  for n in num_pairs:
    data = make_mqar(tokenizer, n, samples, seed)
    scorer = scorer_factory(max(len(c) + len(q) for c, q, _ in data))
    res = scorer.token_scores([(c, q) for c, q, _ in data])
    hits = []
    for (_, _, spans), (_, greedy) in zip(data, res):
      hits += [float(greedy[a:b].all()) for a, b in spans]
    acc[str(n)] = float(np.mean(hits))
    lengths[str(n)] = int(max(len(c) + len(q) for c, q, _ in data))
  return {'acc': acc, 'tokens': lengths}


def make_copy(tokenizer: Any, num_words: int, samples: int = 16, seed: int = 0):
  """``[(ids of one copy, n)]``: ``num_words`` made-up words and a full stop, to be read twice."""
  rng = random.Random(f'{seed}-copy-{num_words}')
  out = []
  for _ in range(samples):
    seq = tokenizer.encode(' '.join(made_up_words(rng, num_words, 2)) + '.')
    out.append(seq)
  return out


def run_copy(
  scorer_factory,
  tokenizer: Any,
  num_words: Sequence[int] = (8, 16),
  samples: int = 16,
  seed: int = 0,
) -> dict[str, Any]:
  """In-context copying: a sequence of made-up words read twice in a row; the greedy
  (teacher-forced) accuracy on its second reading against its first.

  The first reading is unpredictable (random words; only their spelling can be guessed), so
  ``second - first`` is what the model recalls from its context — what the memories / KV
  caches are for (the repeated-sequence test of Olsson et al. 2022, "In-context Learning and
  Induction Heads", §2). The first token of each reading is not scored (the second reading's
  start is not implied by the text). Short enough for a model trained on 128-token windows.
  """
  first, second, lengths = {}, {}, {}
  for n in num_words:
    data = make_copy(tokenizer, n, samples, seed)
    scorer = scorer_factory(max(2 * len(s) + 1 for s in data))
    res = scorer.token_scores([([], s + s) for s in data])
    a, b = [], []
    for s, (_, greedy) in zip(data, res):
      m = len(s)
      a.append(float(np.mean(greedy[1:m])))
      b.append(float(np.mean(greedy[m + 1 : 2 * m])))
    first[str(n)], second[str(n)] = float(np.mean(a)), float(np.mean(b))
    lengths[str(n)] = int(max(2 * len(s) for s in data))
  return {'first_acc': first, 'second_acc': second, 'tokens': lengths}


def format_copy(res: dict[str, Any]) -> str:
  """Console lines of the ``copy`` task (``run_copy``'s result, with its scores at
  initialisation under ``'init'`` when they were run)."""

  def readings(r: dict[str, Any]) -> str:
    return ', '.join(
      f'{n} words {100 * r["first_acc"][n]:.0f}% -> {100 * r["second_acc"][n]:.0f}%'
      for n in r['first_acc']
    )

  line = (
    'in-context copying (made-up words read twice; next-token accuracy, first reading -> '
    f'second): {readings(res)}'
  )
  if 'init' in res:
    line += f'\n  the same model at initialisation: {readings(res["init"])}'
  return line


def make_copy_fixed(tokenizer: Any, length: int = 8, samples: int = 32, seed: int = 0):
  """``samples`` unseen blocks ``[marker] + s + s`` of the copy task (miras_jax/data/copy_task.py),
  drawn with a seed of their own (the trainer's blocks come from ``data.seed`` and the step)."""
  from miras_jax.data import copy_task  # pylint: disable=import-outside-toplevel

  alphabet = copy_task.copy_alphabet(tokenizer.path)
  marker = copy_task.copy_marker(tokenizer.bos_id, tokenizer.eos_id)
  rng = np.random.default_rng([int(seed), int(length), 0xE7A1])
  return [copy_task.copy_block(rng, alphabet, length, marker) for _ in range(samples)]


def run_copy_fixed(
  scorer, tokenizer: Any, length: int = 8, samples: int = 32, seed: int = 0
) -> dict[str, Any]:
  """Fixed-offset copying: greedy (teacher-forced) accuracy on the second reading of each block
  against the first (chance: one in 256), ``{first_acc, second_acc, length, samples}``.
  ``scorer`` (``token_scores``) must hold ``2 * length + 1`` tokens."""
  blocks = make_copy_fixed(tokenizer, length, samples, seed)
  res = scorer.token_scores([(b[:1], b[1:]) for b in blocks])
  hit = np.stack([r[1] for r in res]).astype(np.float64)  # [samples, 2L]
  return {
    'first_acc': float(hit[:, :length].mean()),
    'second_acc': float(hit[:, length:].mean()),
    'length': int(length),
    'samples': int(samples),
  }


def format_copy_fixed(res: dict[str, Any]) -> str:
  """Console lines of the ``copy_fixed`` task (with ``'init'``: the model at initialisation)."""

  def acc(r: dict[str, Any]) -> str:
    return f'{100 * r["first_acc"]:.0f}% -> {100 * r["second_acc"]:.0f}%'

  line = (
    f'fixed-offset copying ({res["samples"]} blocks of {res["length"]} random tokens read twice, '
    f'recall by position; next-token accuracy, first reading -> second): {acc(res)}'
  )
  if 'init' in res:
    line += f'\n  the same model at initialisation: {acc(res["init"])}'
  return line
