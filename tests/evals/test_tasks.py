"""Loaders and prompts of every task, on the real files in shared/data."""

import json

import pytest

from miras_jax.evals.tasks import (
  TaskDataError,
  _hellaswag_query_from_export,
  aggregate,
  hellaswag_preprocess,
  load_task,
  wikitext_detokenizer,
  wikitext_documents,
)

COUNTS = {
  'piqa': 1838,
  'hellaswag': 10042,
  'winogrande': 1267,
  'arc_easy': 2376,
  'arc_challenge': 1172,
  'siqa': 1954,
  'boolq': 3270,
  'lambada': 5153,
  'wikitext': 62,
}


@pytest.mark.parametrize('task', list(COUNTS))
def test_counts(task, data_dir):
  assert len(load_task(task, data_dir)) == COUNTS[task]
  assert len(load_task(task, data_dir, limit=3)) == 3


def test_piqa(data_dir):
  d = load_task('piqa', data_dir, 1)[0]
  assert (
    d.requests[0][0]
    == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
  )
  assert d.requests[0][1].startswith(
    ' Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper'
  )
  assert d.requests[1][1].startswith(
    ' Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans'
  )
  assert d.gold == 0 and d.choices[0] == d.requests[0][1][1:]


def test_hellaswag(data_dir):
  docs = load_task('hellaswag', data_dir, 2)
  assert docs[0].requests[0] == (
    'Roof shingle removal: A man is sitting on a roof. He',
    ' is using wrap to wrap a pair of skis.',
  )
  assert docs[0].gold == 3 and len(docs[0].requests) == 4
  assert docs[1].requests[3] == (
    'Clean and jerk: A lady walks to a barbell. She bends down and grabs the pole. The lady',
    ' stands and lifts the weight over her head.',
  )


def test_hellaswag_preprocess():
  assert hellaswag_preprocess(' Foo [title] Bar [step] baz  qux ') == 'Foo. Bar baz qux'
  assert (
    _hellaswag_query_from_export('Label: First sentence. the man')
    == 'Label: First sentence. The man'
  )
  assert _hellaswag_query_from_export('Label: the man') == 'Label: The man'
  assert _hellaswag_query_from_export('Label: All capitalised. He') == 'Label: All capitalised. He'


def test_hellaswag_native_jsonl(tmp_path):
  (tmp_path / 'hellaswag').mkdir()
  row = {
    'activity_label': 'Roof shingle removal',
    'ctx_a': 'A man is sitting on a roof.',
    'ctx_b': 'he',
    'endings': ['is using wrap [title] x.', 'b', 'c', 'd'],
    'label': '3',
  }
  (tmp_path / 'hellaswag' / 'hellaswag_val.jsonl').write_text(json.dumps(row) + '\n')
  d = load_task('hellaswag', tmp_path)[0]
  assert d.requests[0] == (
    'Roof shingle removal: A man is sitting on a roof. He',
    ' is using wrap. x.',
  )
  assert d.gold == 3


def test_winogrande_partial_scoring(data_dir):
  d = load_task('winogrande', data_dir, 1)[0]
  assert d.requests == [
    ('Sarah was a much better surgeon than Maria so Sarah', ' always got the easier cases.'),
    ('Sarah was a much better surgeon than Maria so Maria', ' always got the easier cases.'),
  ]
  assert d.gold == 1 and d.choices == [r[0] for r in d.requests]  # answer "2": Maria


def test_arc(data_dir):
  e = load_task('arc_easy', data_dir, 1)[0]
  assert e.requests[0] == (
    'Question: Which statement best explains why photosynthesis is the foundation of '
    'most food webs?\nAnswer:',
    ' Sunlight is the source of energy for nearly all ecosystems.',
  )
  c = load_task('arc_challenge', data_dir)
  assert c[-1].requests[0][0].startswith('Question: ') and 0 <= c[-1].gold < len(c[-1].requests)
  numeric = [d for d in load_task('arc_easy', data_dir) if d.choices and d.gold >= 0]
  assert len(numeric) == 2376


def test_siqa_boolq_lambada(data_dir):
  s = load_task('siqa', data_dir, 1)[0]
  assert s.requests[0] == (
    "Q: Tracy didn't go home that evening and resisted Riley's attacks. What does Tracy "
    'need to do before this?\nA:',
    ' make a new plan',
  )
  assert s.gold == 2  # label 3 (1-based)
  b = load_task('boolq', data_dir, 1)[0]
  assert b.requests[0][0].endswith(
    '\nQuestion: does ethanol take more energy make that produces?\nAnswer:'
  )
  assert [r[1] for r in b.requests] == [' no', ' yes'] and b.gold == 0
  lam = load_task('lambada', data_dir, 1)[0]
  assert lam.requests[0][1] == ' signs' and lam.requests[0][0].endswith("I don't care about")


def test_wikitext(data_dir):
  docs = load_task('wikitext', data_dir)
  assert docs[0].text.startswith(
    ' = Robert Boulter =\n\nRobert Boulter is an English film, television and '
    'theatre actor. He had a guest-starring role'
  )
  assert sum(d.words for d in docs) == 241211 + 2 * 62  # ws-tokens + leading/trailing '' per page


def test_wikitext_documents_and_detokenizer():
  raw = ' = A = \r\n Text @-@ here . \n = = Sub = = \n More , text . \n = B = \n Other . \n'
  pages = wikitext_documents(raw)
  assert pages == [
    ' = A = \n \n Text @-@ here . \n \n = = Sub = = \n \n More , text . \n ',
    ' = B = \n \n Other . \n',
  ]
  assert wikitext_detokenizer(pages[0]) == ' = A =\n\nText-here.\n\n== Sub ==\n\nMore, text.\n'


def test_missing_and_malformed_files(tmp_path):
  with pytest.raises(TaskDataError, match=r'piqa: data file not found: .*piqa/valid.jsonl'):
    load_task('piqa', tmp_path)
  (tmp_path / 'boolq').mkdir()
  (tmp_path / 'boolq' / 'dev.jsonl').write_text(
    '{"question": "q", "passage": "p", "answer": true}\n{oops\n'
  )
  with pytest.raises(TaskDataError, match=r'boolq: malformed JSON on line 2 of .*boolq/dev.jsonl'):
    load_task('boolq', tmp_path)
  (tmp_path / 'hellaswag').mkdir()
  import bz2

  (tmp_path / 'hellaswag' / 'hellaswag_val_full.txt.bz2').write_bytes(bz2.compress(b'a\n1\nx\ny\n'))
  with pytest.raises(TaskDataError, match=r'hellaswag: .* not a multiple of 6'):
    load_task('hellaswag', tmp_path)
  with pytest.raises(ValueError, match='unknown task'):
    load_task('nope', tmp_path)


def test_aggregate():
  import math

  agg = aggregate([{'perplexity': -1.0, 'acc': 1.0}, {'perplexity': -3.0, 'acc': 0.0}])
  assert agg == {'perplexity': pytest.approx(math.exp(2.0)), 'acc': 0.5}
  agg = aggregate([{'word_perplexity': (-4.0, 2)}, {'word_perplexity': (-2.0, 4)}])
  assert agg['word_perplexity'] == pytest.approx(math.exp(1.0))
