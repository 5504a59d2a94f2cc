"""Import a repository file that is not in a package (scripts/*.py, data/<recipe>/prepare.py)."""

import importlib.util
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def load_file(relpath: str, name: str | None = None):
  """The module at ``REPO_ROOT / relpath``, executed fresh (named ``name``, default the stem)."""
  path = REPO_ROOT / relpath
  spec = importlib.util.spec_from_file_location(name or path.stem, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod
