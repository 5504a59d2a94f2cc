"""Comparison helpers of the test suite, one home for every test folder (and the benchmarks'
error column): the relative-RMS criterion of STYLE.md, tolerant of a few ulps on large
entries, strict on systematic error.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ['rel_err', 'assert_close', 'assert_tree_close', 'outputs_and_vjp']


def rel_err(a, b) -> float:
  """Relative RMS error ‖a − b‖ / ‖b‖ (absolute when ‖b‖ is ~0); ``b`` is the reference."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  den = np.linalg.norm(b)
  num = np.linalg.norm(a - b)
  return num / den if den > 1e-12 else num


def assert_close(a, b, tol: float = 1e-5, what: str = '', *, atol: float = 0.0) -> None:
  """``a`` (the result) equals the reference ``b``: same shape, and either every entry within
  ``atol`` or ``a`` finite with ``rel_err(a, b) <= tol``."""
  a = np.asarray(a, np.float64)
  b = np.asarray(b, np.float64)
  assert a.shape == b.shape, f'{what}: shapes {a.shape} != {b.shape}'
  if np.abs(a - b).max(initial=0.0) <= atol:
    return
  assert np.all(np.isfinite(a)), f'{what}: non-finite values'
  e = rel_err(a, b)
  assert e <= tol, (
    f'{what}: relative error {e:.3e} > {tol:.1e} (max abs err {np.abs(a - b).max():.3e})'
  )


def assert_tree_close(a, b, tol: float, what: str = '') -> None:
  """`assert_close` on every leaf of two trees of the same structure."""
  la = jax.tree_util.tree_flatten_with_path(a)[0]
  lb = jax.tree_util.tree_flatten_with_path(b)[0]
  assert len(la) == len(lb), f'{what}: different structures'
  for (pa, xa), (_, xb) in zip(la, lb):
    assert_close(xa, xb, tol, f'{what}{jax.tree_util.keystr(pa)}')


def outputs_and_vjp(fn, *args, has_aux: bool = False):
  """Under jit: ``(fn(*args), VJP of fn at args)`` (with ``has_aux``: ``(out, aux, VJP)``), the VJP
  applied to a fixed cotangent cos(0), cos(1), … per output leaf, so every element is weighted
  differently and an error in one place cannot cancel against another (as a ones cotangent can)."""

  def go(*a):
    res = jax.vjp(fn, *a, has_aux=has_aux)
    out, vjp = res[0], res[1]
    # Built in fp32, then cast: a bf16 arange is not exact past 256, so a bf16 output would get
    # another cotangent than the fp32 reference it is compared with.
    ct = jax.tree.map(
      lambda o: jnp.cos(jnp.arange(o.size, dtype=jnp.float32)).reshape(o.shape), out
    )
    ct = jax.tree.map(lambda c, o: c.astype(o.dtype), ct, out)
    return (out, res[2], vjp(ct)) if has_aux else (out, vjp(ct))

  return jax.jit(go)(*args)
