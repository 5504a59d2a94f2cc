"""Zero-shot tasks read from their native files, with lm-evaluation-harness's prompts.

Every task turns its file into a list of documents; a document holds the
requests the scorer must answer and knows how to turn the answers into metrics.
The prompts, splits, delimiters and metrics follow lm-evaluation-harness
v0.4 (checked against the task yamls of lm-eval 0.4.13):

==============  =======================  ====================================================
task            split / file             prompt -> scored continuation(s)
==============  =======================  ====================================================
piqa            validation               ``Question: {goal}\\nAnswer:`` -> `` {sol1}`` / `` {sol2}``
                piqa/valid.jsonl         acc, acc_norm
hellaswag       validation (10,042)      ``{query}`` -> `` {ending_i}`` (4); query =
                hellaswag_val_full       preprocess(activity_label + ': ' + ctx_a + ' ' +
                .txt.bz2 or native       ctx_b.capitalize()); preprocess strips, ' [title]' ->
                hellaswag_val.jsonl      '. ', drops '[...]', '  ' -> ' '. acc, **acc_norm**
winogrande      dev (winogrande_xl val)  partial scoring: context_i = sentence[:idx('_')] +
                winogrande/dev.jsonl     option_i, continuation = ' ' + sentence after '_'
                                         (stripped); acc
arc_easy        test (2,376)             ``Question: {stem}\\nAnswer:`` -> `` {choice}``; acc,
arc_challenge   test (1,170 + 2)         acc_norm (ARC-c: **acc_norm**); the ``missing2`` file is
                                         appended when present
siqa            dev (1,954)              ``Q: {context} {question}\\nA:`` -> `` {answerX}`` (3);
                                         acc (labels 1-based)
boolq           dev (3,270)              ``{passage}\\nQuestion: {question}?\\nAnswer:`` ->
                                         `` no`` / `` yes``; acc
lambada         OpenAI test (5,153)      text.split(' ')[:-1] joined by ' ' -> ' ' + last
                                         word; acc = the whole word is the greedy output,
                                         ppl = exp(-mean(loglikelihood of the word))
wikitext        wikitext-2-raw-v1 test   documents (pages split at top-level ``= Title =``
                wiki.test.raw            headings, as EleutherAI/wikitext_document_level),
                                         lm-eval's wikitext_detokenizer, rolling
                                         loglikelihood over disjoint windows of the context
                                         length; word_perplexity = exp(-sum ll / sum words),
                                         words = len(re.split(r'\\s+', page)) of the raw page
==============  =======================  ====================================================

acc_norm divides each choice's loglikelihood by the character length of the
choice *without* the target delimiter (lm-eval's ``len(choice)``); ties go to
the first choice (``np.argmax``).

Notes on the local files (see shared/data/MANIFEST.md):

* HellaSwag: the stored bz2 text export keeps only the joined ``ctx`` (not
  ``ctx_a``/``ctx_b``) and does *not* capitalize ``ctx_b``. We recover lm-eval's
  query by capitalizing the trailing fragment after the last sentence end when it
  starts with a lower-case letter (``ctx_b`` in the ActivityNet part is such a
  fragment). This is exact whenever that fragment is ``ctx_b``; the native jsonl
  (``hellaswag_val.jsonl``, if you have it) is processed exactly as lm-eval.
* WikiText: ``wiki.test.raw`` here is the HF rows concatenated (blank rows
  dropped, some CRLF line ends). Line ends are normalised to ``\\n`` and a blank
  line (`` ``) is put before and after every heading, the layout of the original
  file; the word count is unaffected by blank lines.
"""

from __future__ import annotations

import bz2
import dataclasses
import json
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from miras_jax.evals.documents import (
  Doc,
  LoglikelihoodDoc,
  MultipleChoiceDoc,
  RollingDoc,
  aggregate,
)
from miras_jax.evals.task_files import (
  ALIASES,
  ALTERNATIVE_FILES,
  DOWNLOAD_DIR,
  TASK_FILES,
  TaskDataError,
  check_task_files,
  default_data_dir,
  missing_task_files,
)
from miras_jax.evals.wikitext import wikitext_detokenizer, wikitext_documents

__all__ = [
  'TASKS',
  'PAPER_TASKS',
  'TaskDataError',
  'Doc',
  'MultipleChoiceDoc',
  'LoglikelihoodDoc',
  'RollingDoc',
  'load_task',
  'default_data_dir',
  'TASK_FILES',
  'missing_task_files',
  'check_task_files',
  'hellaswag_preprocess',
  'wikitext_detokenizer',
  'wikitext_documents',
  'aggregate',
  'ALIASES',
  'DOWNLOAD_DIR',
]


# ------------------------------------------------------------------- readers
def _need(task: str, path: Path) -> Path:
  if not path.is_file():
    raise TaskDataError(f'{task}: data file not found: {str(path)!r}')
  return path


def _read_jsonl(task: str, path: Path) -> list[dict[str, Any]]:
  _need(task, path)
  rows = []
  with open(path, encoding='utf-8') as f:
    for i, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise TaskDataError(f'{task}: malformed JSON on line {i} of {str(path)!r}: {e}') from None
      if not isinstance(row, dict):
        raise TaskDataError(f'{task}: line {i} of {str(path)!r} is not a JSON object')
      rows.append(row)
  if not rows:
    raise TaskDataError(f'{task}: {str(path)!r} holds no examples')
  return rows


def _read_labels(task: str, path: Path, n: int) -> list[int]:
  _need(task, path)
  labels = [line.strip() for line in path.read_text(encoding='utf-8').splitlines() if line.strip()]
  if len(labels) != n:
    raise TaskDataError(f'{task}: {str(path)!r} has {len(labels)} labels for {n} examples')
  try:
    return [int(x) for x in labels]
  except ValueError:
    raise TaskDataError(f'{task}: non-integer label in {str(path)!r}') from None


def _field(task: str, path: Path, row: dict, key: str, i: int) -> Any:
  if key not in row:
    raise TaskDataError(f'{task}: example {i} of {str(path)!r} has no field {key!r}')
  return row[key]


# ---------------------------------------------------------------------- tasks
def _piqa(data_dir: Path) -> list[Doc]:
  task, path = 'piqa', data_dir / TASK_FILES['piqa'][0]
  rows = _read_jsonl(task, path)
  labels = _read_labels(task, data_dir / TASK_FILES['piqa'][1], len(rows))
  docs = []
  for i, (r, y) in enumerate(zip(rows, labels)):
    ctx = f'Question: {_field(task, path, r, "goal", i)}\nAnswer:'
    choices = [_field(task, path, r, 'sol1', i), _field(task, path, r, 'sol2', i)]
    docs.append(MultipleChoiceDoc([(ctx, ' ' + c) for c in choices], choices, y))
  return docs


def hellaswag_preprocess(text: str) -> str:
  """lm-eval's hellaswag ``preprocess``."""
  text = text.strip()
  text = text.replace(' [title]', '. ')
  text = re.sub('\\[.*?\\]', '', text)
  text = text.replace('  ', ' ')
  return text


_CTX_B = re.compile(r"^(.*[.!?][\"')]*) ([a-z][^.!?]*)$", re.S)


def _hellaswag_query_from_export(line: str) -> str:
  label, sep, ctx = line.partition(': ')
  if not sep:
    return line
  m = _CTX_B.match(ctx)
  if m:  # the ctx_b fragment: lm-eval capitalizes it
    ctx = m.group(1) + ' ' + m.group(2).capitalize()
  elif ctx[:1].islower():  # the whole ctx is ctx_b (empty ctx_a)
    ctx = ctx.capitalize()
  return hellaswag_preprocess(label + ': ' + ctx)


def _hellaswag(data_dir: Path) -> list[Doc]:
  task = 'hellaswag'
  native = data_dir / TASK_FILES['hellaswag'][0]
  docs = []
  if native.is_file():
    rows = _read_jsonl(task, native)
    for i, r in enumerate(rows):
      ctx = (
        _field(task, native, r, 'ctx_a', i) + ' ' + _field(task, native, r, 'ctx_b', i).capitalize()
      )
      query = hellaswag_preprocess(_field(task, native, r, 'activity_label', i) + ': ' + ctx)
      choices = [hellaswag_preprocess(e) for e in _field(task, native, r, 'endings', i)]
      docs.append(
        MultipleChoiceDoc(
          [(query, ' ' + c) for c in choices], choices, int(_field(task, native, r, 'label', i))
        )
      )
    return docs
  path = _need(task, data_dir / ALTERNATIVE_FILES[TASK_FILES['hellaswag'][0]])
  try:
    with bz2.open(path, 'rt', encoding='utf-8') as f:
      lines = f.read().split('\n')
  except (OSError, EOFError, UnicodeDecodeError) as e:
    raise TaskDataError(f'{task}: cannot read {str(path)!r}: {e}') from None
  if lines and lines[-1] == '':
    lines.pop()
  if len(lines) % 6 or not lines:
    raise TaskDataError(f'{task}: {str(path)!r} has {len(lines)} lines, not a multiple of 6')
  for k in range(0, len(lines), 6):
    try:
      gold = int(lines[k + 1])
    except ValueError:
      raise TaskDataError(
        f'{task}: bad label {lines[k + 1]!r} on line {k + 2} of {str(path)!r}'
      ) from None
    query = _hellaswag_query_from_export(lines[k])
    choices = [hellaswag_preprocess(e) for e in lines[k + 2 : k + 6]]
    docs.append(MultipleChoiceDoc([(query, ' ' + c) for c in choices], choices, gold))
  return docs


def _winogrande(data_dir: Path) -> list[Doc]:
  task, path = 'winogrande', data_dir / TASK_FILES['winogrande'][0]
  rows = _read_jsonl(task, path)
  docs = []
  for i, r in enumerate(rows):
    sentence = _field(task, path, r, 'sentence', i)
    if '_' not in sentence:
      raise TaskDataError(f"{task}: example {i} of {str(path)!r} has no '_' blank")
    idx = sentence.index('_')
    target = sentence[idx + 1 :].strip()
    contexts = [sentence[:idx] + _field(task, path, r, k, i) for k in ('option1', 'option2')]
    answer = str(_field(task, path, r, 'answer', i))
    if answer not in ('1', '2'):
      raise TaskDataError(f'{task}: example {i} of {str(path)!r} has answer {answer!r}')
    docs.append(MultipleChoiceDoc([(c, ' ' + target) for c in contexts], contexts, int(answer) - 1))
  return docs


def _arc(data_dir: Path, name: str, optional: Sequence[str] = ()) -> list[Doc]:
  rows = []
  for fname in TASK_FILES[name]:
    p = data_dir / fname
    rows += [(p, r) for r in _read_jsonl(name, p)]
  for fname in optional:
    p = data_dir / 'arc' / fname
    if p.is_file():
      rows += [(p, r) for r in _read_jsonl(name, p)]
  docs = []
  for i, (path, r) in enumerate(rows):
    q = _field(name, path, r, 'question', i)
    if not isinstance(q, dict) or 'stem' not in q or 'choices' not in q:
      raise TaskDataError(f'{name}: example {i} of {str(path)!r} is not in ARC schema')
    labels = [c['label'] for c in q['choices']]
    texts = [c['text'] for c in q['choices']]
    key = _field(name, path, r, 'answerKey', i)
    if key not in labels:
      raise TaskDataError(
        f'{name}: example {i} of {str(path)!r}: answerKey {key!r} not in {labels}'
      )
    ctx = f'Question: {q["stem"]}\nAnswer:'
    docs.append(MultipleChoiceDoc([(ctx, ' ' + t) for t in texts], texts, labels.index(key)))
  return docs


def _siqa(data_dir: Path) -> list[Doc]:
  task, path = 'siqa', data_dir / TASK_FILES['siqa'][0]
  rows = _read_jsonl(task, path)
  labels = _read_labels(task, data_dir / TASK_FILES['siqa'][1], len(rows))
  docs = []
  for i, (r, y) in enumerate(zip(rows, labels)):
    ctx = f'Q: {_field(task, path, r, "context", i)} {_field(task, path, r, "question", i)}\nA:'
    choices = [_field(task, path, r, k, i) for k in ('answerA', 'answerB', 'answerC')]
    docs.append(MultipleChoiceDoc([(ctx, ' ' + c) for c in choices], choices, y - 1))
  return docs


def _boolq(data_dir: Path) -> list[Doc]:
  task, path = 'boolq', data_dir / TASK_FILES['boolq'][0]
  docs = []
  for i, r in enumerate(_read_jsonl(task, path)):
    ctx = f'{_field(task, path, r, "passage", i)}\nQuestion: {_field(task, path, r, "question", i)}?\nAnswer:'
    ans = _field(task, path, r, 'answer', i)
    if not isinstance(ans, bool):
      raise TaskDataError(f'{task}: example {i} of {str(path)!r} has a non-boolean answer {ans!r}')
    choices = ['no', 'yes']
    docs.append(MultipleChoiceDoc([(ctx, ' ' + c) for c in choices], choices, int(ans)))
  return docs


def _lambada(data_dir: Path) -> list[Doc]:
  task, path = 'lambada', data_dir / TASK_FILES['lambada'][0]
  docs = []
  for i, r in enumerate(_read_jsonl(task, path)):
    text = _field(task, path, r, 'text', i)
    words = text.split(' ')
    docs.append(LoglikelihoodDoc([(' '.join(words[:-1]), ' ' + words[-1])]))
  return docs


def _wikitext(data_dir: Path) -> list[Doc]:
  task, path = 'wikitext', data_dir / TASK_FILES['wikitext'][0]
  _need(task, path)
  try:
    raw = path.read_text(encoding='utf-8')
  except UnicodeDecodeError as e:
    raise TaskDataError(f'{task}: {str(path)!r} is not UTF-8: {e}') from None
  pages = wikitext_documents(raw)
  if not pages:
    raise TaskDataError(f'{task}: no documents in {str(path)!r}')
  return [
    RollingDoc(wikitext_detokenizer(p), len(re.split(r'\s+', p)), len(p.encode('utf-8')))
    for p in pages
  ]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  name: str
  loader: Callable[[Path], list[Doc]]
  metrics: tuple[str, ...]  # the metrics reported in the table, in order
  kind: str  # 'multiple_choice' | 'loglikelihood' | 'rolling'


TASKS: dict[str, TaskSpec] = {
  'wikitext': TaskSpec('wikitext', _wikitext, ('word_perplexity',), 'rolling'),
  'lambada': TaskSpec('lambada', _lambada, ('perplexity', 'acc'), 'loglikelihood'),
  'piqa': TaskSpec('piqa', _piqa, ('acc', 'acc_norm'), 'multiple_choice'),
  'hellaswag': TaskSpec('hellaswag', _hellaswag, ('acc', 'acc_norm'), 'multiple_choice'),
  'winogrande': TaskSpec('winogrande', _winogrande, ('acc',), 'multiple_choice'),
  'arc_easy': TaskSpec(
    'arc_easy',
    lambda d: _arc(d, 'arc_easy'),
    ('acc', 'acc_norm'),
    'multiple_choice',
  ),
  'arc_challenge': TaskSpec(
    'arc_challenge',
    lambda d: _arc(
      d,
      'arc_challenge',
      ['ARC-Challenge-Test.missing2.from_llmfoundry.jsonl'],
    ),
    ('acc', 'acc_norm'),
    'multiple_choice',
  ),
  'siqa': TaskSpec('siqa', _siqa, ('acc',), 'multiple_choice'),
  'boolq': TaskSpec('boolq', _boolq, ('acc',), 'multiple_choice'),
}
PAPER_TASKS = (
  'wikitext',
  'lambada',
  'piqa',
  'hellaswag',
  'winogrande',
  'arc_easy',
  'arc_challenge',
  'siqa',
  'boolq',
)


def load_task(
  name: str, data_dir: str | os.PathLike | None = None, limit: int | None = None
) -> list[Doc]:
  """The documents of task ``name`` (the first ``limit`` when given)."""
  name = ALIASES.get(name, name)
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known: {", ".join(TASKS)}')
  data_dir = Path(data_dir).expanduser() if data_dir else default_data_dir()
  docs = TASKS[name].loader(data_dir)
  return docs[:limit] if limit else docs
