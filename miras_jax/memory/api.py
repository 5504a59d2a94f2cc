"""One entry point for every memory: ``memory_forward`` picks an implementation.

implementation = 'auto' | 'reference' | 'xla' | 'pallas'
  'reference'  token-by-token lax.scan (reference.py) — the spec, slow.
  'xla'        chunk-parallel dual form (chunked.py) — the default on every platform.
  'pallas'     the Pallas TPU / GPU kernels (pallas_kernels/, interpret mode on CPU) for the
               linear-memory and delta rules and the deep memories (pallas_kernels/mlp_memory;
               initial state on a chunk boundary); a one-line error for other rules.
  'auto'       'xla' (the kernels are picked on TPU / GPU only once benchmarks show them faster;
               not yet measured, so 'auto' stays on 'xla' everywhere).
``inner_form`` ('auto' | 'matmul' | 'scan', the 'xla' path's deep / general chunk): its in-chunk
steps by masked [b, b] matmuls or by an associative scan over the tokens; 'auto' picks per platform
(memory/chunk_scan.py ``AUTO``).
All give the same outputs, final state and gradients for the same chunk size
(tests/memory/test_equivalence.py).
"""

from __future__ import annotations

from miras_jax.memory.chunk_scan import INNER_FORMS
from miras_jax.memory.chunked import chunked
from miras_jax.memory.reference import memory_step, reference
from miras_jax.memory.rules import MemoryRule

IMPLEMENTATIONS = ('auto', 'reference', 'xla', 'pallas')


def memory_forward(
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
  implementation: str = 'auto',
  remat_group: int = 4,
  aligned: bool | None = None,
  grad_horizon: int | None = None,
  inner_form: str = 'auto',
):
  """q, k [B, H, T, dk], v [B, H, T, dv] → (y [B, H, T, dv], final state [B, H, ...]).

  ``grad_horizon`` (tokens, a multiple of ``chunk_size``; None = exact): truncated
  back-propagation through the memory state, see common.gradient_cuts. Outputs are unchanged.
  """
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(
      f'unknown memory implementation {implementation!r}; choose one of {IMPLEMENTATIONS}'
    )
  if inner_form not in INNER_FORMS:
    raise ValueError(f'unknown inner_form {inner_form!r}; choose one of {INNER_FORMS}')
  if implementation == 'pallas' and inner_form == 'scan':
    raise ValueError(
      "inner_form='scan' is the xla path's (the Pallas kernels use the matmul form); "
      "use implementation='xla'"
    )
  if implementation == 'reference':
    return reference(
      rule,
      q,
      k,
      v,
      gates,
      w0=w0,
      outer=outer,
      state=state,
      segment_ids=segment_ids,
      chunk_size=chunk_size,
      grad_horizon=grad_horizon,
    )
  if implementation == 'pallas':
    from pallas_kernels.memory_dispatch import memory_pallas  # lazy: pallas_kernels imports us

    kw = dict(outer=outer, state=state, segment_ids=segment_ids, chunk_size=chunk_size)
    return memory_pallas(rule, q, k, v, gates, w0=w0, grad_horizon=grad_horizon, **kw)
  return chunked(
    rule,
    q,
    k,
    v,
    gates,
    w0=w0,
    outer=outer,
    state=state,
    segment_ids=segment_ids,
    chunk_size=chunk_size,
    remat_group=remat_group,
    aligned=aligned,
    grad_horizon=grad_horizon,
    inner_form=inner_form,
  )


__all__ = ['memory_forward', 'memory_step', 'reference', 'chunked', 'IMPLEMENTATIONS']
