"""memora at the papers' sizes: ``--config=configs/memora.py:<size>`` (tiny, 170m, 340m, 760m, 1.3b).

Model preset from ``miras_jax/models/presets.py``; training recipe from
``miras_jax/train/defaults.py:paper_config``.
"""

from miras_jax.train.defaults import paper_config


def get_config(arg=None):
  return paper_config('memora', arg or '340m')
