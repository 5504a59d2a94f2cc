"""When a Pallas TPU kernel runs interpreted (off TPU, for tests) and when it compiles."""

from __future__ import annotations

import contextlib
import contextvars

import jax

COMPILE_FOR_TPU = contextvars.ContextVar('miras_compile_pallas_for_tpu', default=False)


@contextlib.contextmanager
def compile_pallas_for_tpu():
  """Inside this context ``interpret=None`` means "compile the Mosaic kernel" even though the
  host backend is not a TPU: for ahead-of-time compilation for a TPU topology from a CPU
  machine (scripts/aot_tpu_compile.py, DESIGN.md §8), where the model's layers leave
  ``interpret`` unset."""
  token = COMPILE_FOR_TPU.set(True)
  try:
    yield
  finally:
    COMPILE_FOR_TPU.reset(token)


def resolve_interpret(interpret: bool | None) -> bool:
  """``interpret=None`` means "interpret unless on a TPU (or compiling for one)"."""
  if interpret is not None:
    return bool(interpret)
  return jax.default_backend() != 'tpu' and not COMPILE_FOR_TPU.get()


def in_tpu_interpret_mode(fn, interpret: bool | None):
  """``fn`` with its forward *and* backward Pallas calls traced in TPU interpret mode.

  ``pltpu.force_tpu_interpret_mode()`` acts on the ``pallas_call``s traced inside it, but a
  kernel's backward pass is traced later, when the VJP is applied; so the VJP is wrapped in a
  ``custom_vjp`` whose forward and backward both enter the context. ``interpret=None`` means
  "interpret unless on a TPU"; on a TPU (``interpret`` false) ``fn`` is returned unchanged.
  """
  if not resolve_interpret(interpret):
    return fn
  from jax.experimental.pallas import tpu as pltpu

  @jax.custom_vjp
  def wrapped(*args):
    with pltpu.force_tpu_interpret_mode():
      return fn(*args)

  def wrapped_fwd(*args):
    with pltpu.force_tpu_interpret_mode():
      out, vjp_fn = jax.vjp(fn, *args)
    return out, vjp_fn  # a jax.tree_util.Partial: a valid residual pytree

  def wrapped_bwd(vjp_fn, ct):
    with pltpu.force_tpu_interpret_mode():
      return vjp_fn(ct)

  wrapped.defvjp(wrapped_fwd, wrapped_bwd)
  return wrapped
