"""Optional Weights & Biases logging beside TensorBoard (``--config.logging.wandb_project=P``).

``wandb`` is imported only when a project is set and is not a dependency of miras-jax
(``pip install wandb``); without it the run stops at once with a one-line `ConfigError`.
``logging.wandb_mode='offline'`` (or ``WANDB_MODE=offline``) writes the run under
``<workdir>/wandb`` for a later ``wandb sync``. The run id is kept in ``<workdir>/wandb_id``,
so a resumed training run continues the same W&B run.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

from miras_jax.train.config import ConfigError

__all__ = ['init_wandb']


def init_wandb(config: Any, config_dict: dict[str, Any], workdir: str | os.PathLike) -> Any:
  """A ``wandb`` run for ``config.logging`` (None when no project is set)."""
  cfg = config.get('logging') if hasattr(config, 'get') else None
  project = str((cfg or {}).get('wandb_project') or '')
  if not project:
    return None
  try:
    import wandb  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise ConfigError(
      f'logging.wandb_project={project!r} needs the wandb package: pip install wandb'
    ) from None
  workdir = Path(workdir)
  id_file = workdir / 'wandb_id'
  if id_file.is_file():
    run_id = id_file.read_text().strip()
  else:
    run_id = uuid.uuid4().hex[:12]
    id_file.write_text(run_id + '\n')
  return wandb.init(
    project=project,
    entity=str(cfg.get('wandb_entity') or '') or None,
    name=workdir.resolve().name,
    id=run_id,
    resume='allow',
    dir=str(workdir),
    config=config_dict,
    mode=str(cfg.get('wandb_mode') or '') or None,
  )
