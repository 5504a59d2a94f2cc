"""scripts/launch_tpu_pod.sh against a fake ``gcloud`` on PATH that records every call.

The fake keeps the slice's state in a file: ``describe`` prints it (or fails: no slice),
``create`` makes it READY, ``delete`` removes it, and the first ``$FAKE_PREEMPTIONS`` training
runs (the ssh call that starts ``miras_jax.train``) end with the slice PREEMPTED, as a spot
reclaim does.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.train.conftest import REPO_ROOT

SCRIPT = REPO_ROOT / 'scripts' / 'launch_tpu_pod.sh'
FAKE = r"""#!/usr/bin/env bash
d=$FAKE_GCLOUD_DIR
{ printf '%s\0' "$@"; printf '\036'; } >> "$d/calls"  # NUL between arguments, RS after a call
case "$4" in
  describe)
    [[ -f $d/state ]] || { echo 'ERROR: NOT_FOUND' >&2; exit 1; }
    if [[ "$*" == *networkEndpoints* ]]; then echo '10.0.0.1;10.0.0.2;10.0.0.3;10.0.0.4'
    else cat "$d/state"; fi ;;
  create) echo READY > "$d/state" ;;
  delete) rm -f "$d/state" ;;
  scp) for a in "$@"; do [[ $a == *worker-*.log ]] && echo "log of $a" > "$a"; done ;;
  ssh)
    if [[ "$*" == *miras_jax.train* ]]; then
      n=$(( $(cat "$d/runs" 2>/dev/null || echo 0) + 1 )); echo $n > "$d/runs"
      if (( n <= ${FAKE_PREEMPTIONS:-0} )); then echo PREEMPTED > "$d/state"; exit 255; fi
    fi ;;
esac
exit 0
"""


def _launch(tmp_path: Path, args: list[str], *, state: str | None = None, preemptions: int = 0):
  tmp_path.mkdir(exist_ok=True)
  fake = tmp_path / 'bin'
  fake.mkdir(exist_ok=True)
  (fake / 'gcloud').write_text(FAKE)
  (fake / 'gcloud').chmod(0o755)
  if state:
    (tmp_path / 'state').write_text(state + '\n')
  env = {
    **os.environ,
    'PATH': f'{fake}{os.pathsep}{os.environ["PATH"]}',
    'FAKE_GCLOUD_DIR': str(tmp_path),
    'FAKE_PREEMPTIONS': str(preemptions),
  }
  proc = subprocess.run(
    ['bash', str(SCRIPT), *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
  )
  raw = (tmp_path / 'calls').read_text() if (tmp_path / 'calls').exists() else ''
  return proc, [c.split('\0')[:-1] for c in raw.split('\036')[:-1]]


def _verbs(calls: list[list[str]]) -> list[str]:
  """Each call as its gcloud verb, ssh calls named by what they run."""
  out = []
  for c in calls:
    verb = c[3]
    if verb == 'ssh':
      cmd = next(a for a in c if a.startswith('--command='))
      verb = (
        'ssh:train'
        if 'miras_jax.train' in cmd
        else 'ssh:install'
        if 'pip' in cmd
        else 'ssh:mount'
        if 'gcsfuse' in cmd
        else 'ssh:clear'
        if 'lsof' in cmd
        else 'ssh:?'
      )
    out.append(verb)
  return out


ARGS = ['--name=pod', '--zone=us-west4-a', '--type=v5litepod-16', '--bucket=bkt', '--spot']
TRAIN = ['--', '--config=configs/moneta.py:340m', '--config.train.mesh.fsdp=-1']


def test_creates_installs_clears_runs_on_every_worker_and_collects_logs(tmp_path):
  proc, calls = _launch(tmp_path, ARGS + TRAIN)
  assert proc.returncode == 0, proc.stderr
  assert _verbs(calls) == [
    'describe',  # no slice yet
    'create',
    'scp',  # the committed code, to every worker
    'ssh:install',
    'ssh:mount',
    'ssh:clear',
    'ssh:train',
    'describe',  # how many workers: 4 endpoints
    *['scp'] * 4,  # one log per worker
    'describe',  # still READY: not preempted
  ]
  create = calls[1]
  assert create[:4] == ['compute', 'tpus', 'tpu-vm', 'create']
  assert {'pod', '--zone=us-west4-a', '--accelerator-type=v5litepod-16', '--spot'} <= set(create)
  assert '--version=v2-alpha-tpuv5-lite' in create
  for c in calls:
    if c[3] in ('ssh',) or (c[3] == 'scp' and 'miras-jax.tgz' in ' '.join(c)):
      assert '--worker=all' in c, c
  train = ' '.join(next(a for a in calls[6] if a.startswith('--command=')).split())
  assert 'python -m miras_jax.train --distributed=true --workdir=/mnt/miras/runs/pod' in train
  assert '--config=configs/moneta.py:340m --config.train.mesh.fsdp=-1' in train
  logs = [
    c for c in calls if c[3] == 'scp' and c[-1].startswith('--worker=') and c[-1][-1].isdigit()
  ]
  assert [c[-1] for c in logs] == [f'--worker={i}' for i in range(4)]
  assert sorted(p.name for p in (tmp_path / 'logs' / 'pod').iterdir()) == [
    f'worker-{i}.log' for i in range(4)
  ]


def test_reuses_a_ready_slice_and_relaunches_after_spot_preemption(tmp_path):
  proc, calls = _launch(tmp_path, ARGS + TRAIN, state='READY', preemptions=1)
  assert proc.returncode == 0, proc.stderr
  verbs = _verbs(calls)
  assert verbs[0] == 'describe' and verbs[1] == 'scp'  # READY: reused, not created
  assert verbs.count('ssh:train') == 2 and verbs.count('delete') == 1
  assert verbs.count('create') == 1 and verbs.index('delete') < verbs.index('create')
  assert verbs.index('create') < len(verbs) - 1 - verbs[::-1].index('ssh:train')
  assert verbs.count('ssh:clear') == 2  # stale TPU holders cleared before each run
  assert 're-launching (attempt 1 of 20)' in proc.stdout


def test_git_source_is_cloned_on_every_worker_instead_of_copied(tmp_path):
  url = 'git@github.com:me/miras-jax.git'
  proc, calls = _launch(tmp_path, [*ARGS, f'--git={url}@v1.2', *TRAIN], state='READY')
  assert proc.returncode == 0, proc.stderr
  assert _verbs(calls)[:4] == ['describe', 'ssh:install', 'ssh:mount', 'ssh:clear']  # no scp
  install = ' '.join(next(a for a in calls[1] if a.startswith('--command=')).split())
  assert (
    f'git clone --quiet --branch=v1.2 {url} miras-jax' in install and '--worker=all' in calls[1]
  )
  proc, calls = _launch(tmp_path / 'no_ref', [*ARGS, f'--git={url}', *TRAIN], state='READY')
  install = ' '.join(next(a for a in calls[1] if a.startswith('--command=')).split())
  assert f'git clone --quiet {url} miras-jax' in install


def test_preemption_without_spot_stops_and_bad_options_are_one_line(tmp_path):
  proc, calls = _launch(tmp_path, ARGS[:-1] + TRAIN, state='READY', preemptions=1)
  assert proc.returncode == 1 and 'not re-launching' in proc.stderr
  assert _verbs(calls).count('ssh:train') == 1
  for args, msg in (
    (['--zone=z', '--type=v5p-128', '--bucket=b', *TRAIN], '--name, --zone and --type'),
    (ARGS, 'no training arguments'),
    ([*ARGS, '--', '--workdir=/x'], 'give --workdir before --'),
    (['--name=a', '--zone=z', '--type=v9-8', '--bucket=b', *TRAIN], 'no default runtime'),
  ):
    proc, _ = (
      _launch(tmp_path / 'bad', args) if (tmp_path / 'bad').mkdir(exist_ok=True) is None else None
    )
    assert proc.returncode == 2, proc
    assert proc.stderr.strip().count('\n') == 0 and msg in proc.stderr, proc.stderr
