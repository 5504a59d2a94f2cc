"""In-process unit tests of the trainer's small modules (no training runs)."""

from __future__ import annotations

import json
import runpy
import types
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from miras_jax.models import presets
from miras_jax.train import config as config_lib
from miras_jax.train import defaults as base
from miras_jax.train import metrics as metrics_lib
from miras_jax.train import optimizer as optimizer_lib
from miras_jax.train import sharding as sharding_lib


# ------------------------------------------------------------------ sharding
def test_mesh_shape_resolves_and_rejects():
  assert sharding_lib.mesh_shape(-1, 2, 2, 8) == (2, 2, 1, 2)
  assert sharding_lib.mesh_shape(1, -1, 1, 4) == (1, 4, 1, 1)
  assert sharding_lib.mesh_shape(2, 1, 1, 8, sequence=-1) == (2, 1, 4, 1)
  with pytest.raises(sharding_lib.MeshError, match='needs 4 devices, but 8'):
    sharding_lib.mesh_shape(2, 2, 1, 8)
  with pytest.raises(sharding_lib.MeshError, match='not divisible'):
    sharding_lib.mesh_shape(-1, 3, 1, 8)
  with pytest.raises(sharding_lib.MeshError, match='at most one -1'):
    sharding_lib.mesh_shape(-1, -1, 1, 8)


def test_rules_table_maps_every_logical_name_once():
  names = [name for name, _ in sharding_lib.LOGICAL_AXIS_RULES]
  assert len(names) == len(set(names))
  for required in (
    'embed',
    'heads',
    'kv_heads',
    'head_dim',
    'mlp',
    'vocab',
    'activation_batch',
    'activation_length',
    'activation_embed',
  ):
    assert required in names
  mesh_axes = set(sharding_lib.MESH_AXES)
  for _, axes in sharding_lib.LOGICAL_AXIS_RULES:
    for a in axes if isinstance(axes, tuple) else (axes,):
      assert a is None or a in mesh_axes


def test_logical_shardings_follow_rules_and_skip_indivisible():
  class Toy(nn.Module):
    @nn.compact
    def __call__(self, x):
      w = self.param(
        'w', nn.with_logical_partitioning(nn.initializers.ones, ('embed', 'mlp')), (4, 6)
      )
      v = self.param(
        'v', nn.with_logical_partitioning(nn.initializers.ones, ('vocab', 'embed')), (3, 4)
      )
      b = self.param('b', nn.initializers.zeros, (6,))
      return x @ w + b + v.sum()

  mesh = sharding_lib.make_mesh(1, 1, 1)
  boxed = jax.eval_shape(lambda k: Toy().init(k, jnp.ones((2, 4)))['params'], jax.random.key(0))
  sh = sharding_lib.logical_shardings(boxed, mesh)
  assert sh['w'].spec == P('fsdp', 'tensor')
  assert sh['v'].spec == P('tensor', 'fsdp')  # size-1 axes divide everything
  assert all(a is None for a in sh['b'].spec)  # unannotated: replicated
  # a dimension the mesh axis does not divide is left unsharded
  fake = jax.sharding.AbstractMesh((1, 2, 1, 1), sharding_lib.MESH_AXES)
  assert sharding_lib._fit(P('tensor', 'fsdp'), (3, 4), fake, 'v') == P('tensor', 'fsdp')
  assert sharding_lib._fit(P('fsdp', None), (3, 4), fake, 'v') == P(None, None)


# ----------------------------------------------------------------- optimizer
def _train_cfg(**kw):
  t = base.defaults().train
  for k, v in kw.items():
    t[k] = v
  return t


def test_schedule_warmup_then_cosine():
  sched = optimizer_lib.learning_rate_schedule(
    _train_cfg(steps=100, warmup_steps=10, lr=1.0, min_lr_ratio=0.1)
  )
  assert 0 < float(sched(0)) < 0.2
  assert float(sched(10)) == pytest.approx(1.0)
  assert float(sched(100)) == pytest.approx(0.1)
  assert all(float(sched(s)) >= float(sched(s + 1)) for s in range(10, 100))


def test_weight_decay_mask():
  params = {
    'embed': {'embedding': jnp.ones((8, 4))},
    'blocks': {
      'mlp': {'gate': {'kernel': jnp.ones((2, 4, 8))}},
      'attn_norm': {'scale': jnp.ones((2, 4))},
      'mixer': {
        'gate_bias_eta': jnp.ones((2, 4)),
        'gate_down_eta': {'kernel': jnp.ones((2, 4, 8))},
        'q_proj': {'kernel': jnp.ones((2, 4, 4, 2))},
      },
    },
    'final_norm': {'scale': jnp.ones((4,))},
    'bias': jnp.ones((4,)),
  }
  mask = optimizer_lib.decay_mask(params)
  assert mask['embed']['embedding'] and mask['blocks']['mlp']['gate']['kernel']
  assert mask['blocks']['mixer']['q_proj']['kernel']
  assert (
    not mask['blocks']['attn_norm']['scale']
    and not mask['final_norm']['scale']
    and not mask['bias']
  )
  assert (
    not mask['blocks']['mixer']['gate_bias_eta']
    and not mask['blocks']['mixer']['gate_down_eta']['kernel']
  )


def test_optimizer_clips_and_decays_only_masked():
  tx = optimizer_lib.make_optimizer(
    _train_cfg(steps=10, warmup_steps=0, lr=0.1, weight_decay=0.5, grad_clip=1.0)
  )
  params = {'w': jnp.ones((2, 2)), 'norm': {'scale': jnp.ones((2,))}}
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(
    zero, tx.init(params), params
  )  # zero grads: only weight decay moves params
  assert float(jnp.abs(updates['w']).max()) > 0
  assert float(jnp.abs(updates['norm']['scale']).max()) == 0


# -------------------------------------------------------------------- config
def test_validate_catches_inconsistent_values():
  c = base.defaults()
  c.model.name = 'lm'
  config_lib.validate(c, process_count=1)
  c.train.grad_accum_steps = 3
  with pytest.raises(config_lib.ConfigError, match='grad_accum_steps=3'):
    config_lib.validate(c, process_count=1)
  c.train.grad_accum_steps = 1
  with pytest.raises(config_lib.ConfigError, match='3 processes'):
    config_lib.validate(c, process_count=3)
  c.data.shards = 2  # 2 data shards: read by 1, 2 or 4 processes, not by 3
  for n in (1, 2, 4):
    config_lib.validate(c, process_count=n)
  c.train.batch_size = 48  # divisible by 3 processes, so the shard layout is what fails
  with pytest.raises(config_lib.ConfigError, match='data.shards=2 and the 3 processes'):
    config_lib.validate(c, process_count=3)
  c.data.shards = 5
  with pytest.raises(config_lib.ConfigError, match='divisor of train.batch_size'):
    config_lib.validate(c, process_count=1)
  c.data.shards, c.train.batch_size = 0, 32
  c.data.copy_fraction = 0.25  # 8 of 32 rows, or 4 of the 16 each of 2 data shards reads
  for n in (1, 2):
    config_lib.validate(c, process_count=n)
  with pytest.raises(config_lib.ConfigError, match='whole number of the 2 rows'):
    config_lib.validate(c, process_count=16)
  c.data.copy_length = 600
  with pytest.raises(config_lib.ConfigError, match='copy_length=600 read twice'):
    config_lib.validate(c, process_count=1)
  c.data.copy_fraction, c.data.copy_length = 0.0, 8
  c.train.compute_dtype = 'fp8'
  with pytest.raises(config_lib.ConfigError, match='compute_dtype'):
    config_lib.validate(c, process_count=1)


def test_compute_dtype_auto():
  c = base.defaults()
  assert config_lib.compute_dtype(c, 'cpu') == jnp.float32
  assert config_lib.compute_dtype(c, 'tpu') == jnp.bfloat16
  c.train.compute_dtype = 'bfloat16'
  assert config_lib.compute_dtype(c, 'cpu') == jnp.bfloat16


def _config_file(name):
  """A ``configs/<name>.py`` file as the trainer loads it: by path, not as a package."""
  path = Path(__file__).resolve().parents[2] / 'configs' / f'{name}.py'
  return types.SimpleNamespace(**runpy.run_path(str(path)))


def test_configs_load_and_lock():
  c = _config_file('quickstart').get_config()
  assert (list(c.model.pattern), c.model.rule) == (['swa', 'memory'], 'moneta')
  assert (c.data.corpus, c.data.copy_fraction, c.data.copy_length) == ('default', 0.25, 8)
  config_lib.validate(c, process_count=1)
  c.lock()
  with pytest.raises(AttributeError):
    c.train.stpes = 3
  with pytest.raises(TypeError):
    c.train.steps = 'ten'
  assert presets.parse_arg('yaad,170m') == ('yaad', '170m')
  c = _config_file('moneta').get_config('340m')
  assert (c.model.rule, c.model.d_model, c.train.seq_len, c.train.batch_size) == (
    'moneta',
    1024,
    4096,
    128,
  )
  assert c.train.steps == int(15e9 // (128 * 4096))
  assert list(_config_file('transformer').get_config('tiny').model.pattern) == ['attention']
  assert list(_config_file('base').get_config('transformer').model.pattern) == ['attention']


def test_run_directory_with_legacy_family_key_loads_and_resumes(tmp_path):
  """Configs stored before LMConfig dropped ``model.family`` still evaluate and resume."""
  from miras_jax import workdir as workdir_lib
  from miras_jax.evals.checkpoint import load_config, resolve_checkpoint
  from miras_jax.models.config import LMConfig
  from miras_jax.train import checkpoint as ckpt_lib
  from miras_jax.train.run_directory import check_resume_config

  now = config_lib.to_dict(base.family_config('moneta', 'tiny'))
  assert 'family' not in now['model']
  old = json.loads(json.dumps(now))
  old['model']['family'] = 'moneta'
  step = workdir_lib.step_dir(tmp_path / workdir_lib.CHECKPOINT_DIR, 5)
  workdir_lib.stored_config_path(step).parent.mkdir(parents=True)
  workdir_lib.stored_config_path(step).write_text(json.dumps(old))
  (step / workdir_lib.COMMIT_MARKERS[0]).write_text('')
  (step / 'state').mkdir()
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(old))

  stored = load_config(resolve_checkpoint(tmp_path))
  assert stored['model']['family'] == 'moneta'
  assert LMConfig.from_config(stored['model']) == LMConfig.from_config(now['model'])
  check_resume_config(step.parent, now)  # no refusal
  with pytest.raises(ckpt_lib.CheckpointMismatchError, match='model.d_model'):
    check_resume_config(step.parent, {**now, 'model': {**now['model'], 'd_model': 32}})
  with pytest.raises(ValueError, match='famly'):  # other unknown keys are still refused
    LMConfig.from_config({**now['model'], 'famly': 'moneta'})


# ------------------------------------------------------------------- metrics
def test_metrics_writer_and_read_back(tmp_path):
  w = metrics_lib.MetricsWriter(tmp_path, total_steps=3, enabled=True)
  w.write(1, {'loss': 3.0, 'lr': np.float32(0.1)})
  w.write(2, {'loss': 2.5})
  w.write(2, {'val_loss': 2.7})
  w.close()
  w = metrics_lib.MetricsWriter(
    tmp_path, total_steps=3, enabled=True
  )  # a resumed run re-logs step 2
  w.write(2, {'loss': 2.4})
  w.close()
  with open(tmp_path / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 3, "lo')  # cut by a hard kill
  rows = metrics_lib.read_metrics(tmp_path)
  assert [r['step'] for r in rows] == [1, 2]
  assert rows[1] == {'step': 2, 'loss': 2.4}
  assert json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[0])[
    'lr'
  ] == pytest.approx(0.1)
  assert metrics_lib.plot_loss_curve(tmp_path).stat().st_size > 0
  assert list((tmp_path / 'tensorboard').glob('events.out.tfevents.*'))


def test_peak_flops_and_flop_count():
  assert metrics_lib.device_peak_flops(jax.devices('cpu')[0]) is None

  class FakeTPU:
    device_kind = 'TPU v5p'

  assert metrics_lib.device_peak_flops(FakeTPU()) == 459e12
  flops, source = metrics_lib.flops_per_token(base.defaults().model, 128)
  assert flops > 0 and source


def test_format_duration():
  assert metrics_lib.format_duration(59) == '0m59s'
  assert metrics_lib.format_duration(3725) == '1h02m05s'
