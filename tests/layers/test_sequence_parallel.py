"""Sequence (context) parallelism of a whole model step (layers/sequence_parallel.py).

On 8 simulated CPU devices (a subprocess: the device count is fixed when JAX starts), a model on
the mesh data 2 x sequence 4 gives the loss and the gradient of every parameter of the same
model on one device (fp32, random parameters, so W_0 and every gate are non-trivial), with
packed documents whose boundaries fall on a slice boundary, inside a slice, and documents that
run across slices. By default: a one-layer GLA LM (conv halo, local chunked memory, state
combine across devices) and a one-layer Transformer++ (K / V all-gather), plus the trainer's
startup refusal (one line) of a deep memory; and the Gated DeltaNet memory alone on 4 slices
(the delta rules' widened local run and [dk, dk] combine). ``-m slow``: the tiny presets of GLA,
RetNet, the GLA hybrid (memory + sliding-window attention) and Transformer++ at sequence 8, as
configured (scanned, rematerialised layers), and a Mamba2 LM whose slices run the Pallas kernel
(memory_impl='pallas'); one-layer and preset Gated DeltaNet, DeltaNet and Longhorn LMs, and a
Gated DeltaNet LM on the Pallas delta-rule kernel; the DeltaNet and Longhorn memories alone.
"""

from __future__ import annotations

import textwrap

import pytest

from miras_jax.layers import sequence_parallel
from miras_jax.models import LMConfig
from miras_jax.models.presets import model_config
from tests.layers._util import run_on_cpu_devices

SCRIPT = textwrap.dedent("""
    import re, sys
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from miras_jax.models import build_model
    from miras_jax.models.positions import positions_from_segments
    from miras_jax.models.presets import model_config
    from miras_jax.testing import assert_tree_close
    from miras_jax.train import loop, sharding as sh
    from miras_jax.train.defaults import paper_config
    from miras_jax.train.steps import make_loss_fn

    assert jax.device_count() == 8
    B, T = 4, 32
    rng = np.random.default_rng(0)
    # Document starts (slices of 8 tokens at sequence 4): on a slice boundary (8, 24), inside a
    # slice (13, 3, 29), and documents that run across one or more boundaries.
    starts = [[8, 13], [3, 24], [], [29]]
    seg = np.zeros((B, T), np.int32)
    for b, s in enumerate(starts):
      for t in s:
        seg[b, t:] += 1
    seg = jnp.asarray(seg)
    batch = {
      'inputs': jnp.asarray(rng.integers(0, 256, (B, T)), jnp.int32),
      'targets': jnp.asarray(rng.integers(0, 256, (B, T)), jnp.int32),
      'loss_mask': jnp.ones((B, T), jnp.int32),
      'segment_ids': seg,
      'positions': positions_from_segments(seg),
    }
    SMALL = dict(n_layers=1, d_model=32, n_heads=2, mlp_dim=64, gate_rank=8, remat='none',
                 scan_layers=False)

    def same(family, seq, data, collectives, gathers_states_only=False, **over):
      cfg = model_config(family, 'tiny')
      for k, v in over.items():
        cfg[k] = v
      model = build_model(cfg)
      f = lambda p, b: make_loss_fn(model, jnp.float32, False)(p, b)[0]
      with nn.logical_axis_rules(sh.LOGICAL_AXIS_RULES):
        boxed = jax.eval_shape(lambda: model.init(jax.random.key(1), batch['inputs']))['params']
        params = jax.tree.map(
          lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape), a.dtype), nn.meta.unbox(boxed)
        )
        want = jax.jit(jax.value_and_grad(f))(params, batch)
        mesh = sh.make_mesh(data, 1, 1, sequence=seq)
        p = jax.device_put(params, sh.logical_shardings(boxed, mesh))
        b = jax.device_put(batch, sh.batch_sharding(mesh))
        with jax.set_mesh(mesh):
          step = jax.jit(jax.value_and_grad(f)).lower(p, b).compile()
          text = step.as_text()
          for op in collectives:  # the context-parallel forms ran
            assert op in text, (family, op)
          if gathers_states_only:  # ... and no activation was gathered whole: only the slices'
            # decays [P, B/data, H, dk] and states [P, B/data, H, dk, dv] cross devices
            shapes = re.findall(r'= f32\\[([\\d,]+)\\]\\S* all-gather', text)
            assert shapes and all(s.split(',')[0] == str(seq) for s in shapes), (family, shapes)
          got = step(p, b)
      assert_tree_close(got, want, 2e-5, family)
      print('ok', family, float(got[0]), flush=True)

    if sys.argv[1] == 'default':
      same('gla', 4, 2, ('collective-permute', 'all-gather'), True, **SMALL)
      same('transformer', 4, 2, ('all-gather',), **SMALL)
      for family in ('moneta',):
        config = paper_config(family, 'tiny')
        config.train.batch_size, config.train.seq_len = 8, 32
        config.train.mesh.data, config.train.mesh.sequence = -1, 4
        try:
          loop._plan(config)
          raise SystemExit(f'{family}: no refusal')
        except sh.MeshError as e:
          print('refused', family, str(e), flush=True)
    elif sys.argv[1] == 'delta':
      same('gated_deltanet', 4, 2, ('collective-permute', 'all-gather'), True, **SMALL)
      for family in ('gated_deltanet', 'deltanet', 'longhorn'):
        same(family, 4, 2, ('collective-permute', 'all-gather'))
      # the Pallas delta-rule kernel (interpret mode here) as the local implementation
      same('gated_deltanet', 4, 2, ('collective-permute',), memory_impl='pallas', **SMALL)
    else:
      same('gla', 4, 2, ('collective-permute', 'all-gather'))
      same('retnet', 4, 2, ('collective-permute', 'all-gather'))
      same('hybrid_gla', 4, 2, ('collective-permute', 'all-gather'))
      same('transformer', 8, 1, ('all-gather',))
      # the Pallas linear-memory kernel (interpret mode here) as the local implementation
      same('mamba2', 4, 2, ('collective-permute',), memory_impl='pallas', **SMALL)
""")


# The memory alone (layers/sequence_parallel.linear_memory with the XLA chunked path as the local
# run) on a mesh of 4 slices against memory_forward on one device: outputs, the final state dict
# and the gradients of q, k, v, every gate and W_0 — the layer side of the delta rules' combine
# (the widened run, the W_0 start of a slice that begins a document, the state layout), at a
# fraction of a whole model's compile time.
MEMORY_SCRIPT = textwrap.dedent("""
    import functools, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh
    from miras_jax.layers import sequence_parallel
    from miras_jax.memory import get_rule, memory_forward
    from miras_jax.testing import assert_tree_close, outputs_and_vjp

    B, H, T, D = 2, 2, 32, 8  # slices of 8 tokens
    rng = np.random.default_rng(0)
    normal = lambda *s: rng.standard_normal(s).astype(np.float32)
    seg = np.zeros((B, T), np.int32)
    for b, ss in enumerate([[8, 13], [3, 24]]):  # on slice boundaries (8, 24) and inside (13, 3)
      for t in ss:
        seg[b, t:] += 1
    mesh = Mesh(jax.devices()[:4], ('sequence',))
    for name in sys.argv[1].split(','):
      rule = get_rule(name)
      k = normal(B, H, T, D)
      args = [normal(B, H, T, D), k / np.linalg.norm(k, axis=-1, keepdims=True), normal(B, H, T, D)]
      gates = {'eta': 1 / (1 + np.exp(-normal(B, H, T)))}
      if rule.retention.decay != 'none':
        gates['log_alpha'] = -np.log1p(np.exp(-normal(B, H, T) - 2.0))
      w0 = (0.5 * normal(H, D, D),)
      fwd = functools.partial(memory_forward, chunk_size=4)  # several chunks per slice

      def one(q, k, v, gates, w0):
        return fwd(rule, q, k, v, gates, w0=w0, segment_ids=seg)

      def split(q, k, v, gates, w0):
        return sequence_parallel.linear_memory(
          rule, q, k, v, gates, w0=w0, outer={}, segment_ids=jnp.asarray(seg),
          axis='sequence', chunk_size=4, local_forward=fwd)

      def og(fn):  # y and the final memory, the state dict, the gradients
        ya = lambda *a: (lambda y, st: ((y, st['A'][0]), st))(*fn(*a))
        return outputs_and_vjp(ya, *args, gates, w0, has_aux=True)

      want = og(one)
      with jax.set_mesh(mesh):
        got = og(split)
      assert_tree_close(got, want, 1e-5, name)
      print('ok memory', name, flush=True)
""")


# Unoptimised XLA:CPU code generation halves the compile time of these tiny programs.
_FAST = '--xla_backend_optimization_level=0'


def _run(which: str) -> str:
  return run_on_cpu_devices(SCRIPT, which, timeout=1800, flags=_FAST)


def test_delta_rule_memory_split_equals_one_device():
  out = run_on_cpu_devices(MEMORY_SCRIPT, 'gated_deltanet', devices=4, flags=_FAST)
  assert 'ok memory gated_deltanet' in out, out


@pytest.mark.slow
def test_delta_rule_memories_split_equal_one_device():
  out = run_on_cpu_devices(MEMORY_SCRIPT, 'deltanet,longhorn', devices=4, flags=_FAST)
  for name in ('deltanet', 'longhorn'):
    assert f'ok memory {name}' in out, out


def test_sequence_parallel_step_equals_one_device():
  out = _run('default')
  for family in ('gla', 'transformer'):
    assert f'ok {family} ' in out, out
  lines = [line for line in out.splitlines() if line.startswith('refused')]
  assert lines == [
    "refused moneta train.mesh.sequence=4: memory rule 'moneta' (a deep (MLP) memory is not a "
    'linear recurrence) has no sequence parallelism; set train.mesh.sequence=1',
  ], out


@pytest.mark.slow
def test_sequence_parallel_presets_equal_one_device():
  out = _run('slow')
  for family in ('gla', 'retnet', 'hybrid_gla', 'transformer', 'mamba2'):
    assert f'ok {family} ' in out, out


@pytest.mark.slow
def test_sequence_parallel_delta_rules_equal_one_device():
  out = _run('delta')
  assert out.count('ok gated_deltanet ') == 3, out  # small, preset, Pallas local run
  for family in ('deltanet', 'longhorn'):
    assert f'ok {family} ' in out, out


@pytest.mark.parametrize('family', ['titans', 'yaad', 'memora', 'ttt_mlp', 'ttt_linear'])
def test_refusal_names_the_rule_and_the_axis(family):
  cfg = LMConfig.from_config(model_config(family, 'tiny'))
  with pytest.raises(sequence_parallel.SequenceParallelError) as e:
    sequence_parallel.check_model(cfg, 2, 64)
  msg = str(e.value)
  assert '\n' not in msg and f"'{family}'" in msg and 'train.mesh.sequence=2' in msg


def test_linear_and_attention_families_pass_the_check_and_bad_lengths_do_not():
  for family in ('gla', 'mamba2', 'linear_attention', 'retnet', 'hybrid_gla', 'transformer'):
    sequence_parallel.check_model(LMConfig.from_config(model_config(family, 'tiny')), 4, 64)
  for family in ('deltanet', 'gated_deltanet', 'longhorn'):  # the delta rules' [dk, dk] combine
    sequence_parallel.check_model(LMConfig.from_config(model_config(family, 'tiny')), 4, 64)
  cfg = LMConfig.from_config(model_config('gla', 'tiny'))
  with pytest.raises(sequence_parallel.SequenceParallelError, match='not divisible'):
    sequence_parallel.check_model(cfg, 4, 30)
  flash = LMConfig.from_config(
    dict(model_config('transformer', 'tiny'), attention_backend='pallas_tpu_flash')
  )
  with pytest.raises(sequence_parallel.SequenceParallelError, match='context-parallel'):
    sequence_parallel.check_model(flash, 4, 64)
