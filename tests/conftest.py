"""Suite-wide settings, applied before any test module imports JAX."""

import os

# With libtpu installed (the `test` extra brings it, for the Mosaic compile tests of
# tests/pallas_kernels and tests/aot), every process that starts JAX opens libtpu, and a second
# process (pytest-xdist's other worker) fails on libtpu's multi-process lockfile unless this is set.
# No TPU is used: on a CPU machine JAX falls back to its CPU backend.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
