"""Model tests: full-precision matmuls (compared at ~1e-5) and the repo root on sys.path so that
``configs.models`` imports however pytest is launched."""

import os
import sys

import jax
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)


@pytest.fixture(autouse=True)
def _full_precision_matmuls():
    with jax.default_matmul_precision('highest'):
        yield
