"""scripts/gpu_session.sh (the one prepared command for a session lent a GPU) stays runnable: valid
bash, every test file and script it names exists, every flag it passes is one the script parses,
and every op it benchmarks is one bench_kernels.py knows. A GPU session has minutes of device
time; a stale path or flag found there costs a rerun."""

from __future__ import annotations

import re
import shlex
import subprocess

from tests._scripts import REPO_ROOT, load_file

SCRIPT = REPO_ROOT / 'scripts' / 'gpu_session.sh'


def _commands():
  """The script's commands, continuation lines joined, comments dropped."""
  text = SCRIPT.read_text().replace('\\\n', ' ')
  return [line.split('#')[0] for line in text.splitlines() if line.strip()]


def test_is_valid_bash():
  subprocess.run(['bash', '-n', str(SCRIPT)], check=True)


def test_named_files_exist():
  paths = set(re.findall(r'\b((?:tests|scripts)/[\w/]+\.py)\b', SCRIPT.read_text()))
  assert paths, 'the script names no test file or script'
  missing = sorted(p for p in paths if not (REPO_ROOT / p).is_file())
  assert not missing, f'gpu_session.sh names missing files: {missing}'


def test_flags_and_ops_are_known():
  checked = 0
  for cmd in _commands():
    m = re.search(r'(scripts/\w+\.py)(.*)', cmd)
    if not m:
      continue
    source = (REPO_ROOT / m.group(1)).read_text()
    for tok in shlex.split(m.group(2).replace('"', '')):
      flag = tok.split('=')[0]
      if flag.startswith('--'):
        assert f"'{flag}'" in source, f'{m.group(1)} has no flag {flag}'
        checked += 1
      if m.group(1).endswith('bench_kernels.py') and flag == '--ops':
        ops = load_file('scripts/bench_kernels.py', 'bench_kernels_for_gpu_session').OPS
        unknown = set(tok.split('=')[1].split(',')) - set(ops)
        assert not unknown, f'bench_kernels.py does not know ops {unknown}'
  assert checked >= 5, checked
