"""The full-precision matmul fixture shared by the layer, model and memory tests.

GPUs run float32 matmuls as TF32 by default (10-bit mantissa), which alone moves two evaluation
orders apart by ~1e-3; these tests compare float32 results to ~1e-5, a contract about the
algorithm. A per-test context, so nothing leaks to other test folders. A conftest enables it
with ``from tests.precision import full_precision_matmuls  # noqa: F401``.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def full_precision_matmuls():
  with jax.default_matmul_precision('highest'):
    yield
