"""Does a quickstart-sized model learn in-context copying when every step is spent on it?

    python scripts/copy_probe.py --family=transformer           # copies by step 200 (by position)
    python scripts/copy_probe.py --family=moneta --chunk=8      # stays at chance (issue 16 §3)
    python scripts/copy_probe.py --family=transformer --min_length=4 --length=12  # by content

The token-level version of the ``copy`` eval task (miras_jax/evals/synthetic.py): rows of
random ``--length``-token sequences (ids below ``--symbols``) each read twice, packed into
``--seq_len`` tokens; next-token loss on every position. Reported every quarter of the run, on
64 fixed held-out rows: greedy accuracy on the first reading (chance) and on the second (what
the model recalls from its context), and the loss on the second. The model is the quickstart's
shape (2 layers × 64, 4 heads of 16, MLP 256, vocab 2048; a family's ``tiny`` preset otherwise);
``--set=key=value;...`` overrides model keys (Python literals). The repeated-random-sequence
test of Olsson et al. 2022 ("In-context Learning and Induction Heads", §2).
"""

from __future__ import annotations

import argparse
import ast
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from miras_jax.models import build_model
from miras_jax.models.presets import model_config
from miras_jax.train.defaults import family_config
from miras_jax.train.optimizer import make_optimizer


def copy_rows(
  rng: np.random.Generator,
  rows: int,
  length: int,
  seq_len: int,
  symbols: int,
  min_length: int | None = None,
):
  """(inputs, targets [rows, seq_len]; masks of the first and second readings [rows, seq_len]).

  Sequence lengths are drawn from [min_length, length] (default: all ``length``); with one
  length a single attention layer can copy by relative position alone (attend ``length − 1``
  back), so varied lengths test recall by content. Each reading's first token is not scored
  (it does not follow from the context)."""
  lo = length if min_length is None else min_length
  if 2 * length > seq_len or not 1 <= lo <= length:
    raise ValueError(f'seq_len={seq_len} holds no sequence of {length} tokens read twice')
  x = np.zeros((rows, seq_len + 1), np.int64)
  first, second = np.zeros((rows, seq_len + 1)), np.zeros((rows, seq_len + 1))
  for r in range(rows):
    at = 0
    while True:
      n = int(rng.integers(lo, length + 1))
      if at + 2 * n > seq_len:
        break
      s = rng.integers(1, symbols, size=n)
      x[r, at : at + 2 * n] = np.concatenate([s, s])
      first[r, at + 1 : at + n], second[r, at + n + 1 : at + 2 * n] = 1, 1
      at += 2 * n
  return x[:, :-1], x[:, 1:], first[:, 1:], second[:, 1:]


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--family', default='moneta')
  p.add_argument('--chunk', type=int, default=32)
  p.add_argument('--length', type=int, default=8)
  p.add_argument('--min_length', type=int, default=None, help='default: --length (fixed)')
  p.add_argument('--seq_len', type=int, default=64)
  p.add_argument('--batch', type=int, default=16)
  p.add_argument('--steps', type=int, default=400)
  p.add_argument('--lr', type=float, default=3e-3)
  p.add_argument('--symbols', type=int, default=256)
  p.add_argument('--set', default='', help='model overrides: key=value;key=value')
  a = p.parse_args(argv)

  m = model_config(a.family, 'tiny')
  m.vocab_size, m.d_model, m.n_layers, m.n_heads, m.head_dim = 2048, 64, 2, 4, 16
  m.mlp_dim, m.gate_rank, m.chunk_size, m.max_len = 256, 8, a.chunk, a.seq_len
  for kv in filter(None, a.set.split(';')):
    k, v = kv.split('=', 1)
    setattr(m, k, ast.literal_eval(v))
  model = build_model(m)
  t = family_config(a.family, 'tiny').train
  t.steps, t.lr, t.warmup_steps, t.weight_decay = a.steps, a.lr, max(1, a.steps // 10), 0.1
  tx = make_optimizer(t)
  rng = np.random.default_rng(0)
  held = [
    jnp.asarray(v)
    for v in copy_rows(np.random.default_rng(99), 64, a.length, a.seq_len, a.symbols, a.min_length)
  ]
  params = jax.jit(model.init)(jax.random.key(0), held[0][:1])['params']
  opt = tx.init(params)

  def loss_fn(w, x, y):
    logits = model.apply({'params': w}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  @jax.jit
  def step(w, o, x, y):
    loss, g = jax.value_and_grad(loss_fn)(w, x, y)
    u, o = tx.update(g, o, w)
    return optax.apply_updates(w, u), o, loss

  @jax.jit
  def score(w, x, y, m1, m2):
    logits = model.apply({'params': w}, x)
    hit = jnp.argmax(logits, -1) == y
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    n1, n2 = jnp.sum(m1), jnp.sum(m2)
    return jnp.sum(hit * m1) / n1, jnp.sum(hit * m2) / n2, jnp.sum(ce * m2) / n2

  t0, rows = time.time(), []
  for i in range(a.steps + 1):
    if i % max(1, a.steps // 4) == 0 or i == a.steps:
      acc1, acc2, ce2 = (float(v) for v in score(params, *held))
      rows.append({'step': i, 'first_acc': acc1, 'second_acc': acc2, 'second_loss': ce2})
      print(
        f'step {i}: accuracy {100 * acc1:.1f}% -> {100 * acc2:.1f}%, second-reading loss {ce2:.2f} ({time.time() - t0:.0f}s)',
        flush=True,
      )
    if i == a.steps:
      break
    x, y, _, _ = copy_rows(rng, a.batch, a.length, a.seq_len, a.symbols, a.min_length)
    params, opt, loss = step(params, opt, jnp.asarray(x), jnp.asarray(y))
    jax.block_until_ready(loss)  # one step in flight (XLA:CPU hangs seen with several queued)
  out = {'settings': vars(a), 'curve': rows}
  print(json.dumps(out))
  return out


if __name__ == '__main__':
  main()
