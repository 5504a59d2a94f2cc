"""Language models: a Llama-style decoder with a per-layer mixer pattern (DESIGN.md §5).

    from miras_jax.models import build_model
    model = build_model(model_config('moneta', 'tiny'))        # miras_jax/models/presets.py
    params = model.init(key, tokens)['params']
    logits = model.apply({'params': params}, tokens, segment_ids)  # [B, T, V] float32
    cache = model.init_cache(batch, max_len)
    logits, cache = model.apply({'params': params}, prompt, cache, method=model.decode)

``MODEL_REGISTRY`` maps ``model_cfg.name`` to the module class (one today: 'lm').
"""

from __future__ import annotations

from typing import Any

from miras_jax.models.config import LMConfig
from miras_jax.models.lm import LM, MAG, Block, count_params

MODEL_REGISTRY = {'lm': LM}


def build_model(model_cfg: Any) -> LM:
  """A model from a ConfigDict (miras_jax/models/presets.py), a mapping, or an `LMConfig`."""
  cfg = LMConfig.from_config(model_cfg)
  if cfg.name not in MODEL_REGISTRY:
    raise ValueError(f'unknown model {cfg.name!r}; known: {sorted(MODEL_REGISTRY)}')
  return MODEL_REGISTRY[cfg.name](cfg)


__all__ = ['build_model', 'MODEL_REGISTRY', 'LMConfig', 'LM', 'MAG', 'Block', 'count_params']
