"""``python -m miras_jax.eval``: evaluate a checkpoint (the code lives in :mod:`miras_jax.evals`)."""

from miras_jax.evals.__main__ import cli, main  # noqa: F401

if __name__ == '__main__':
  cli()
