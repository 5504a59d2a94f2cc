"""data/evals/download.py offline: rows in the Hugging Face hub's schema (hand-written, one or
two per task) -> the native files -> `miras_jax.evals.tasks.load_task`; checksums recorded;
missing files named in one line with the command that fetches them."""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

from miras_jax.evals.tasks import (
  PAPER_TASKS,
  TASK_FILES,
  TaskDataError,
  check_task_files,
  load_task,
  missing_task_files,
)

RECIPE = Path(__file__).resolve().parents[2] / 'data' / 'evals' / 'download.py'

HUB_ROWS = {
  'wikitext': [
    {'text': ''},
    {'text': ' = Valkyria Chronicles III = \n'},
    {'text': ''},
    {'text': ' Senjō no Valkyria 3 is a game . \n'},
    {'text': ' = Tower Building = \n'},
    {'text': ' The building has 3 @,@ 000 rooms . \n'},
  ],
  'lambada': [{'text': 'he opened the door and saw his old friend'}],
  'piqa': [
    {'goal': 'Boil water', 'sol1': 'use a kettle', 'sol2': 'use a fridge', 'label': 0},
    {'goal': 'Dry hands', 'sol1': 'use water', 'sol2': 'use a towel', 'label': 1},
  ],
  'hellaswag': [
    {
      'ind': 4,
      'activity_label': 'Removing ice from car',
      'ctx_a': 'Then, the man writes over the snow.',
      'ctx_b': 'then',
      'ctx': 'Then, the man writes over the snow. then',
      'endings': [', the man adds wax.', ', he leaves.', ', he sits.', ', he waves.'],
      'source_id': 'activitynet~v_-1IBHYS3L-Y',
      'split': 'val',
      'split_type': 'indomain',
      'label': '3',
    }
  ],
  'winogrande': [
    {
      'sentence': 'Sarah was a much better surgeon than Maria so _ always got the harder cases.',
      'option1': 'Sarah',
      'option2': 'Maria',
      'answer': '1',
    }
  ],
  'arc_easy': [
    {
      'id': 'Q1',
      'question': 'Which is a gas?',
      'choices': {'text': ['ice', 'steam', 'rock'], 'label': ['A', 'B', 'C']},
      'answerKey': 'B',
    }
  ],
  'arc_challenge': [
    {
      'id': 'Q2',
      'question': 'What makes rain?',
      'choices': {'text': ['clouds', 'soil', 'wind', 'sun'], 'label': ['1', '2', '3', '4']},
      'answerKey': '1',
    }
  ],
  'siqa': [
    {
      'context': 'Tracy gave Bob a gift.',
      'question': 'How would Bob feel?',
      'answerA': 'happy',
      'answerB': 'angry',
      'answerC': 'bored',
      'label': '1',
    }
  ],
  'boolq': [
    {'question': 'is the sky blue', 'passage': 'The sky is blue.', 'idx': 0, 'label': 1},
    {'question': 'is fire cold', 'passage': 'Fire is hot.', 'idx': 1, 'label': 0},
  ],
}


def _recipe():
  spec = importlib.util.spec_from_file_location('eval_download', RECIPE)
  mod = importlib.util.module_from_spec(spec)
  sys.modules.setdefault(spec.name, mod)  # dataclasses look their module up there
  spec.loader.exec_module(sys.modules[spec.name])
  return sys.modules[spec.name]


@pytest.fixture(scope='module')
def fetched(tmp_path_factory):
  src, out = tmp_path_factory.mktemp('hub'), tmp_path_factory.mktemp('evals')
  for task, rows in HUB_ROWS.items():
    (src / f'{task}.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in rows))
  assert missing_task_files(PAPER_TASKS, out) == {t: list(TASK_FILES[t]) for t in PAPER_TASKS}
  _recipe().download(PAPER_TASKS, out, source=str(src), log=lambda s: None)
  return out


def test_every_task_loads_from_the_downloaded_layout(fetched):
  assert missing_task_files(PAPER_TASKS, fetched) == {}
  docs = {t: load_task(t, fetched) for t in PAPER_TASKS}
  assert {t: len(d) for t, d in docs.items() if t != 'wikitext'} == {
    t: len(r) for t, r in HUB_ROWS.items() if t != 'wikitext'
  }
  assert len(docs['wikitext']) == 2  # two pages, split at the '= Title =' headings
  assert 'has 3,000 rooms' in docs['wikitext'][1].text  # lm-eval's detokenizer ran
  assert docs['lambada'][0].requests == [('he opened the door and saw his old', ' friend')]
  assert [d.gold for d in docs['piqa']] == [0, 1]
  assert docs['piqa'][1].requests[1] == ('Question: Dry hands\nAnswer:', ' use a towel')
  hs = docs['hellaswag'][0]
  assert hs.gold == 3 and hs.requests[0][0] == (
    'Removing ice from car: Then, the man writes over the snow. Then'
  )
  assert docs['winogrande'][0].gold == 0
  assert docs['winogrande'][0].requests[1] == (
    'Sarah was a much better surgeon than Maria so Maria',
    ' always got the harder cases.',
  )
  assert docs['arc_easy'][0].gold == 1 and docs['arc_challenge'][0].gold == 0
  assert docs['arc_easy'][0].requests[1] == ('Question: Which is a gas?\nAnswer:', ' steam')
  assert docs['siqa'][0].gold == 0
  assert [d.gold for d in docs['boolq']] == [1, 0]


def test_checksums_and_sources_recorded_and_reruns_skip(fetched):
  sums = (fetched / 'SHA256SUMS').read_text().splitlines()
  files = sorted(f for t in PAPER_TASKS for f in TASK_FILES[t])
  assert [line.split('  ')[1] for line in sums] == files
  for line in sums:
    digest, rel = line.split('  ')
    assert hashlib.sha256((fetched / rel).read_bytes()).hexdigest() == digest
  record = json.loads((fetched / 'SOURCES.json').read_text())
  assert record['boolq']['dataset'] == 'aps/super_glue' and record['boolq']['rows'] == 2
  logs = []
  assert _recipe().download(['piqa'], fetched, source='unused', log=logs.append) == {}
  assert 'already in' in logs[0]


def test_missing_files_are_named_with_the_fetch_command(tmp_path, fetched):
  (tmp_path / 'piqa').mkdir()
  (tmp_path / 'piqa' / 'valid.jsonl').write_text((fetched / 'piqa' / 'valid.jsonl').read_text())
  with pytest.raises(TaskDataError) as e:
    check_task_files(['piqa', 'boolq', 'niah'], tmp_path)
  msg = str(e.value)
  assert '\n' not in msg
  assert 'piqa/valid-labels.lst, boolq/dev.jsonl' in msg
  assert f'python data/evals/download.py --tasks=piqa,boolq --out={tmp_path}' in msg
  check_task_files(['niah', 'mqar'], tmp_path)  # synthetic tasks need no files
