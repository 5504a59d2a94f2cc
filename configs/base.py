"""Any family at any size with the shared defaults: ``--config=configs/base.py:<family>[,<size>]``.

Defaults and their documentation: ``miras_jax/train/defaults.py``; model presets:
``miras_jax/models/presets.py``.
"""

from miras_jax.models.presets import parse_arg
from miras_jax.train.defaults import family_config


def get_config(arg=None):
  return family_config(*parse_arg(arg))
