"""``memory_forward(..., implementation='pallas')``: a Miras ``MemoryRule`` on the Pallas kernels.

Covered rules: linear memory with the Hebbian (dot-product) bias and identity retention map, no
momentum (linear attention, RetNet, Mamba2, GLA → linear_memory), and the WY-form delta rules
(DeltaNet, Gated DeltaNet, Longhorn → delta_rule), and the deep memories (Titans, Moneta, Yaad,
Memora, TTT-MLP, TTT-Linear → mlp_memory, same state dict as the XLA path; the initial state must
sit on a chunk boundary). Others raise a one-line error.

State: the same dict as the XLA chunked path ({'A', 'Wg', 'pos'}; A = [dv, dk], the transpose of
the kernels' S). For the delta rules it is identical. For the dot-product rules the gradient point
``Wg`` is never read (the bias's gradient −v does not depend on the memory), and the kernels have
no notion of the semantic chunk grid, so this path returns ``Wg = A`` (the current memory) and
the exact ``pos``; continuing from it on any implementation gives the same results
(tests/pallas_kernels/test_memory_dispatch.py).
"""

from __future__ import annotations

import jax.numpy as jnp

from miras_jax.memory import common
from miras_jax.memory.biases import DotProduct
from miras_jax.memory.rules import MemoryRule


def kernel_for(rule: MemoryRule) -> str | None:
  """'linear_memory' | 'delta_rule' | 'mlp_memory' | None (not covered)."""
  from pallas_kernels.mlp_memory.api import supported

  if supported(rule):
    return 'mlp_memory'
  ret = rule.retention
  if not rule.arch.is_linear or ret.map != 'identity' or rule.algorithm.momentum:
    return None
  if rule.form == 'wy':
    return 'delta_rule'
  if isinstance(rule.bias, DotProduct) and ret.read_mode == 'identity':
    return 'linear_memory'
  return None


def memory_pallas(
  rule: MemoryRule,
  q,
  k,
  v,
  gates=None,
  *,
  w0,
  outer=None,
  state=None,
  segment_ids=None,
  chunk_size: int = 64,
  grad_horizon: int | None = None,
  interpret: bool | None = None,
):
  """Same signature and results as ``chunked`` for the covered rules (see the module doc)."""
  op = kernel_for(rule)
  if op is None:
    raise ValueError(
      f'rule {rule.name}: no Pallas kernel (covered: linear memory with dot-product bias or the '
      f"WY delta rules, identity retention, no momentum; the deep memories but Memora's lag "
      f"form); use implementation='xla'"
    )
  if grad_horizon:
    raise ValueError("grad_horizon (truncated BPTT) is not supported by implementation='pallas'")
  if op == 'mlp_memory':
    from pallas_kernels.mlp_memory.api import mlp_memory

    kw = dict(outer=outer, state=state, segment_ids=segment_ids, chunk_size=chunk_size)
    return mlp_memory(rule, q, k, v, gates, w0=w0, interpret=interpret, **kw)
  P = common.prepare(rule, q, k, v, gates, w0, outer, state, segment_ids)
  T = q.shape[2]
  reset = P['reset'] if segment_ids is not None else None
  h0 = jnp.swapaxes(P['state']['A'][0], -1, -2)  # [B, H, dk, dv]
  w_reset = jnp.swapaxes(P['fresh']['A'][0], -1, -2)  # [H, dk, dv]
  la = P['la'] if rule.retention.decay != 'none' else None
  kw = dict(reset=reset, initial_state=h0, reset_state=w_reset, interpret=interpret)
  if op == 'delta_rule':
    from pallas_kernels.delta_rule.api import delta_rule

    y, s = delta_rule(q, k.astype(q.dtype), v.astype(q.dtype), P['eta'], la, **kw)
    pos = jnp.zeros_like(P['state']['pos'])
  else:
    from pallas_kernels.linear_memory.api import linear_memory

    y, s = linear_memory(q, k.astype(q.dtype), v.astype(q.dtype), P['eta'], la, **kw)
    pos = ((P['state']['pos'] + T) % int(chunk_size)).astype(jnp.int32)
  a = jnp.swapaxes(s, -1, -2)
  return y, {'A': (a,), 'Wg': (a,), 'pos': pos}
