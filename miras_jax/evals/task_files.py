"""Where the zero-shot tasks' files are, and a one-line error naming the missing ones.

``TASK_FILES`` is the single list of paths (the layout of the tasks' own releases), which
data/evals/download.py writes and miras_jax/evals/tasks.py reads.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

# Other names accepted for a task (lm-eval's, and short ones).
ALIASES = {
  'lambada_openai': 'lambada',
  'social_iqa': 'siqa',
  'wikitext2': 'wikitext',
  'wiki': 'wikitext',
}


class TaskDataError(ValueError):
  """A task's file is missing or malformed (the message names the task and the path)."""


REPO = Path(__file__).resolve().parents[2]
DOWNLOAD_DIR = REPO / 'data' / 'evals'  # where data/evals/download.py writes the task files
DOWNLOAD_COMMAND = 'python data/evals/download.py'

# The files each task reads, relative to the data directory (the layout of the tasks' own
# releases; data/evals/download.py writes exactly these from the Hugging Face hub).
TASK_FILES: dict[str, tuple[str, ...]] = {
  'wikitext': ('wikitext2_raw/wiki.test.raw',),
  'lambada': ('lambada/lambada_test.jsonl',),
  'piqa': ('piqa/valid.jsonl', 'piqa/valid-labels.lst'),
  'hellaswag': ('hellaswag/hellaswag_val.jsonl',),
  'winogrande': ('winogrande/dev.jsonl',),
  'arc_easy': ('arc/ARC-Easy-Test.jsonl',),
  'arc_challenge': ('arc/ARC-Challenge-Test.jsonl',),
  'siqa': ('socialiqa/dev.jsonl', 'socialiqa/dev-labels.lst'),
  'boolq': ('boolq/dev.jsonl',),
}
# Accepted in place of a file above (the HellaSwag text export, see the module docstring).
ALTERNATIVE_FILES = {'hellaswag/hellaswag_val.jsonl': 'hellaswag/hellaswag_val_full.txt.bz2'}


def default_data_dir() -> Path:
  """``$MIRAS_SHARED_DATA``; else ``<repo>/data/evals`` once data/evals/download.py has written
  a task there; else ``<repo>/../shared/data`` when it exists (a development checkout); else
  ``<repo>/data/evals``."""
  env = os.environ.get('MIRAS_SHARED_DATA')
  if env:
    return Path(env).expanduser()
  if any((DOWNLOAD_DIR / f).is_file() for files in TASK_FILES.values() for f in files):
    return DOWNLOAD_DIR
  shared = REPO.parent / 'shared' / 'data'
  return shared if shared.is_dir() else DOWNLOAD_DIR


def missing_task_files(
  tasks: Sequence[str], data_dir: str | os.PathLike | None = None
) -> dict[str, list[str]]:
  """``{task: [missing file, ...]}`` for the file-based ``tasks`` under ``data_dir``."""
  root = Path(data_dir).expanduser() if data_dir else default_data_dir()
  out: dict[str, list[str]] = {}
  for task in tasks:
    task = ALIASES.get(task, task)
    gone = [
      f
      for f in TASK_FILES.get(task, ())
      if not (root / f).is_file() and not (root / ALTERNATIVE_FILES.get(f, f)).is_file()
    ]
    if gone:
      out[task] = gone
  return out


def check_task_files(tasks: Sequence[str], data_dir: str | os.PathLike | None = None) -> None:
  """Raise one `TaskDataError` naming every missing file and the command that fetches them."""
  root = Path(data_dir).expanduser() if data_dir else default_data_dir()
  missing = missing_task_files(tasks, root)
  if missing:
    files = ', '.join(f for fs in missing.values() for f in fs)
    out = '' if root.resolve() == DOWNLOAD_DIR.resolve() else f' --out={root}'
    raise TaskDataError(
      f'task files missing in {root}: {files}; fetch them with: '
      f'{DOWNLOAD_COMMAND} --tasks={",".join(missing)}{out} (needs `pip install datasets`)'
    )
