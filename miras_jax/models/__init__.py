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

# The modules are imported on first use (PEP 562), so that ``miras_jax.models.config`` (the one
# home of the model defaults, which the layers read) imports without the layers.
_LAZY = {'LM': 'lm', 'MAG': 'lm', 'Block': 'lm', 'count_params': 'lm'}


def __getattr__(name: str) -> Any:
  if name == 'MODEL_REGISTRY':
    from miras_jax.models.lm import LM  # pylint: disable=import-outside-toplevel

    return {'lm': LM}
  if name in _LAZY:
    import importlib  # pylint: disable=import-outside-toplevel

    return getattr(importlib.import_module(f'miras_jax.models.{_LAZY[name]}'), name)
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def build_model(model_cfg: Any):
  """A model from a ConfigDict (miras_jax/models/presets.py), a mapping, or an `LMConfig`."""
  registry = __getattr__('MODEL_REGISTRY')
  cfg = LMConfig.from_config(model_cfg)
  if cfg.name not in registry:
    raise ValueError(f'unknown model {cfg.name!r}; known: {sorted(registry)}')
  return registry[cfg.name](cfg)


__all__ = ['build_model', 'MODEL_REGISTRY', 'LMConfig', 'LM', 'MAG', 'Block', 'count_params']
