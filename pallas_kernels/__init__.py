"""Pallas kernels for the matrix-valued memories (DESIGN §3): one folder per op, each with a
small ``api.py`` (one public function, platform dispatch), ``pallas_tpu.py`` (Mosaic),
``pallas_gpu.py`` (Triton) and ``tuned.py`` (block sizes per chip)."""
