"""Layer tests compare float32 results to 1e-5: full-precision matmuls (tests/precision.py)."""

from tests.precision import full_precision_matmuls  # noqa: F401  (autouse fixture)
