"""The lm-eval adapter and the built-in harness agree (skipped without lm-eval)."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

lm_eval = pytest.importorskip(
  'lm_eval', reason="lm-eval not installed (pip install 'miras-jax[eval]')"
)

V = 32000


def wavy(params, tokens, segment_ids=None, positions=None):
  """A deterministic toy LM whose next-token distribution depends on the current token."""
  return 3.0 * jnp.sin(
    tokens[..., None].astype(jnp.float32) * 0.37 + jnp.arange(V, dtype=jnp.float32) * 0.011
  )


def test_adapter_matches_builtin(tmp_path, data_dir, llama_tokenizer):
  from lm_eval.tasks import TaskManager

  from miras_jax.evals.harness import run_tasks
  from miras_jax.evals.lm_eval_adapter import MirasLM
  from miras_jax.evals.scoring import Scorer
  from miras_jax.evals.tasks import load_task

  n = 6
  rows = [
    json.loads(line) for line in (data_dir / 'piqa' / 'valid.jsonl').read_text().splitlines()[:n]
  ]
  labels = [int(x) for x in (data_dir / 'piqa' / 'valid-labels.lst').read_text().split()[:n]]
  with open(tmp_path / 'piqa.jsonl', 'w') as f:
    for r, y in zip(rows, labels):
      f.write(json.dumps({**r, 'label': y}) + '\n')
  lam = [
    json.loads(line)
    for line in (data_dir / 'lambada' / 'lambada_test.jsonl').read_text().splitlines()[:n]
  ]
  with open(tmp_path / 'lambada.jsonl', 'w') as f:
    for r in lam:
      f.write(json.dumps(r) + '\n')
  wiki = load_task('wikitext', data_dir, 1)
  with open(tmp_path / 'wiki.jsonl', 'w') as f:
    f.write(json.dumps({'page': wiki[0].text[:3000]}) + '\n')
  (tmp_path / 'local_piqa.yaml').write_text(f"""task: local_piqa
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {tmp_path / 'piqa.jsonl'}
output_type: multiple_choice
validation_split: validation
doc_to_text: "Question: {{{{goal}}}}\\nAnswer:"
doc_to_target: label
doc_to_choice: "{{{{[sol1, sol2]}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
""")
  (tmp_path / 'local_lambada.yaml').write_text(f"""task: local_lambada
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'lambada.jsonl'}
output_type: loglikelihood
test_split: test
doc_to_text: "{{{{text.split(' ')[:-1]|join(' ')}}}}"
doc_to_target: "{{{{' '+text.split(' ')[-1]}}}}"
metric_list:
  - metric: perplexity
    aggregation: perplexity
    higher_is_better: false
  - metric: acc
    aggregation: mean
    higher_is_better: true
""")
  (tmp_path / 'local_wiki.yaml').write_text(f"""task: local_wiki
dataset_path: json
dataset_kwargs:
  data_files:
    test: {tmp_path / 'wiki.jsonl'}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{page}}}}"
metric_list:
  - metric: word_perplexity
""")
  scorer = Scorer(wavy, {}, llama_tokenizer, max_len=64, batch_size=4)
  lm = MirasLM(scorer)
  out = lm_eval.simple_evaluate(
    model=lm,
    tasks=['local_piqa', 'local_lambada', 'local_wiki'],
    task_manager=TaskManager(include_path=str(tmp_path)),
  )
  res = out['results']
  ours = run_tasks(
    Scorer(wavy, {}, llama_tokenizer, max_len=64, batch_size=3, pack=True),
    ['piqa', 'lambada'],
    data_dir,
    limit=n,
  )
  assert res['local_piqa']['acc,none'] == pytest.approx(ours['piqa']['acc'])
  assert res['local_piqa']['acc_norm,none'] == pytest.approx(ours['piqa']['acc_norm'])
  assert res['local_lambada']['acc,none'] == pytest.approx(ours['lambada']['acc'])
  assert res['local_lambada']['perplexity,none'] == pytest.approx(
    ours['lambada']['perplexity'], rel=1e-5
  )
  text = wiki[0].text[:3000]
  (ll,) = scorer.loglikelihood_rolling([text])
  words = len(__import__('re').split(r'\s+', text))
  assert res['local_wiki']['word_perplexity,none'] == pytest.approx(math.exp(-ll / words), rel=1e-5)
  assert np.isfinite(ll)
