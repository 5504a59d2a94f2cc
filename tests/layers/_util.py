"""Shared helpers for the layer tests (comparisons: miras_jax/testing.py)."""

import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[2]


def run_on_cpu_devices(
  script: str, *args: str, devices: int = 8, timeout: int = 600, flags: str = ''
) -> str:
  """Run ``python -c script *args`` with ``devices`` simulated CPU devices (the device count is
  fixed when JAX starts, hence a subprocess); assert it succeeds and return its stdout."""
  env = dict(
    os.environ,
    JAX_PLATFORMS='cpu',
    XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} {flags}'.strip(),
    PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get('PYTHONPATH', ''),
  )
  proc = subprocess.run(
    [sys.executable, '-c', script, *args],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-4000:]
  return proc.stdout


def numpy_params(module, *args, seed=0, std=0.3, method=None):
  """Random parameters for ``module`` without compiling its initializers.

  The parameter tree comes from ``jax.eval_shape(module.init, ...)`` (no compilation); values
  are numpy normals times ``std`` in each leaf's dtype. Keeps tiny tests fast on CPU, where
  compiling the initializers op by op costs more than the test.
  """
  import flax.linen as nn

  kwargs = {} if method is None else {'method': method}
  shapes = nn.unbox(
    jax.eval_shape(lambda *a: module.init(jax.random.PRNGKey(0), *a, **kwargs), *args)
  )
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
    lambda s: (rng.standard_normal(s.shape) * std).astype(s.dtype), shapes
  )


@functools.partial(jax.jit, static_argnames=('backend', 'window'))
def out_and_grads(q, k, v, ct, seg, backend, window):
  """``causal_attention`` output and the VJP of ``ct`` w.r.t. q, k, v, jitted with ``backend``
  and ``window`` static; shared by the CPU and GPU backend tests."""
  from miras_jax.layers.attention_backends import causal_attention

  def f(q, k, v):
    return causal_attention(q, k, v, segment_ids=seg, window_size=window, backend=backend)

  out, vjp = jax.vjp(f, q, k, v)
  return out, vjp(ct)
