"""One progress line with rate and ETA for the long steps (download, tokenizer training,
preparation, evaluation, generation).

    bar = Progress('prepare', total=n_docs, unit='docs')
    bar.update(1, tokens=len(ids))   # throttled: prints at most every ``interval`` seconds
    bar.close()                      # the final line with totals and rates

Writes to stderr; on a terminal the line is redrawn in place (``\\r``), otherwise (logs, CI) a
new line at most every ``interval`` seconds. ``total=None`` prints counts and rates without
an ETA; ``unit=None`` only the elapsed time (a step that reports nothing, kept alive by
`ticking`). Extra counters (``tokens=...``) are summed and shown as rates. A step that ends
within one ``interval`` prints nothing (``always=True``: its final line anyway).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import TextIO

__all__ = ['Progress', 'human', 'format_duration']


def format_duration(seconds: float) -> str:
  """``75 -> '1m15s'``, ``3725 -> '1h02m05s'``."""
  seconds = max(0, int(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s'


def human(x: float) -> str:
  """``1234567 -> '1.23M'``, ``999.99 -> '1k'`` (three significant digits)."""
  for div, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
    if abs(x) >= div * 0.9995:  # what would round up to 1000 of the unit below
      return f'{x / div:.3g}{suffix}'
  return f'{x:.3g}'


class Progress:
  def __init__(
    self,
    desc: str,
    total: float | None = None,
    unit: str | None = 'it',
    *,
    interval: float | None = None,
    stream: TextIO | None = None,
    enabled: bool = True,
    always: bool = False,
  ):
    self.desc, self.total, self.unit = desc, total, unit
    self.stream = stream or sys.stderr
    self.tty = bool(getattr(self.stream, 'isatty', lambda: False)())
    self.interval = interval if interval is not None else (0.5 if self.tty else 10.0)
    self.enabled = enabled
    self.always = always
    self.n = 0.0
    self.extra: dict[str, float] = {}
    self.start = time.perf_counter()
    self._last = self.start
    self._printed = False

  def line(self) -> str:
    elapsed = max(time.perf_counter() - self.start, 1e-9)
    if self.unit is None:
      return f'{self.desc}, elapsed {format_duration(elapsed)}'
    count = human(self.n) + (f'/{human(self.total)}' if self.total else '')
    parts = [f'{self.desc}: {count} {self.unit}']
    if self.total:
      parts[0] += f' ({100 * self.n / self.total:.0f}%)'
    parts.append(f'{human(self.n / elapsed)} {self.unit}/s')
    parts += [f'{human(v / elapsed)} {k}/s' for k, v in self.extra.items()]
    if self.total and self.n > 0:
      parts.append(f'ETA {format_duration(elapsed * (self.total - self.n) / self.n)}')
    parts.append(f'elapsed {format_duration(elapsed)}')
    return ', '.join(parts)

  def update(self, n: float = 1, **extra: float) -> None:
    self.n += n
    for k, v in extra.items():
      self.extra[k] = self.extra.get(k, 0.0) + v
    now = time.perf_counter()
    if self.enabled and now - self._last >= self.interval:
      self._last = now
      self._emit(final=False)

  def _emit(self, final: bool) -> None:
    text = self.line()
    if self.tty:
      self.stream.write('\r' + text + ('\n' if final else '\033[K'))
    else:
      self.stream.write(text + '\n')
    self.stream.flush()
    self._printed = True

  def close(self) -> None:
    """The final line, if a line was printed before, the step outlasted one interval, or
    ``always``."""
    slow = time.perf_counter() - self.start >= self.interval
    if self.enabled and (self._printed or slow or self.always):
      self._emit(final=True)
    self.enabled = False

  @contextlib.contextmanager
  def ticking(self):
    """Redraw the line every ``interval`` from a thread while the body runs (for a call that
    reports no progress of its own, e.g. SentencePiece training); closes on exit."""
    stop = threading.Event()

    def tick():
      while not stop.wait(self.interval):
        if self.enabled:
          self._emit(final=False)

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
      yield self
    finally:
      stop.set()
      thread.join()
      self.close()

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, *exc) -> None:
    self.close()
