"""Model tests: full-precision matmuls (compared at ~1e-5; tests/precision.py)."""

from tests.precision import full_precision_matmuls  # noqa: F401  (autouse fixture)
