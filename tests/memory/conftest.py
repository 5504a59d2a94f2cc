import jax
import pytest


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  """GPUs run fp32 matmuls as TF32 by default (10-bit mantissa), which alone moves the two
  evaluation orders apart by ~1e-3; the equivalence contract is about the algorithm."""
  with jax.default_matmul_precision('highest'):
    yield
