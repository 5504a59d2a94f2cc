"""Shared defaults of every training run; config files only state what differs.

    python -m miras_jax.train --config=configs/base.py:moneta,170m --workdir=runs/x \\
        --config.train.steps=1000

configs/base.py's ``get_config(arg)`` takes ``"<family>[,<size>]"`` (default
``moneta,tiny``) and builds the model section with
``miras_jax.models.presets.model_config(family, size)``.
Config files in ``configs/`` call these functions and set values.
Sections (keys users type most are marked *):

``seed``        int, seeds parameter init (the data order has ``data.seed``).
``model``       the model preset (``model.name``\\*; see ``miras_jax/models/presets.py``).
``data``        ``corpus``\\*: ``'default'`` (the Shakespeare/Milton quickstart
                corpus), a text file / directory / glob (tokenised once, cached),
                or a prepared directory holding ``index.json`` (used as is).
                ``format`` / ``text_unit`` / ``max_record_tokens`` /
                ``val_fraction``: how raw corpora are prepared;
                ``tokenizer``: a SentencePiece ``.model``; empty trains one
                of ``tokenizer_vocab_size`` (0: the model's vocab) on the corpus;
                ``cache_dir``: where prepared data lives (empty: ``<workdir>/data``).
                ``shards``: data shards of a new run (0: the process count); a
                resume keeps its checkpoint's, on any process count that divides
                or is divided by it (train/data.py).
                ``copy_fraction``: that fraction of each step's rows are rows of
                the fixed-offset copy task (``copy_length`` random byte pieces
                read twice; miras_jax/data/copy_task.py); 0: text only.
``train``       ``steps``\\*, ``batch_size``\\* (global, rows), ``seq_len``\\*, ``lr``\\*,
                warmup + cosine (``warmup_steps``, ``min_lr_ratio``), AdamW
                (``b1``, ``b2``, ``eps``, ``weight_decay``), ``grad_clip``,
                ``grad_accum_steps``, ``compute_dtype`` (``auto``: bfloat16 on
                GPU/TPU, float32 on CPU; parameters and optimiser state are
                always float32), ``remat`` (empty: the model's own policy),
                ``mesh.{data,fsdp,sequence,tensor}`` (one may be -1: the rest
                of the devices; ``sequence`` > 1: context parallelism, linear
                memories and attention only; ``mesh.dcn_*``: slices per axis
                on multi-slice TPU;
                ``mesh.max_replicated_fraction``; see train/sharding.py),
                ``log_every_steps``. A non-finite loss or gradient
                norm always stops the run (nothing of it is saved);
                ``loss_spike_factor`` > 1 also stops it when a loss exceeds that
                factor times the mean of the previous 50 (0: off).
``checkpoint``  ``every_steps``\\* (0: only at the end / on SIGTERM), ``keep_last``,
                ``keep_every`` (also keep every M-th step; 0: none), ``async_save``.
``eval``        validation loss on the held-out split every ``every_steps``
                (0: only at the end) over ``num_batches`` batches of
                ``batch_size`` rows (0: ``train.batch_size``); at the same steps the
                zero-shot ``tasks`` (from ``data_dir``, ``limit`` items each), logged as
                ``eval/<task>/<metric>``.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from miras_jax.models.presets import model_config


def defaults() -> ConfigDict:
  """Every section except a concrete model (``model`` is an empty placeholder)."""
  c = ConfigDict()
  c.seed = 0
  c.model = ConfigDict()

  c.data = d = ConfigDict()
  d.corpus = 'default'
  d.format = 'text'
  d.text_unit = 'file'
  d.max_record_tokens = 2048
  d.val_fraction = 0.01
  d.tokenizer = ''
  d.tokenizer_vocab_size = 0
  d.cache_dir = ''
  d.seed = 0
  d.num_threads = 4
  d.shards = 0
  d.copy_fraction = 0.0
  d.copy_length = 8

  c.train = t = ConfigDict()
  t.steps = 1000
  t.batch_size = 32
  t.seq_len = 1024
  t.lr = 3e-4
  t.min_lr_ratio = 0.1
  t.warmup_steps = 100
  t.weight_decay = 0.1
  t.b1 = 0.9
  t.b2 = 0.95
  t.eps = 1e-8
  t.grad_clip = 1.0
  t.grad_accum_steps = 1
  t.compute_dtype = 'auto'
  t.remat = ''
  t.log_every_steps = 10
  t.loss_spike_factor = 0.0
  # Per-slice mesh axes (one may be -1), slices spanned by each axis over DCN, and the share
  # of parameter bytes allowed to stay unsharded when fsdp x tensor > 1 (train/sharding.py).
  t.mesh = ConfigDict(
    {
      'data': -1,
      'fsdp': 1,
      'sequence': 1,
      'tensor': 1,
      'dcn_data': 1,
      'dcn_fsdp': 1,
      'dcn_sequence': 1,
      'dcn_tensor': 1,
      'max_replicated_fraction': 0.2,
    }
  )

  c.checkpoint = k = ConfigDict()
  k.every_steps = 1000
  k.keep_last = 3
  k.keep_every = 0
  k.async_save = True

  c.eval = e = ConfigDict()
  e.every_steps = 500
  e.num_batches = 16
  e.batch_size = 0
  # Zero-shot tasks at the same steps (miras_jax.evals): comma-separated names
  # ('piqa,hellaswag,...', 'niah', 'mqar'); empty: none. Files from ``data_dir`` (empty:
  # $MIRAS_SHARED_DATA or ../shared/data), first ``limit`` items per task (0: all).
  e.tasks = ''
  e.data_dir = ''
  e.limit = 0

  # Optional Weights & Biases logging (miras_jax/train/wandb_logger.py); empty project: off.
  c.logging = g = ConfigDict()
  g.wandb_project = ''
  g.wandb_entity = ''
  g.wandb_mode = ''  # '' (online), 'offline' or 'disabled'
  return c


def family_config(family: str, size: str) -> ConfigDict:
  """Defaults plus the model preset ``model_config(family, size)``."""
  c = defaults()
  c.model = model_config(family, size)
  return c


# Paper-scale recipe (Miras / Titans §5: context 4096, ~0.5M-token batches, AdamW, cosine):
# size -> (train tokens, peak lr). Steps follow from tokens / (batch_size * seq_len).
PAPER_RECIPE = {
  'tiny': (5e6, 3e-3),
  '170m': (15e9, 3e-4),
  '340m': (15e9, 3e-4),
  '760m': (30e9, 2.5e-4),
  '1.3b': (100e9, 2e-4),
}


def paper_config(family: str, size: str) -> ConfigDict:
  """``family_config`` with the papers' sequence length, batch and token budget.

  Point ``data.corpus`` at the pretraining corpus (e.g. FineWeb-Edu prepared with
  ``python -m miras_jax.data.prepare``) and ``data.tokenizer`` at the 32K Llama-2 model.
  """
  c = family_config(family, size)
  tokens, lr = PAPER_RECIPE[size]
  t = c.train
  t.seq_len = min(4096, int(c.model.max_len)) if 'max_len' in c.model else 4096
  t.batch_size = max(1, 2**19 // t.seq_len)  # ~0.5M tokens per step
  t.steps = max(1, int(tokens // (t.batch_size * t.seq_len)))
  t.lr = lr
  t.warmup_steps = min(2000, max(1, t.steps // 20))
  c.checkpoint.every_steps = 1000
  c.checkpoint.keep_every = 10000
  c.eval.every_steps = 1000
  return c
