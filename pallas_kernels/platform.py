"""Which Pallas lowering a kernel call uses: 'tpu' (Mosaic), 'gpu' (Triton), or TPU interpret
mode on CPU; the Triton compiler parameters every GPU kernel passes (``gpu_params``), and the
ahead-of-time lowering of a function for CUDA from any host (``lower_for_cuda``). ``compile_pallas_for_tpu()`` (miras_jax.layers.attention_backends.pallas_tpu.interpret) switches CPU
tracing to Mosaic for ahead-of-time compilation for a TPU topology (DESIGN §8)."""

from __future__ import annotations

import jax
from jax.experimental.pallas import triton as pltriton

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


def gpu_params(num_warps: int = 4, num_stages: int = 2):
  """Compiler parameters of every GPU ``pallas_call`` here. They select the Triton lowering: in
  the pinned JAX (0.10.2) a ``pallas_call`` without them lowers to Mosaic GPU
  (``jax_pallas_use_mosaic_gpu`` defaults to True), which has no ``dot_general`` for these
  kernels' array-style bodies (measured with ``lower_for_cuda``)."""
  return pltriton.CompilerParams(num_warps=num_warps, num_stages=num_stages)


def lower_for_cuda(fn, *args):
  """StableHLO text of ``jax.jit(fn)`` lowered for CUDA, from any host (no GPU needed).

  JAX lowers each Pallas GPU kernel to Triton IR here (the ``__gpu$xla.gpu.triton`` custom calls),
  so a primitive or shape Triton cannot take fails now, as it would on a GPU; compiling that IR to
  PTX (ptxas) still happens only on a GPU. ``args``: arrays or ``jax.ShapeDtypeStruct``."""
  return jax.jit(fn).trace(*args).lower(lowering_platforms=('cuda',)).as_text()


TRITON_CALL = 'xla.gpu.triton'  # the custom-call target of a Pallas Triton kernel in lower_for_cuda
