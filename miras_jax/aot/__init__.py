"""Will this config fit on that TPU slice? Compile the trainer's step for it, on a CPU machine.

    pip install 'miras-jax[tpu]'          # libtpu: the TPU compiler (no TPU needed)
    python -m miras_jax.aot --config=configs/moneta.py:340m --topology=v5e:4x4 \\
        [--config.train.mesh.fsdp=-1 --config.train.mesh.data=1 ...] [--save=aot.json]
    python -m miras_jax.aot --config=configs/moneta.py:1.3b --topology=v5p:4x4x4 --num_slices=2 \
        --config.train.mesh.dcn_data=2 --config.train.mesh.data=1 --config.train.mesh.fsdp=-1

Builds the sharded train step (and eval step) exactly as ``python -m miras_jax.train`` does
— the model from ``train.loop.build_model``, the step from ``make_loss_fn`` /
``make_train_step`` / ``make_eval_step``, shardings from ``train.sharding`` and the mesh
from ``train.mesh`` — on abstract (shape-only) state, and compiles it ahead of time with
XLA:TPU for the chips of ``--topology`` (``jax.experimental.topologies``; JAX's AOT guide,
https://docs.jax.dev/en/latest/aot.html). Pallas kernels are compiled with Mosaic, not
interpreted. ``jax.distributed`` is never initialised. Prints, per chip: parameter and
optimiser bytes, the rest of the arguments (the batch), XLA temporaries, the total against
the chip's HBM, a ``FITS`` / ``DOES NOT FIT`` verdict with the headroom, the compiled FLOPs
of one step and the MFU bound they imply. ``--save`` writes the same numbers as JSON.
Exit status: 0 when it fits, 1 when it does not, 2 for bad input (one line).

A program that the TPU compiler itself rejects for lack of HBM is reported as
``DOES NOT FIT`` with the compiler's own figures. ``train.compute_dtype=auto`` means
bfloat16 here (the trainer's choice on TPU).

The package: `chips` (HBM and peak FLOP/s per TPU generation), `compile` (the step compiled
for a topology), `report` (what it costs, and the printed table), ``__main__`` (the CLI).
Nothing here imports JAX at import time: the CLI sets the platform first.
"""

from miras_jax.aot.chips import CHIPS, Chip
from miras_jax.aot.compile import compile_for_topology
from miras_jax.aot.report import AotReport, format_report

__all__ = ['CHIPS', 'Chip', 'AotReport', 'compile_for_topology', 'format_report']
