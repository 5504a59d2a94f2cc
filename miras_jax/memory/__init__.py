"""The Miras memory core (pure JAX): four design choices, a named zoo, and two proven-equal
implementations (token-by-token reference, chunk-parallel XLA). See DESIGN §1–4."""

from miras_jax.memory.algorithms import GD, Momentum
from miras_jax.memory.api import IMPLEMENTATIONS, memory_forward
from miras_jax.memory.architectures import LinearMemory, MLPMemory
from miras_jax.memory.biases import L2, DotProduct, Huber, Lp, ValueShiftRobust
from miras_jax.memory.chunked import chunked
from miras_jax.memory.reference import memory_step, reference
from miras_jax.memory.retention import Retention
from miras_jax.memory.rules import (
  MEMORA_FORMS,
  RULES,
  MemoryRule,
  fresh_state,
  get_rule,
  init_state,
  list_rules,
  with_options,
)

__all__ = [
  'GD',
  'Momentum',
  'LinearMemory',
  'MLPMemory',
  'DotProduct',
  'Huber',
  'L2',
  'Lp',
  'ValueShiftRobust',
  'Retention',
  'MemoryRule',
  'RULES',
  'get_rule',
  'list_rules',
  'with_options',
  'MEMORA_FORMS',
  'init_state',
  'fresh_state',
  'memory_forward',
  'memory_step',
  'reference',
  'chunked',
  'IMPLEMENTATIONS',
]
