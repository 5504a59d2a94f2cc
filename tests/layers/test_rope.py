"""RoPE: relative-position property, identity at 0, norm preservation, complex-number form."""

import jax
import jax.numpy as jnp
import numpy as np

from miras_jax.layers.rope import apply_rope
from miras_jax.testing import assert_close


def test_scores_depend_only_on_position_difference():
  rng = np.random.default_rng(0)
  d = 12  # not a power of two
  q, k = rng.standard_normal((2, d)).astype(np.float32)
  pairs = np.array([(5, 2), (3, 9), (0, 0), (17, 17)])
  shifts = np.array([0, 1, 7, 100, 1234])
  q_pos = (pairs[:, 0][:, None] + shifts[None]).reshape(1, -1)  # [1, pairs * shifts]
  k_pos = (pairs[:, 1][:, None] + shifts[None]).reshape(1, -1)
  n = q_pos.shape[1]

  @jax.jit
  def scores(theta):
    rq = apply_rope(jnp.broadcast_to(q, (1, n, 1, d)), q_pos, theta)
    rk = apply_rope(jnp.broadcast_to(k, (1, n, 1, d)), k_pos, theta)
    return jnp.sum(rq * rk, axis=-1).reshape(len(pairs), len(shifts))

  for theta in (10_000.0, 500_000.0):
    s = np.asarray(scores(theta))
    # every shift gives the score of shift 0
    np.testing.assert_allclose(s, np.broadcast_to(s[:, :1], s.shape), rtol=1e-4, atol=1e-4)
    # and the score does depend on the difference: (5, 2) differs from no rotation at all
    assert abs(s[0, 0] - q @ k) > 1e-3


def test_matches_complex_rotation_and_batched_positions():
  b, t, h, d = 2, 5, 3, 8
  x = np.random.default_rng(1).standard_normal((b, t, h, d)).astype(np.float32)
  pos = np.array([[0, 1, 2, 3, 4], [7, 8, 0, 1, 2]], np.int32)  # per-row, restarting
  y = jax.jit(apply_rope)(x, pos)
  assert y.shape == x.shape and y.dtype == x.dtype
  # Half-rotation layout: pair (x[i], x[i + D/2]) is the complex number x[i] + i x[i + D/2].
  z = x[..., : d // 2] + 1j * x[..., d // 2 :].astype(np.float64)
  freq = 10_000.0 ** (-np.arange(0, d, 2) / d)
  z = z * np.exp(1j * pos[..., None, None] * freq)
  assert_close(y, np.concatenate([z.real, z.imag], -1), 1e-5, atol=1e-6)
  # position 0 is the identity; rotations preserve norms.
  np.testing.assert_array_equal(x[1, 2], y[1, 2])
  assert_close(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), 1e-6, atol=1e-6)
  assert jax.eval_shape(apply_rope, x.astype(jnp.bfloat16), pos).dtype == jnp.bfloat16
