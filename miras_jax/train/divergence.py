"""Stop a run at the first non-finite (or spiking) loss or gradient norm (train/loop.py)."""

from __future__ import annotations

import math
from typing import Any

import jax


class DivergenceError(RuntimeError):
  """Training produced a non-finite (or spiking) loss / gradient norm; nothing of it was saved."""


class DivergenceMonitor:
  """Stops a run whose loss or gradient norm is non-finite, or whose loss spikes.

  The step's scalars stay on the device until :meth:`check` (at every logged step and before
  every save), so dispatch stays asynchronous; a check then looks at every step since the last
  one, in order, and names the first bad one. ``spike_factor`` > 1 also stops when a loss exceeds
  that factor times the mean of the previous (up to) ``window`` finite losses, once ``window``
  of them were seen in this process.
  """

  def __init__(self, spike_factor: float = 0.0, window: int = 50):
    self.spike_factor = float(spike_factor)
    self.window = int(window)
    self._pending: list[tuple[int, Any, Any]] = []
    self._recent: list[float] = []

  def add(self, step: int, metrics: dict[str, Any]) -> None:
    self._pending.append((step, metrics['loss'], metrics['grad_norm']))

  def check(self) -> None:
    pending, self._pending = self._pending, []
    for step, loss, gnorm in jax.device_get(pending):
      loss, gnorm = float(loss), float(gnorm)
      if not (math.isfinite(loss) and math.isfinite(gnorm)):
        raise DivergenceError(
          f'training diverged at step {step}: loss {loss}, grad_norm {gnorm} (non-finite)'
        )
      if self.spike_factor > 1 and len(self._recent) >= self.window:
        mean = sum(self._recent) / len(self._recent)
        if loss > self.spike_factor * mean:
          raise DivergenceError(
            f'training diverged at step {step}: loss {loss:.4g} > train.loss_spike_factor '
            f'{self.spike_factor:g} x recent mean {mean:.4g}'
          )
      self._recent = (self._recent + [loss])[-self.window :]
