"""``python -m miras_jax.generate`` on a checkpoint in the trainer's layout: streamed single
prompt, a prompts file in batches (each completion equal to its prompt alone), one-line
errors."""

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from miras_jax.evals.tasks import default_data_dir
from tests.models._util import random_params


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
  import optax
  from flax import linen as nn

  from miras_jax.models import build_model
  from miras_jax.models.presets import model_config
  from miras_jax.train.checkpoint import Checkpointer
  from miras_jax.train.loop import TrainState

  tok = default_data_dir() / 'tokenizer_llama2' / 'tokenizer.model'
  if not tok.is_file():
    pytest.skip(f'Llama-2 tokenizer not found at {tok} (set MIRAS_SHARED_DATA)')
  cfg = model_config('hybrid_gated_deltanet', 'tiny')
  cfg.vocab_size, cfg.window = 32000, 4
  params = nn.meta.unbox(random_params(build_model(cfg), jnp.zeros((1, 8), jnp.int32))['params'])
  state = TrainState(step=jnp.asarray(3), params=params, opt_state=optax.sgd(0.1).init(params))
  run = tmp_path_factory.mktemp('run')
  config = {'model': cfg.to_dict(), 'data': {'tokenizer': str(tok)}, 'train': {'seq_len': 32}}
  (run / 'config.json').write_text(json.dumps(config))
  ck = Checkpointer(run / 'checkpoints', every_steps=1, keep_last=1, async_save=False)
  ck.save(3, state, {}, config, force=True)
  ck.close()
  return run


def test_prompt_streams_and_prompts_file_batches(run_dir, tmp_path, capsys):
  from miras_jax.inference.cli import main

  common = [f'--workdir={run_dir}', '--max_new_tokens=6', '--temperature=0.7', '--seed=1']
  (one,) = main(common + ['--prompt=The king said'])
  out, err = capsys.readouterr()
  assert out == 'The king said' + one['completion'] + '\n'  # streamed, then a newline
  assert 'tokens/s' in err and 'Metadata file does not exist' not in err
  prompts = tmp_path / 'prompts.txt'
  prompts.write_text('The king said\n\nOnce upon a time there was\nA\n')  # blank lines skipped
  dest = tmp_path / 'out.jsonl'
  rows = main(common + [f'--prompts_file={prompts}', '--batch_size=2', f'--output={dest}'])
  assert [r['prompt'] for r in rows] == ['The king said', 'Once upon a time there was', 'A']
  assert rows[0]['completion'] == one['completion']  # batched with another = alone (prompt 0)
  assert [json.loads(line) for line in dest.read_text().splitlines()] == rows


def test_bad_input_is_one_line(run_dir, tmp_path):
  from miras_jax.inference.cli import main

  env = {**os.environ, 'PYTHONPATH': os.getcwd()}
  cmd = [sys.executable, '-m', 'miras_jax.generate', f'--workdir={run_dir}', '--prompt=x']
  r = subprocess.run(cmd + ['--top_p=2'], capture_output=True, text=True, env=env, check=False)
  assert r.returncode == 2 and r.stderr == 'error: --top_p must be in (0, 1], got 2.0\n'
  with pytest.raises(ValueError, match='--max_new_tokens must be >= 1'):
    main([f'--workdir={run_dir}', '--prompt=x', '--max_new_tokens=0'])
  with pytest.raises(FileNotFoundError, match='prompts file not found'):
    main([f'--workdir={run_dir}', f'--prompts_file={tmp_path / "none.txt"}'])
  with pytest.raises(FileNotFoundError, match='no checkpoint'):
    main([f'--workdir={tmp_path}', '--prompt=x'])
