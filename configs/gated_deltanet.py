"""gated_deltanet at the papers' sizes: ``--config=configs/gated_deltanet.py:<size>`` (tiny, 170m, 340m, 760m, 1.3b).

Model preset from ``miras_jax/models/presets.py``; training recipe from
``miras_jax/train/defaults.py:paper_config``.
"""

from miras_jax.train.defaults import paper_config


def get_config(arg=None):
  return paper_config('gated_deltanet', arg or '340m')
