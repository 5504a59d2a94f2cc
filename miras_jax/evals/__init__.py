"""Evaluation: lm-evaluation-harness-style zero-shot tasks, synthetic recall, an lm-eval adapter.

    from miras_jax.evals import evaluate
    out = evaluate(params, model_cfg, tokenizer, ["piqa", "lambada"], data_dir, limit=100,
                   batch_size=8, max_len=4096)
    out["results"]["piqa"]["acc"], out["table"]

CLI: ``python -m miras_jax.eval --workdir=RUN --tasks=...`` (see ``miras_jax/evals/cli.py``).
"""

from miras_jax.evals.harness import evaluate, format_table, paper_table, run_tasks
from miras_jax.evals.scoring import Scorer, make_apply_fn
from miras_jax.evals.tasks import PAPER_TASKS, TASKS, TaskDataError, load_task

__all__ = [
  'evaluate',
  'format_table',
  'paper_table',
  'run_tasks',
  'Scorer',
  'make_apply_fn',
  'PAPER_TASKS',
  'TASKS',
  'TaskDataError',
  'load_task',
]
