"""Memory tests: full-precision matmuls (the equivalence contract is about the algorithm;
tests/precision.py)."""

from tests.precision import full_precision_matmuls  # noqa: F401  (autouse fixture)
