"""Result files of the study scripts (scripts/compare_families.py, scripts/mqar_study.py).

Both write ``{'args': <the command's arguments>, 'results': [<one row per run>]}`` and read an
earlier file back (``--before`` / ``--resume``) only when it was made at the same setting.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ['read_rows']


def read_rows(
  path: str | Path, args: Any, setting: tuple[str, ...]
) -> tuple[list[dict], list[str]]:
  """(the rows of the result file at ``path``, the ``setting`` arguments it differs in from
  ``args``). Raises ValueError (the reason) when ``path`` is not such a file."""
  try:
    prev = json.loads(Path(path).read_text())
    rows, prev_args = prev['results'], prev['args']
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ValueError(str(e)) from None
  return rows, [k for k in setting if prev_args.get(k) != getattr(args, k)]
