"""GPU-only: the 'cudnn' backend really runs cuDNN fused attention and matches 'xla' in bf16.

Run on a machine with a GPU: ``python -m pytest -m accelerator tests/layers``.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.layers.attention_backends import causal_attention
from miras_jax.testing import assert_close

from ._util import out_and_grads

pytestmark = [
  pytest.mark.accelerator,
  pytest.mark.skipif(jax.default_backend() != 'gpu', reason='needs a GPU'),
]


@pytest.mark.parametrize(
  't,window,use_seg', [(256, None, False), (256, 64, False), (256, None, True), (200, 48, True)]
)
def test_cudnn_matches_xla_bf16(t, window, use_seg):
  b, h, hkv, d = 2, 8, 2, 64
  rng = np.random.default_rng(0)
  q, k, v, ct = (
    jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
    for s in [(b, t, h, d), (b, t, hkv, d), (b, t, hkv, d), (b, t, h, d)]
  )
  seg = None
  if use_seg:
    seg = jnp.asarray(np.repeat([[0, 1, 2, 3]], b, 0).repeat(t // 4 + 1, 1)[:, :t], jnp.int32)
  hlo = out_and_grads.lower(q, k, v, ct, seg, 'cudnn', window).compile().as_text()
  assert 'cudnn$fmha' in hlo, 'cuDNN fused attention was not used'
  # float32 XLA reference on the same (bf16-rounded) inputs.
  f32 = lambda a: a.astype(jnp.float32)
  ref_out, ref_grads = out_and_grads(f32(q), f32(k), f32(v), f32(ct), seg, 'xla', window)
  out, grads = out_and_grads(q, k, v, ct, seg, 'cudnn', window)
  assert out.dtype == jnp.bfloat16
  assert_close(out.astype(jnp.float32), ref_out, 2e-2, atol=1e-6)
  for r, g in zip(ref_grads, grads):
    assert_close(g.astype(jnp.float32), r, 3e-2, atol=1e-6)


@pytest.mark.parametrize('t,window', [(252, 64), (200, None)])
def test_cudnn_with_persistent_prefix_matches_xla_bf16(t, window):
  """Titans' persistent tokens: the dense-mask cuDNN call (T queries, N_p + T keys)."""
  from miras_jax.layers.attention_backends import prefix_visibility

  b, h, hkv, d, n_p = 2, 8, 2, 64, 4
  rng = np.random.default_rng(1)
  q, k, v, ct = (
    jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
    for s in [(b, t, h, d), (b, t, hkv, d), (b, t, hkv, d), (b, t, h, d)]
  )
  kp, vp = (jnp.asarray(rng.standard_normal((n_p, hkv, d)), jnp.bfloat16) for _ in range(2))
  seg = jnp.asarray(np.repeat([[0, 1]], b, 0).repeat(t // 2 + 1, 1)[:, :t], jnp.int32)
  pos = jnp.asarray(np.tile(np.arange(t), (b, 1)))
  visible = prefix_visibility(pos, n_p, None)

  @functools.partial(jax.jit, static_argnames='backend')
  def run(q, k, v, kp, vp, ct, backend):
    f = lambda q, k, v, kp, vp: causal_attention(
      q, k, v, segment_ids=seg, window_size=window, backend=backend, prefix=(kp, vp, visible)
    )
    out, vjp = jax.vjp(f, q, k, v, kp, vp)
    return out, vjp(ct)

  hlo = run.lower(q, k, v, kp, vp, ct, 'cudnn').compile().as_text()
  assert 'cudnn$fmha' in hlo, 'cuDNN fused attention was not used'
  f32 = lambda a: a.astype(jnp.float32)
  ref_out, ref_grads = run(*(f32(a) for a in (q, k, v, kp, vp, ct)), 'xla')
  out, grads = run(q, k, v, kp, vp, ct, 'cudnn')
  assert_close(out.astype(jnp.float32), ref_out, 2e-2, atol=1e-6)
  for r, g in zip(ref_grads, grads):
    assert_close(g.astype(jnp.float32), r, 3e-2, atol=1e-6)
