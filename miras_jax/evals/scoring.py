"""Batched, jitted loglikelihood scoring with lm-evaluation-harness's conventions.

A *request* is ``(context_ids, continuation_ids)``; its answer is
``(sum of log p(continuation tokens), whether every continuation token is the argmax)``,
as lm-eval's ``HFLM._loglikelihood_tokens``: the model reads
``(context + continuation)[-(max_len + 1):][:-1]`` (left-truncated to the context
length) and the last ``len(continuation)`` positions are scored.

Each request is scored in isolation: the memories (and attention) never see
another request. Two layouts give the same numbers:

* ``pack=False`` (default): one request per row, right-padded to a length
  bucket; the model sees no ``segment_ids`` (it is causal, so padding after the
  request cannot reach it).
* ``pack=True``: several requests per row, each its own segment
  (``segment_ids`` 1, 2, ...; 0 is padding) with RoPE positions restarting at 0;
  the model resets its memory at every segment start.

Rows are sorted by length and cut into batches of ``batch_size`` rows; the batch
shape is ``[batch_size, bucket]`` with buckets ``16·2^k`` and ``24·2^k`` (capped
at ``max_len``), so only a handful of shapes are compiled.

Text requests are tokenized as lm-eval's ``TemplateLM.loglikelihood``: trailing
spaces of the context move to the continuation; the continuation's ids are
``encode(context + continuation)[len(encode(context)):]``; an empty context
becomes ``[prefix_token_id]``. Rolling loglikelihood (WikiText) uses lm-eval's
``get_rolling_token_windows`` with ``context_len=1`` (disjoint windows of
``max_len`` tokens, the first one conditioned on the prefix token).
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.progress import Progress

__all__ = [
  'Scorer',
  'get_rolling_token_windows',
  'make_disjoint_window',
  'length_buckets',
  'make_apply_fn',
]

ApplyFn = Callable[[Any, jax.Array, jax.Array | None, jax.Array | None], jax.Array]


def make_apply_fn(model: Any) -> ApplyFn:
  """``apply_fn(params, tokens, segment_ids, positions) -> logits`` of a Flax LM."""

  def apply_fn(params, tokens, segment_ids=None, positions=None):
    return model.apply({'params': params}, tokens, segment_ids=segment_ids, positions=positions)

  return apply_fn


def get_rolling_token_windows(
  token_list: list[int], prefix_token: int, max_seq_len: int, context_len: int
):
  """lm-eval's ``utils.get_rolling_token_windows`` (yields ``(input_tokens, pred_tokens)``)."""
  assert 1 <= context_len <= max_seq_len
  if not token_list:
    return
  pred_len = max_seq_len - context_len + 1
  predicted = 0
  first_seq_len = min(max_seq_len, len(token_list))
  yield [prefix_token] + token_list[: first_seq_len - 1], token_list[:first_seq_len]
  predicted += first_seq_len
  while predicted < len(token_list):
    window_pred_len = min(len(token_list) - predicted, pred_len)
    window_end = predicted + window_pred_len
    yield (
      token_list[window_end - max_seq_len - 1 : window_end - 1],
      token_list[window_end - window_pred_len : window_end],
    )
    predicted += window_pred_len


def make_disjoint_window(pair):
  """lm-eval's ``utils.make_disjoint_window``."""
  a, b = pair
  return a[: len(a) - (len(b) - 1)], b


def length_buckets(max_len: int, smallest: int = 16) -> list[int]:
  out = {max_len}
  b = smallest
  while b < max_len:
    out.add(b)
    if b * 3 // 2 < max_len:
      out.add(b * 3 // 2)
    b *= 2
  return sorted(out)


class Scorer:
  """Scores requests with ``apply_fn(params, tokens, segment_ids, positions) -> logits [B, T, V]``.

  Args:
      apply_fn: the model's forward pass (see :func:`make_apply_fn`).
      params: its parameters.
      tokenizer: a :class:`miras_jax.data.tokenizer.Tokenizer` (or anything with ``encode``,
          ``encode_batch``, ``bos_id``, ``eos_id``); only needed for text requests.
      max_len: the context length (lm-eval's ``max_length``): inputs are left-truncated
          to it and rolling windows have this length.
      batch_size: rows per batch.
      pack: pack several requests into a row (separate segments) instead of one per row.
      prefix_token_id: conditioning token for empty contexts and the first rolling
          window; default BOS if the tokenizer has one, else EOS (lm-eval's HFLM).
      pack_align: with ``pack``, each request starts at a multiple of this. Use the
          memory's ``chunk_size``: the chunked memories reset their state exactly only
          at chunk boundaries (a segment starting mid-chunk leaks the previous one).
  """

  def __init__(
    self,
    apply_fn: ApplyFn,
    params: Any,
    tokenizer: Any = None,
    *,
    max_len: int,
    batch_size: int = 8,
    pack: bool = False,
    prefix_token_id: int | None = None,
    pad_id: int = 0,
    pack_align: int = 1,
    verbose: bool = False,
  ):
    try:  # boxed (LogicallyPartitioned) params straight from model.init
      from flax.linen import meta as _meta  # pylint: disable=import-outside-toplevel

      params = _meta.unbox(params)
    except ImportError:
      pass
    self.apply_fn = apply_fn
    self.params = params
    self.tokenizer = tokenizer
    self.max_len = int(max_len)
    self.batch_size = int(batch_size)
    self.pack = bool(pack)
    self.pad_id = int(pad_id)
    self.pack_align = max(1, int(pack_align))
    self.verbose = verbose
    if prefix_token_id is None and tokenizer is not None:
      prefix_token_id = tokenizer.bos_id if tokenizer.bos_id >= 0 else tokenizer.eos_id
    self.prefix_token_id = prefix_token_id
    self.buckets = length_buckets(self.max_len)
    self.num_batches = 0

    def score(params, tokens, targets, segment_ids, positions):
      logits = apply_fn(params, tokens, segment_ids, positions).astype(jnp.float32)
      logp = jax.nn.log_softmax(logits, axis=-1)
      ll = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
      greedy = jnp.argmax(logits, axis=-1) == targets
      return ll, greedy

    def score_plain(params, tokens, targets):
      return score(params, tokens, targets, None, None)

    self._score_packed = jax.jit(score)
    self._score_plain = jax.jit(score_plain)

  # ------------------------------------------------------------- tokens
  def _bucket(self, n: int) -> int:
    for b in self.buckets:
      if b >= n:
        return b
    return self.max_len

  def with_params(self, params: Any) -> Scorer:
    """This scorer for other parameters of the same shapes (e.g. the model at initialisation),
    sharing its compiled functions: no second compilation."""
    other = copy.copy(self)
    other.params = params
    return other

  def loglikelihood_tokens(
    self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
  ) -> list[tuple[float, bool]]:
    """``[(sum log p(continuation | context), is_greedy)]`` for token-id requests."""
    return [(float(ll.sum()), bool(g.all())) for ll, g in self.token_scores(requests)]

  def token_scores(
    self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per continuation token: ``[(log p [n] float64, is-argmax [n] bool)]`` (n = scored tokens)."""
    items = []  # (index, input ids, target ids, number of scored positions)
    for i, (ctx, cont) in enumerate(requests):
      ctx, cont = list(ctx), list(cont)
      if not cont:
        raise ValueError(f'request {i} has an empty continuation')
      if not ctx:
        if self.prefix_token_id is None:
          raise ValueError(f'request {i} has an empty context and no prefix token is set')
        ctx = [self.prefix_token_id]
      whole = (ctx + cont)[-(self.max_len + 1) :]
      inp, tgt = whole[:-1], whole[1:]
      items.append((i, inp, tgt, min(len(cont), len(inp))))
    out: list = [None] * len(items)
    # longest first (as lm-eval), so a batch holds similar lengths
    items.sort(key=lambda it: (-len(it[1]), it[0]))
    rows = self._pack(items) if self.pack else [[it] for it in items]
    t0 = time.time()
    bar = Progress('  scoring', total=len(items), unit='requests', enabled=self.verbose)
    for start in range(0, len(rows), self.batch_size):
      batch = rows[start : start + self.batch_size]
      self._run_batch(batch, out)
      bar.update(sum(len(row) for row in batch))
    bar.close()
    if self.verbose:
      print(
        f'  scored {len(items)} requests in {len(rows)} rows, {time.time() - t0:.1f}s', flush=True
      )
    return out  # type: ignore[return-value]

  def _aligned(self, n: int) -> int:
    a = self.pack_align
    return -(-n // a) * a

  def _pack(self, items):
    """First-fit-decreasing packing of (sorted) requests into rows of at most ``max_len``.

    Every request starts at a multiple of ``pack_align`` (the gap is padding, segment 0).
    """
    rows: list[list] = []
    fill: list[int] = []
    for it in items:
      n = len(it[1])
      for r, used in enumerate(fill):
        if used + n <= self.max_len:
          rows[r].append(it)
          fill[r] = min(self.max_len, used + self._aligned(n))
          break
      else:
        rows.append([it])
        fill.append(min(self.max_len, self._aligned(n)))
    return rows

  def _run_batch(self, batch, out):
    layout = []  # per row: [(offset, item)]
    for row in batch:
      off, placed = 0, []
      for it in row:
        placed.append((off, it))
        off += self._aligned(len(it[1])) if self.pack else len(it[1])
      layout.append(placed)
    width = self._bucket(max(o + len(it[1]) for placed in layout for o, it in placed))
    shape = (self.batch_size, width)
    tokens = np.full(shape, self.pad_id, np.int32)
    targets = np.zeros(shape, np.int32)
    segs = np.zeros(shape, np.int32)
    pos = np.zeros(shape, np.int32)
    spans = []  # (index, row, end, n scored)
    for r, placed in enumerate(layout):
      for s, (off, (i, inp, tgt, n)) in enumerate(placed, 1):
        k = len(inp)
        tokens[r, off : off + k] = inp
        targets[r, off : off + k] = tgt
        segs[r, off : off + k] = s
        pos[r, off : off + k] = np.arange(k)
        spans.append((i, r, off + k, n))
    if self.pack:
      ll, greedy = self._score_packed(self.params, tokens, targets, segs, pos)
    else:
      ll, greedy = self._score_plain(self.params, tokens, targets)
    ll = np.asarray(jax.device_get(ll), np.float64)
    greedy = np.asarray(jax.device_get(greedy))
    self.num_batches += 1
    for i, r, end, n in spans:
      out[i] = (ll[r, end - n : end], greedy[r, end - n : end])

  # --------------------------------------------------------------- text
  def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's ``TemplateLM`` tokenization of one (context, continuation)."""
    if context == '':
      cont = self.tokenizer.encode(continuation)
      if self.prefix_token_id != cont[0]:
        return [self.prefix_token_id], cont
      return cont[:1], cont[1:]
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
      continuation = context[-n_spaces:] + continuation
      context = context[:-n_spaces]
    whole = self.tokenizer.encode(context + continuation)
    ctx = self.tokenizer.encode(context)
    return ctx, whole[len(ctx) :]

  def encode_pairs(self, requests: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
    """:meth:`encode_pair` of many requests (batch tokenization)."""
    fixed, wholes, ctxs, empty = [], [], [], {}
    for j, (context, continuation) in enumerate(requests):
      if context == '':
        empty[j] = self.encode_pair(context, continuation)
        fixed.append(('x', ''))  # placeholder
        continue
      n_spaces = len(context) - len(context.rstrip())
      if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
      fixed.append((context, continuation))
    enc = getattr(self.tokenizer, 'encode_batch', None)
    if enc is not None:
      wholes = enc([c + x for c, x in fixed])
      ctxs = enc([c for c, _ in fixed])
    else:
      wholes = [self.tokenizer.encode(c + x) for c, x in fixed]
      ctxs = [self.tokenizer.encode(c) for c, _ in fixed]
    return [
      empty[j] if j in empty else (list(c), list(w)[len(c) :])
      for j, (w, c) in enumerate(zip(wholes, ctxs))
    ]

  def loglikelihood(self, requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
    """lm-eval's ``loglikelihood`` for text (context, continuation) requests."""
    return self.loglikelihood_tokens(self.encode_pairs(requests))

  def rolling_windows(self, tokens: list[int]) -> list[tuple[list[int], list[int]]]:
    if self.prefix_token_id is None:
      raise ValueError('rolling loglikelihood needs a prefix token (BOS/EOS)')
    return [
      make_disjoint_window(w)
      for w in get_rolling_token_windows(
        tokens, prefix_token=self.prefix_token_id, max_seq_len=self.max_len, context_len=1
      )
    ]

  def loglikelihood_rolling_tokens(self, docs: Sequence[Sequence[int]]) -> list[float]:
    owners, windows = [], []
    for d, toks in enumerate(docs):
      for w in self.rolling_windows(list(toks)):
        owners.append(d)
        windows.append(w)
    res = self.loglikelihood_tokens(windows)
    total = [0.0] * len(docs)
    for d, (ll, _) in zip(owners, res):
      total[d] += ll
    return total

  def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
    """lm-eval's ``loglikelihood_rolling``: the whole text's loglikelihood, disjoint windows."""
    enc = getattr(self.tokenizer, 'encode_batch', None)
    docs = enc(list(texts)) if enc is not None else [self.tokenizer.encode(t) for t in texts]
    return self.loglikelihood_rolling_tokens(docs)
