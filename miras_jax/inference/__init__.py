"""Inference: sampling rules (`sampling`), batched generation through the decoding caches
(`generation`) and the ``python -m miras_jax.generate`` command (`cli`)."""

from miras_jax.inference.generation import GenerationStats, generate
from miras_jax.inference.sampling import sample, top_k_filter, top_p_filter

__all__ = ['generate', 'GenerationStats', 'sample', 'top_k_filter', 'top_p_filter']
