"""Layer tests compare float32 results to 1e-5; keep matmuls in full float32 on every platform
(GPUs default to TF32 for float32 matmuls). A per-test context, so nothing leaks to other
test folders."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  with jax.default_matmul_precision('highest'):
    yield
