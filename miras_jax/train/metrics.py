"""Metrics sinks (JSON lines, TensorBoard, console), MFU and the loss-curve plot.

Every logged step appends one JSON object to ``<workdir>/metrics.jsonl``::

    {"step": 100, "loss": 3.21, "perplexity": 24.8, "lr": 0.0003, "grad_norm": 0.41,
     "tokens_per_sec": 51234.0, "step_time_s": 0.08, "mfu": 0.41, "memory/...": ...}

(``mfu`` only where the device's peak FLOP/s is known; validation rows carry
``val_loss`` / ``val_perplexity``). The same scalars go to TensorBoard event
files in ``<workdir>/tensorboard`` and a short line to the console. Only
process 0 writes. A resumed run appends; :func:`read_metrics` keeps the last
row per step, so re-run steps replace the ones a killed run logged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable

import jax

from miras_jax.progress import format_duration

__all__ = [
  'METRICS_FILE',
  'PEAK_FLOPS',
  'device_peak_flops',
  'flops_per_token',
  'MetricsWriter',
  'read_metrics',
  'plot_loss_curve',
  'format_duration',
]

log = logging.getLogger(__name__)

METRICS_FILE = 'metrics.jsonl'
PLOT_FILE = 'loss_curve.png'

# Dense bf16 peak FLOP/s per chip (vendor datasheets), matched against device_kind.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
  ('tpu v6', 918e12),
  ('tpu v5p', 459e12),
  ('tpu v5 lite', 197e12),
  ('tpu v5e', 197e12),
  ('tpu v5', 459e12),
  ('tpu v4', 275e12),
  ('tpu v3', 123e12),
  ('h200', 989e12),
  ('h100', 989e12),
  ('a100', 312e12),
  ('l4', 121e12),
  ('a10', 125e12),
)


def print0(msg: str) -> None:
  """A console line, printed by process 0 only (flushed: progress under a pipe)."""
  if jax.process_index() == 0:
    print(msg, flush=True)


def device_peak_flops(device: jax.Device | None = None) -> float | None:
  """Peak dense bf16 FLOP/s of one device, or None when unknown (e.g. CPU)."""
  device = device or jax.devices()[0]
  kind = str(getattr(device, 'device_kind', '')).lower()
  for name, peak in PEAK_FLOPS:
    if name in kind:
      return peak
  return None


def flops_per_token(model_cfg: Any, seq_len: int) -> tuple[float, str]:
  """Training FLOPs per token (including the memories' inner forward/backward/update) and the
  function that counts them, for the log line."""
  from miras_jax.models.flops import training_flops_per_token  # pylint: disable=import-outside-toplevel

  return (
    float(training_flops_per_token(model_cfg, seq_len=seq_len)),
    'miras_jax.models.flops.training_flops_per_token',
  )


def _scalar(v: Any) -> Any:
  try:
    v = float(v)
  except (TypeError, ValueError):
    return v
  return v if math.isfinite(v) else str(v)


class MetricsWriter:
  """Appends metrics to JSON lines and TensorBoard, prints progress (process 0 only)."""

  def __init__(
    self,
    workdir: str | os.PathLike,
    *,
    total_steps: int,
    enabled: bool | None = None,
    wandb_run: Any = None,
  ):
    self.workdir = Path(workdir)
    self._wandb = wandb_run  # train/wandb_logger.py; None: off
    self.total_steps = total_steps
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._file = None
    self._tb = None
    if self.enabled:
      self._file = open(self.workdir / METRICS_FILE, 'a', encoding='utf-8')  # pylint: disable=consider-using-with
      try:
        from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel

        self._tb = SummaryWriter(str(self.workdir / 'tensorboard'))
      except Exception as e:  # pylint: disable=broad-except
        log.warning('TensorBoard logging disabled: %s', e)

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    if not self.enabled:
      return
    row = {'step': int(step), **{k: _scalar(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(row) + '\n')
    self._file.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != 'step' and isinstance(v, float):
          self._tb.add_scalar(k, v, int(step))
      self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in row.items() if k != 'step'}, step=int(step))

  def console(self, step: int, metrics: dict[str, Any], eta_s: float | None = None) -> None:
    if not self.enabled:
      return
    parts = [f'step {step}/{self.total_steps}']
    for key, fmt in (
      ('loss', 'loss {:.4f}'),
      ('val_loss', 'val_loss {:.4f}'),
      ('val_perplexity', 'val_ppl {:.2f}'),
      ('grad_norm', 'gnorm {:.3f}'),
      ('lr', 'lr {:.2e}'),
    ):
      if key in metrics:
        parts.append(fmt.format(float(metrics[key])))
    if 'tokens_per_sec' in metrics:
      parts.append(f'{float(metrics["tokens_per_sec"]):,.0f} tok/s')
    if metrics.get('mfu') is not None:
      parts.append(f'mfu {100 * float(metrics["mfu"]):.1f}%')
    if eta_s is not None:
      parts.append(f'ETA {format_duration(eta_s)}')
    print(' | '.join(parts), flush=True)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def read_metrics(workdir: str | os.PathLike) -> list[dict[str, Any]]:
  """Rows of ``metrics.jsonl`` (train and val merged per step, last write wins), by step."""
  path = Path(workdir) / METRICS_FILE
  rows: dict[int, dict[str, Any]] = {}
  if path.is_file():
    for line in path.read_text().splitlines():
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut by a hard kill
      step = int(row['step'])
      if 'loss' in row and 'loss' in rows.get(step, {}):
        rows[step] = {}  # the step was re-run after a resume: forget the old row
      rows.setdefault(step, {}).update(row)
  return [rows[s] for s in sorted(rows)]


def _series(rows: Iterable[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
  pts = [(r['step'], r[key]) for r in rows if isinstance(r.get(key), float)]
  return [p[0] for p in pts], [p[1] for p in pts]


def plot_loss_curve(workdir: str | os.PathLike) -> Path | None:
  """Write ``<workdir>/loss_curve.png`` (train and val loss vs step); None when nothing to plot."""
  rows = read_metrics(workdir)
  steps, loss = _series(rows, 'loss')
  vsteps, vloss = _series(rows, 'val_loss')
  if not steps and not vsteps:
    return None
  import matplotlib  # pylint: disable=import-outside-toplevel

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
  if steps:
    ax.plot(steps, loss, label='train loss', linewidth=1.2)
  if vsteps:
    ax.plot(vsteps, vloss, 'o-', label='val loss', linewidth=1.5)
  ax.set_xlabel('step')
  ax.set_ylabel('cross-entropy (nats/token)')
  ax.set_title(Path(workdir).resolve().name)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  path = Path(workdir) / PLOT_FILE
  fig.savefig(path)
  plt.close(fig)
  return path
