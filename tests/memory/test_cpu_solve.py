"""The exact delta rule's chunk solve on CPU: no LAPACK call, and the blockwise inverse it uses.

jaxlib 0.10's CPU LAPACK kernels split a batch over XLA:CPU's intra-op pool and block a pool
thread on the pieces, which deadlocked training DeltaNet on 2 cores (miras_jax/memory/chunked.py
``_unit_lower_solve``; benchmarks/README.md, "deadlock"). The hang itself is a race (tens of
seconds into training), so the test checks its precondition: the differentiated chunk lowers to
no LAPACK custom call on CPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.memory import chunked, get_rule
from miras_jax.memory.chunked import _unit_lower_inverse
from miras_jax.memory.testing import random_inputs


@pytest.mark.skipif(jax.default_backend() != 'cpu', reason='the CPU lowering')
def test_wy_chunk_lowers_to_no_lapack_call_on_cpu():
  rule = get_rule('gated_deltanet')  # the WY chunk (DeltaNet's too)
  inp = random_inputs(rule, jax.random.PRNGKey(0), B=1, H=1, T=8, dk=4)

  def loss(q, k, v):
    y, _ = chunked(rule, q, k, v, inp['gates'], w0=inp['w0'], outer=inp['outer'], chunk_size=4)
    return jnp.sum(y * y)

  text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(inp['q'], inp['k'], inp['v']).as_text()
  assert 'lapack' not in text, 'a LAPACK kernel in the differentiated chunk'


@pytest.mark.parametrize('b', [1, 5, 16, 64])
def test_unit_lower_inverse(b):
  # Any b (not only powers of 2); entries as large as the delta rule's β kᵢᵀkⱼ decays (|·| ≤ 1).
  rng = np.random.default_rng(b)
  n = np.tril(rng.uniform(-1.0, 1.0, (b, b)), -1) / np.sqrt(b)
  with jax.enable_x64(True):
    x = np.asarray(_unit_lower_inverse(jnp.asarray(n)))
  np.testing.assert_allclose(x @ (np.eye(b) + n), np.eye(b), atol=1e-10)
  assert np.all(np.triu(x, 1) == 0)
