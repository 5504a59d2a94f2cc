"""Per-window step time, tokens/s, MFU and ETA of the training loop."""

from __future__ import annotations

import math
import time
from typing import Any

import jax


class StepTimer:
  """Per-window step time, tokens/s, MFU and ETA; evaluation time is kept out of tokens/s."""

  def __init__(self, plan: Any, start: int):  # plan: loop._Plan
    t = plan.config.train
    self.start, self.total = start, int(t.steps)
    self.tokens_per_step = int(t.batch_size) * int(t.seq_len)
    self.flops_tok, self.peak = plan.flops[0], plan.peak
    self.window_t0, self.window_steps, self.run_t0, self.timed_steps = (
      time.perf_counter(),
      0,
      None,
      0,
    )

  def tick(self) -> None:
    self.window_steps += 1

  def row(self, step: int, metrics: dict[str, Any]) -> tuple[dict[str, float], float | None]:
    """The logged row of ``step`` and the ETA in seconds (None until a timed window exists)."""
    now = time.perf_counter()
    dt = (now - self.window_t0) / self.window_steps
    row = {k: float(v) for k, v in metrics.items()}
    row['perplexity'] = math.exp(min(row['loss'], 50.0))
    row['step_time_s'] = dt
    row['tokens_per_sec'] = self.tokens_per_step / dt
    if self.peak:
      row['mfu'] = self.flops_tok * row['tokens_per_sec'] / (self.peak * jax.device_count())
    if step == self.start + 1:
      row['compile_and_step_time_s'] = dt
      self.run_t0 = now
    else:
      self.timed_steps += self.window_steps
    eta = (now - self.run_t0) / self.timed_steps * (self.total - step) if self.timed_steps else None
    self.window_t0, self.window_steps = time.perf_counter(), 0
    return row, eta

  def exclude(self, seconds: float) -> None:
    self.window_t0 += seconds
