"""``python -m miras_jax.eval``: evaluate a checkpoint, the one spelling of the evaluation CLI
(like ``python -m miras_jax.generate``; the code lives in :mod:`miras_jax.evals.cli`)."""

from miras_jax.evals.cli import cli

if __name__ == '__main__':
  cli()
