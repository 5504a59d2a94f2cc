"""Which Pallas lowering a kernel call uses: 'tpu' (Mosaic), 'gpu' (Triton), or TPU interpret
mode on CPU. ``compile_pallas_for_tpu()`` (miras_jax.layers.attention_backends.pallas_tpu.interpret) switches CPU
tracing to Mosaic for ahead-of-time compilation for a TPU topology (DESIGN §8)."""

from __future__ import annotations

import jax

from miras_jax.layers.attention_backends.pallas_tpu.interpret import (
  COMPILE_FOR_TPU,
  compile_pallas_for_tpu,  # noqa: F401 (re-export)
)

BACKENDS = ('auto', 'tpu', 'gpu')


def resolve(backend: str, interpret: bool | None) -> tuple[str, bool]:
  """(lowering 'tpu' | 'gpu', interpret?) for a call."""
  if backend not in BACKENDS:
    raise ValueError(f'unknown Pallas backend {backend!r}; choose one of {BACKENDS}')
  host = jax.default_backend()
  if backend == 'auto':
    backend = 'gpu' if host == 'gpu' else 'tpu'
  if interpret is None:
    native = host == backend or (backend == 'tpu' and COMPILE_FOR_TPU.get())
    interpret = not native
  return backend, bool(interpret)


def table_key(table: dict, lowering: str, interpret: bool) -> str:
  """The row of a block-size table for a call: the host chip's when the kernel runs on it,
  'tpu v5' when compiling for a TPU from another host (AOT), 'cpu' in interpret mode."""
  if interpret:
    return 'cpu'
  if jax.default_backend() == lowering:
    kind = jax.devices()[0].device_kind.lower()
    for key in table:
      if kind.startswith(key):
        return key
  return 'tpu v5' if lowering == 'tpu' else 'gpu'
