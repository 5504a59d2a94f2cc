"""The documents a zero-shot task turns its file into, and lm-eval's metric aggregation.

A document holds the requests the scorer must answer (loglikelihoods of continuations, or a
rolling loglikelihood) and turns the answers into per-document metrics; `aggregate` combines
them as lm-evaluation-harness v0.4 does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np


@dataclasses.dataclass
class MultipleChoiceDoc:
  """One question: ``requests[i] = (context_i, continuation_i)``; ``gold`` the right index.

  ``choices`` are the strings lm-eval measures for acc_norm (the choice text
  without the delimiter; for WinoGrande the contexts).
  """

  requests: list[tuple[str, str]]
  choices: list[str]
  gold: int

  def metrics(self, results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    lls = np.array([r[0] for r in results], dtype=np.float64)
    lens = np.array([float(len(c)) for c in self.choices])
    return {
      'acc': float(np.argmax(lls) == self.gold),
      'acc_norm': float(np.argmax(lls / lens) == self.gold),
    }


@dataclasses.dataclass
class LoglikelihoodDoc:
  """A single (context, continuation): LAMBADA."""

  requests: list[tuple[str, str]]

  def metrics(self, results: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    ll, greedy = results[0]
    return {'acc': float(greedy), 'perplexity': float(ll)}


@dataclasses.dataclass
class RollingDoc:
  """A whole document scored with rolling windows (WikiText)."""

  text: str
  words: int
  num_bytes: int

  def metrics(self, results: Sequence[float]) -> dict[str, Any]:
    (ll,) = results
    return {
      'word_perplexity': (float(ll), self.words),
      'byte_perplexity': (float(ll), self.num_bytes),
      'bits_per_byte': (float(ll), self.num_bytes),
    }


Doc = MultipleChoiceDoc | LoglikelihoodDoc | RollingDoc


def aggregate(per_doc: list[dict[str, Any]]) -> dict[str, float]:
  """lm-eval's aggregations: mean; perplexity = exp(-mean ll); weighted perplexities."""
  out: dict[str, float] = {}
  if not per_doc:
    return out
  for key in per_doc[0]:
    vals = [d[key] for d in per_doc]
    if key == 'perplexity':
      out[key] = float(math.exp(-float(np.mean(vals))))
    elif key in ('word_perplexity', 'byte_perplexity'):
      ll = sum(v[0] for v in vals)
      n = sum(v[1] for v in vals)
      out[key] = float(math.exp(-ll / n))
    elif key == 'bits_per_byte':
      ll = sum(v[0] for v in vals)
      n = sum(v[1] for v in vals)
      out[key] = float(-ll / n / math.log(2))
    else:
      out[key] = float(np.mean(vals))
  return out
