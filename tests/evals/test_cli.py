"""End to end: a checkpoint in the trainer's layout -> ``python -m miras_jax.eval`` -> table + JSON."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

SEQ = 64


@pytest.fixture(scope='module')
def run_dir(tmp_path_factory, llama_tokenizer):
  import optax

  from miras_jax.models import build_model
  from miras_jax.models.presets import model_config
  from miras_jax.train.checkpoint import Checkpointer
  from miras_jax.train.loop import TrainState

  cfg = model_config('transformer', 'tiny')
  cfg.vocab_size = llama_tokenizer.vocab_size
  cfg.max_len = SEQ
  model = build_model(cfg)
  from flax import linen as nn

  params = nn.meta.unbox(
    jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 16), jnp.int32))['params']
  )
  tx = optax.adamw(1e-3)
  state = TrainState(step=jnp.asarray(5, jnp.int32), params=params, opt_state=tx.init(params))
  run = tmp_path_factory.mktemp('run')
  config = {
    'model': cfg.to_dict(),
    'data': {'tokenizer': llama_tokenizer.path},
    'train': {'seq_len': SEQ},
    'checkpoint': {},
    'eval': {'batch_size': 4},
  }
  (run / 'config.json').write_text(json.dumps(config))
  ck = Checkpointer(run / 'checkpoints', every_steps=1, keep_last=3, async_save=False)
  ck.save(5, state, {}, config, force=True)
  ck.save(9, state.replace(params=jax.tree.map(lambda p: p * 0, params)), {}, config, force=True)
  ck.close()
  return run, cfg, params


def test_load_params_latest_and_named(run_dir):
  from miras_jax.evals.checkpoint import load_config, load_params, resolve_checkpoint

  run, cfg, params = run_dir
  ck = resolve_checkpoint(run)
  assert ck.step == 9
  assert all(float(jnp.abs(x).max()) == 0 for x in jax.tree.leaves(load_params(ck)))
  for where in (resolve_checkpoint(run, 5), resolve_checkpoint(run / 'checkpoints' / '5')):
    got = load_params(where)
    jax.tree.map(np.testing.assert_array_equal, got, params)
    assert load_config(where)['train']['seq_len'] == SEQ
  with pytest.raises(FileNotFoundError, match='no checkpoint for step 7'):
    resolve_checkpoint(run, 7)


def test_cli_end_to_end(run_dir, data_dir, capsys):
  from miras_jax.evals import evaluate
  from miras_jax.evals.cli import main

  run, cfg, params = run_dir
  out = main(
    [
      f'--workdir={run}',
      '--step=5',
      '--tasks=piqa,lambada,wikitext,arc_challenge,niah,mqar,copy,copy_fixed',
      f'--data_dir={data_dir}',
      '--limit=2',
      '--niah_lengths=48,96',
      '--niah_samples=2',
      '--niah_variants=passkey,word',
      '--mqar_pairs=2,4',
      '--mqar_samples=2',
      '--copy_words=2',
      '--copy_samples=2',
      '--copy_fixed_samples=3',
      '--quiet',
    ]
  )
  printed = capsys.readouterr().out
  assert '| Wiki. ppl |' in printed.replace('  ', ' ') or 'Wiki. ppl' in printed
  saved = json.loads((run / 'eval' / 'step_5.json').read_text())
  assert saved['table'] == pytest.approx(out['table'])
  assert set(saved['results']) == {'piqa', 'lambada', 'wikitext', 'arc_challenge'}
  assert saved['results']['piqa']['num_docs'] == 2 and 0 <= saved['table']['PIQA acc'] <= 100
  assert saved['results']['wikitext']['word_perplexity'] > 1
  assert set(saved['synthetic']['niah']) == {'passkey', 'word', 'mean'}
  assert set(saved['synthetic']['niah']['passkey']) == {'48', '96'}
  assert set(saved['synthetic']['mqar']['acc']) == {'2', '4'}
  # copy is scored for the model at initialisation too (the config's seed, 0): step 5 holds
  # exactly those parameters, so both scores agree
  copy = dict(saved['synthetic']['copy'])
  init = copy.pop('init')
  assert set(init['first_acc']) == {'2'} and init == copy
  assert 'in-context copying' in printed and 'the same model at initialisation' in printed
  fixed = dict(saved['synthetic']['copy_fixed'])
  assert fixed.pop('init') == fixed and (fixed['length'], fixed['samples']) == (8, 3)
  assert 'fixed-offset copying (3 blocks of 8 random tokens' in printed
  # the trainer's entry point gives the same numbers
  direct = evaluate(
    params,
    cfg,
    data_dir / 'tokenizer_llama2' / 'tokenizer.model',
    ['piqa', 'lambada'],
    data_dir,
    limit=2,
    batch_size=3,
    max_len=SEQ,
  )
  for t in ('piqa', 'lambada'):
    for k, v in direct['results'][t].items():
      assert saved['results'][t][k] == pytest.approx(v, rel=1e-5, abs=1e-6)


def test_cli_errors(tmp_path, capsys):
  from miras_jax.evals.checkpoint import CheckpointNotFoundError
  from miras_jax.evals.cli import main

  # a task that needs no files: the checkpoint error must not depend on ../shared being there
  with pytest.raises(CheckpointNotFoundError, match='no checkpoints under'):
    main([f'--workdir={tmp_path}', '--tasks=heldout'])
  with pytest.raises(ValueError, match='unknown task'):
    main([f'--workdir={tmp_path}', '--tasks=piqa,foo'])


def test_niah_prompts(llama_tokenizer):
  from miras_jax.evals.synthetic import make_mqar, make_niah

  samples = make_niah(llama_tokenizer, [1024, 4096], ['passkey', 'number', 'word'], samples=3)
  assert len(samples) == 18
  for s in samples:
    assert abs(len(s.context) + len(s.answer) - s.length) <= 24
    text = llama_tokenizer.decode(s.context)
    assert s.answer_text in text and llama_tokenizer.decode(s.answer).strip() == s.answer_text
    if s.depth == 0.0:
      assert text.index(s.answer_text) < 300
  again = make_niah(llama_tokenizer, [1024], ['word'], samples=3)
  assert [s.context for s in again] == [
    s.context for s in samples if s.variant == 'word' and s.length == 1024
  ]
  ctx, query, spans = make_mqar(llama_tokenizer, 8, samples=1)[0]
  assert len(spans) == 8
  values = [llama_tokenizer.decode(query[a:b]).strip() for a, b in spans]
  assert all(v.isdigit() and len(v) == 3 for v in values)
  assert all(v in llama_tokenizer.decode(ctx) for v in values)
