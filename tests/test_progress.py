"""The progress line (miras_jax/progress.py): counts, rates, ETA, silence for quick steps."""

import io
import time

from miras_jax.progress import Progress, format_duration, human


def test_line_counts_rates_and_eta():
  out = io.StringIO()
  bar = Progress('prepare', total=10, unit='docs', interval=0, stream=out)
  bar.start -= 4.0  # 4 s elapsed
  bar.update(4, tokens=4000)
  line = out.getvalue().strip()
  assert line.startswith('prepare: 4/10 docs (40%), 1 docs/s, 1k tokens/s, ETA 0m06s')
  assert human(1234567) == '1.23M' and format_duration(3725) == '1h02m05s'


def test_quick_steps_print_nothing_and_ticking_reports_elapsed():
  out = io.StringIO()
  bar = Progress('x', total=3, interval=60, stream=out)
  bar.update(3)
  bar.close()
  assert out.getvalue() == ''
  out = io.StringIO()
  with Progress('tokenizer: training', unit=None, interval=0.05, stream=out).ticking():
    time.sleep(0.2)
  lines = out.getvalue().splitlines()
  assert len(lines) >= 2 and all(s.startswith('tokenizer: training, elapsed 0m00s') for s in lines)
