"""Fetch the nine zero-shot tasks from the Hugging Face hub into the layout miras_jax.evals reads.

    pip install datasets
    python data/evals/download.py [--tasks=piqa,boolq,...] [--out=data/evals] [--force]
    python data/evals/download.py --source=DIR   # offline: DIR/<task>.jsonl in the hub's schema

Each task's evaluation split (the one lm-evaluation-harness v0.4 scores, from the dataset it
names) is converted to the files of the task's own release, the layout `miras_jax.evals.tasks`
reads (``TASK_FILES`` there is the single list of paths):

==============  ===================================  ==========  ==================================
task            hub dataset (config)                 split       written
==============  ===================================  ==========  ==================================
wikitext        Salesforce/wikitext                  test        wikitext2_raw/wiki.test.raw (the
                (wikitext-2-raw-v1)                              rows joined: the original file)
lambada         EleutherAI/lambada_openai (default)  test        lambada/lambada_test.jsonl
piqa            baber/piqa                           validation  piqa/valid.jsonl, valid-labels.lst
hellaswag       Rowan/hellaswag                      validation  hellaswag/hellaswag_val.jsonl
winogrande      allenai/winogrande (winogrande_xl)   validation  winogrande/dev.jsonl
arc_easy        allenai/ai2_arc (ARC-Easy)           test        arc/ARC-Easy-Test.jsonl (ARC schema)
arc_challenge   allenai/ai2_arc (ARC-Challenge)      test        arc/ARC-Challenge-Test.jsonl
siqa            lighteval/siqa                       validation  socialiqa/dev.jsonl, dev-labels.lst
boolq           aps/super_glue (boolq)               validation  boolq/dev.jsonl
==============  ===================================  ==========  ==================================

Files are written atomically (temporary name, then rename), so an interrupted run leaves no
half file; a task whose files all exist is skipped unless ``--force``. Afterwards
``<out>/SHA256SUMS`` holds the sha256 of every task file (``cd <out> && sha256sum -c
SHA256SUMS`` checks them) and ``<out>/SOURCES.json`` where each came from (dataset, config,
split, the hub's fingerprint, row count). The downloaded files are git-ignored.
``python -m miras_jax.eval`` reads ``data/evals`` by default (`miras_jax.evals.tasks.default_data_dir`).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from miras_jax.evals.tasks import DOWNLOAD_DIR, PAPER_TASKS, TASK_FILES
from miras_jax.progress import Progress

Row = dict
Files = dict[str, str]  # relative path -> text


@dataclasses.dataclass(frozen=True)
class Source:
  path: str
  config: str | None
  split: str
  convert: Callable[[list[Row]], Files]


def _jsonl(rows: Iterable[dict]) -> str:
  return ''.join(json.dumps(r, ensure_ascii=False) + '\n' for r in rows)


def _lines(values: Iterable) -> str:
  return ''.join(f'{v}\n' for v in values)


def _wikitext(rows):  # the hub's rows are the raw file's lines, each with its '\n'
  return {TASK_FILES['wikitext'][0]: ''.join(r['text'] for r in rows)}


def _lambada(rows):
  return {TASK_FILES['lambada'][0]: _jsonl({'text': r['text']} for r in rows)}


def _piqa(rows):
  data, labels = TASK_FILES['piqa']
  return {
    data: _jsonl({k: r[k] for k in ('goal', 'sol1', 'sol2')} for r in rows),
    labels: _lines(int(r['label']) for r in rows),
  }


def _hellaswag(rows):
  keys = ('ind', 'activity_label', 'ctx_a', 'ctx_b', 'ctx', 'endings', 'source_id', 'split')
  return {
    TASK_FILES['hellaswag'][0]: _jsonl(
      {**{k: r[k] for k in keys if k in r}, 'label': int(r['label'])} for r in rows
    )
  }


def _winogrande(rows):
  keys = ('sentence', 'option1', 'option2', 'answer')
  return {TASK_FILES['winogrande'][0]: _jsonl({k: str(r[k]) for k in keys} for r in rows)}


def _arc(task):
  def convert(rows):
    def native(r):
      choices = [
        {'text': t, 'label': l} for t, l in zip(r['choices']['text'], r['choices']['label'])
      ]
      return {
        'id': r['id'],
        'question': {'stem': r['question'], 'choices': choices},
        'answerKey': r['answerKey'],
      }

    return {TASK_FILES[task][0]: _jsonl(native(r) for r in rows)}

  return convert


def _siqa(rows):
  data, labels = TASK_FILES['siqa']
  keys = ('context', 'question', 'answerA', 'answerB', 'answerC')
  return {
    data: _jsonl({k: r[k] for k in keys} for r in rows),
    labels: _lines(int(r['label']) for r in rows),  # 1-based, as the release
  }


def _boolq(rows):  # super_glue label 1 = True
  return {
    TASK_FILES['boolq'][0]: _jsonl(
      {'question': r['question'], 'passage': r['passage'], 'answer': bool(int(r['label']))}
      for r in rows
    )
  }


SOURCES: dict[str, Source] = {
  'wikitext': Source('Salesforce/wikitext', 'wikitext-2-raw-v1', 'test', _wikitext),
  'lambada': Source('EleutherAI/lambada_openai', 'default', 'test', _lambada),
  'piqa': Source('baber/piqa', None, 'validation', _piqa),
  'hellaswag': Source('Rowan/hellaswag', None, 'validation', _hellaswag),
  'winogrande': Source('allenai/winogrande', 'winogrande_xl', 'validation', _winogrande),
  'arc_easy': Source('allenai/ai2_arc', 'ARC-Easy', 'test', _arc('arc_easy')),
  'arc_challenge': Source('allenai/ai2_arc', 'ARC-Challenge', 'test', _arc('arc_challenge')),
  'siqa': Source('lighteval/siqa', None, 'validation', _siqa),
  'boolq': Source('aps/super_glue', 'boolq', 'validation', _boolq),
}
assert set(SOURCES) == set(PAPER_TASKS) == set(TASK_FILES)


def hub_rows(task: str) -> tuple[list[Row], str]:
  """The task's split from the hub: ``(rows, fingerprint)``."""
  try:
    import datasets  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise SystemExit(
      'error: fetching from the Hugging Face hub needs `datasets`: pip install datasets '
      '(or pip install -e ".[hf]")'
    ) from None
  src = SOURCES[task]
  ds = datasets.load_dataset(src.path, src.config, split=src.split)
  return [dict(r) for r in ds], str(getattr(ds, '_fingerprint', ''))


def local_rows(source: Path, task: str) -> tuple[list[Row], str]:
  """``<source>/<task>.jsonl``: the split's rows in the hub's schema (offline; tests)."""
  path = source / f'{task}.jsonl'
  if not path.is_file():
    raise SystemExit(f'error: {task}: no {path} in --source')
  text = path.read_text(encoding='utf-8')
  rows = [json.loads(line) for line in text.splitlines() if line.strip()]
  return rows, 'sha256:' + hashlib.sha256(text.encode()).hexdigest()


def _write_atomic(path: Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f'.{path.name}.tmp')
  tmp.write_text(text, encoding='utf-8', newline='')
  os.replace(tmp, path)


def _sha256(path: Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def download(
  tasks: Iterable[str],
  out: Path,
  *,
  source: str = 'hub',
  force: bool = False,
  log: Callable[[str], None] = print,
) -> dict[str, dict]:
  """Fetch ``tasks`` into ``out``; returns ``SOURCES.json``'s entries of the tasks written."""
  tasks = list(tasks)
  unknown = [t for t in tasks if t not in SOURCES]
  if unknown:
    raise SystemExit(f'error: unknown task(s) {",".join(unknown)}; known: {",".join(SOURCES)}')
  out.mkdir(parents=True, exist_ok=True)
  record_path = out / 'SOURCES.json'
  record = json.loads(record_path.read_text()) if record_path.is_file() else {}
  bar = Progress('download', total=len(tasks), unit='tasks', interval=0)
  written = {}
  for task in tasks:
    if not force and all((out / f).is_file() for f in TASK_FILES[task]):
      log(f'{task}: already in {out} (--force to fetch again)')
      bar.update(1)
      continue
    t0 = time.perf_counter()
    rows, fingerprint = hub_rows(task) if source == 'hub' else local_rows(Path(source), task)
    files = SOURCES[task].convert(rows)
    for rel, text in files.items():
      _write_atomic(out / rel, text)
    src = SOURCES[task]
    written[task] = {
      'dataset': src.path,
      'config': src.config,
      'split': src.split,
      'source': 'huggingface hub' if source == 'hub' else str(source),
      'fingerprint': fingerprint,
      'rows': len(rows),
      'files': list(files),
    }
    log(f'{task}: {len(rows)} rows -> {", ".join(files)} ({time.perf_counter() - t0:.1f}s)')
    bar.update(1)
  bar.close()
  record.update(written)
  _write_atomic(record_path, json.dumps(record, indent=2) + '\n')
  sums = sorted(f for t in SOURCES for f in TASK_FILES[t] if (out / f).is_file())
  _write_atomic(out / 'SHA256SUMS', ''.join(f'{_sha256(out / f)}  {f}\n' for f in sums))
  log(f'wrote {out / "SHA256SUMS"} ({len(sums)} files) and {record_path}')
  return written


def main(argv: list[str] | None = None) -> None:
  p = argparse.ArgumentParser(
    prog='python data/evals/download.py',
    description=__doc__.split('\n')[0],
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument(
    '--tasks', default=','.join(PAPER_TASKS), help='comma-separated (default: all nine)'
  )
  p.add_argument('--out', default=str(DOWNLOAD_DIR), help=f'output folder (default {DOWNLOAD_DIR})')
  p.add_argument('--source', default='hub', help="'hub' (default) or a folder of <task>.jsonl rows")
  p.add_argument('--force', action='store_true', help='fetch tasks whose files already exist')
  args = p.parse_args(argv)
  tasks = [t.strip() for t in args.tasks.split(',') if t.strip()]
  if args.source != 'hub' and not Path(args.source).is_dir():
    raise SystemExit(f'error: --source {args.source!r} is neither "hub" nor a folder')
  try:
    download(tasks, Path(args.out).expanduser(), source=args.source, force=args.force)
  except OSError as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  sys.exit(main())
