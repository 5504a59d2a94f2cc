"""``python -m miras_jax.generate``: sample from a checkpoint (the code lives in
:mod:`miras_jax.inference.cli`)."""

from miras_jax.inference.cli import cli, main  # noqa: F401

if __name__ == '__main__':
  cli()
