"""Model tests: full-precision matmuls (compared at ~1e-5)."""

import jax
import pytest


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
  with jax.default_matmul_precision('highest'):
    yield
