"""Shared helpers of the model tests."""

import jax
import jax.numpy as jnp

from miras_jax.models import build_model
from miras_jax.models.presets import model_config
from tests.layers._util import numpy_params  # noqa: F401  (re-exported)

VOCAB = 256


def tiny(family, **overrides):
  """The tiny preset of ``family`` with overrides, and its model."""
  cfg = model_config(family, 'tiny')
  for k, v in overrides.items():
    cfg[k] = v
  return cfg, build_model(cfg)


def tokens(shape, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), shape, 0, VOCAB, dtype=jnp.int32)


def random_params(model, toks, std=0.1, seed=0):
  """Random parameters without compiling ``init`` (see tests/layers/_util.py)."""
  return numpy_params(model, toks, std=std, seed=seed)
