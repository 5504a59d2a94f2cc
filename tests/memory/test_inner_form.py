"""The general chunk's associative-scan in-chunk form (memory/chunk_scan.py) == its masked-matmul
form: outputs, final state and the gradient of every input (q, k, v, gates, initial state, W_0,
LayerNorm parameters), in fp64, at an odd length with a document reset inside a chunk and a
mid-chunk initial state. (The matmul form is checked against the token-by-token reference in
test_equivalence.py, so the scan form is too, through it.)

Default run: Titans with momentum on one chunk (chunk_step: front padding = a state two tokens
into the chunk, a reset inside it, tail padding = the odd length's last chunk), ≈ 11 s of CPU,
most of it compiling; the whole ``chunked`` call (≈ 30 s) and the other rules with a scan form
behind ``-m slow``. Plus the selection: 'auto' per platform, and the one-line errors."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.layers.attention_backends.pallas_tpu.interpret import compile_pallas_for_tpu
from miras_jax.memory import chunked, fresh_state, get_rule, memory_forward, with_options
from miras_jax.memory.chunk_scan import AUTO, resolve_inner_form
from miras_jax.memory.chunked import chunk_step, has_scan_form
from miras_jax.memory.testing import (
  assert_tree_close,
  perturbed_state,
  random_inputs,
  value_and_input_grads,
)


def _check(rule, T=11, chunk=4):
  assert has_scan_form(rule)
  with jax.enable_x64(True):
    f64 = lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x
    inp = random_inputs(rule, jax.random.PRNGKey(3), B=2, H=1, T=T, dk=4, segments=2)
    inp = jax.tree.map(f64, inp)
    # A non-trivial initial state (momentum included) two tokens into a chunk.
    state = perturbed_state(rule, inp['w0'], 2, jax.random.PRNGKey(5), pos=2)
    res = {}
    for form in ('matmul', 'scan'):
      call = lambda q, k, v, gates, form=form, **kw: chunked(
        rule,
        q,
        k,
        v,
        gates,
        segment_ids=inp['segment_ids'],
        chunk_size=chunk,
        inner_form=form,
        **kw,
      )
      res[form] = value_and_input_grads(call, inp, state)
  (_, (y_m, s_m)), g_m = res['matmul']
  (_, (y_s, s_s)), g_s = res['scan']
  # The reset falls strictly inside a chunk (not on a boundary) in at least one row.
  seg = inp['segment_ids']
  starts = jnp.argwhere(seg[:, 1:] != seg[:, :-1])[:, 1] + 1 + 2  # + pos: in-chunk slot
  assert bool(jnp.any(starts % chunk != 0))
  assert_tree_close(y_s, y_m, 1e-10, f'{rule.name} outputs')
  assert_tree_close(s_s, s_m, 1e-10, f'{rule.name} final state')
  inputs = (inp['q'], inp['k'], inp['v'], inp['gates'], state, inp['w0'], inp['outer'])
  for what, x, m, s in zip(('q', 'k', 'v', 'gates', 'state', 'w0', 'outer'), inputs, g_m, g_s):
    # Every input the rule has gets a gradient (linear attention has no gates, no LayerNorm).
    assert len(jax.tree.leaves(m)) == len(jax.tree.leaves(_floats(x) if what == 'state' else x))
    assert_tree_close(s, m, 1e-9, f'{rule.name} grad[{what}]')


def _floats(tree):
  return {n: x for n, x in tree.items() if n != 'pos'}


def _one_chunk(rule, dk=4):
  """One chunk of one head, fp64, made in numpy (no compiles). Slots 0–1: before the carried
  state's position; 2–6: real tokens, a document starts at 4; 7: tail padding. Padding slots have
  η = log α = log μ = 0, as chunked lays them."""
  rng = np.random.default_rng(3)
  normal = lambda *shape: rng.standard_normal(shape)
  log_sigmoid = lambda x: -np.logaddexp(0.0, -x)
  active = np.array([0, 0, 1, 1, 1, 1, 1, 0], np.float64)
  reset = np.array([0, 0, 0, 0, 1, 0, 0, 0], np.float64)
  b = active.shape[0]
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  x = dict(q=unit(normal(b, dk)), k=unit(normal(b, dk)), v=0.5 * normal(b, dk))
  x['eta'] = active / (1.0 + np.exp(-normal(b) + 0.5))
  x['log_alpha'] = active * log_sigmoid(normal(b) + 2.5)
  x['log_mu'] = active * log_sigmoid(normal(b) + 1.0)
  shapes = jax.eval_shape(lambda: rule.arch.init_weights(jax.random.PRNGKey(0), dk, dk))
  fresh = fresh_state(rule, tuple(0.3 * normal(*w.shape) for w in shapes))
  # A non-trivial carried state (weights, momentum, gradient point) two tokens into the chunk.
  st = {n: tuple(np.asarray(w) + 0.1 * normal(*w.shape) for w in fresh[n]) for n in _floats(fresh)}
  outer = jax.tree.map(lambda p: np.asarray(p) + 0.1 * normal(*p.shape), rule.arch.init_outer(dk))
  return st, x, dict(reset=reset, active=active), fresh, outer


def test_chunk_scan_equals_matmul_titans():
  rule = get_rule('titans')
  assert rule.algorithm.momentum
  gate_of = dict(eta='eta', la='log_alpha', lm='log_mu')

  def loss(stf, x, freshf, outer, masks, body, pos):
    xc = {n: x[gate_of.get(n, n)] for n in ('q', 'k', 'v', 'eta', 'la', 'lm')}
    xc.update(masks, delta=None, cut=None)
    new, y = body(dict(stf, pos=pos + 2), xc, (dict(freshf, pos=pos), outer))
    aux = (y, _floats(new))
    return jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(z)) for z in jax.tree.leaves(aux[1])), aux

  with jax.enable_x64(True):
    st, x, masks, fresh, outer = _one_chunk(rule)
    args = (st, x, _floats(fresh), outer, masks)
    res = {}
    for form in ('matmul', 'scan'):
      f = functools.partial(loss, body=chunk_step(rule, True, form), pos=fresh['pos'])
      res[form] = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3), has_aux=True))(*args)
  (_, (y_m, s_m)), g_m = res['matmul']
  (_, (y_s, s_s)), g_s = res['scan']
  assert_tree_close(y_s, y_m, 1e-10, 'outputs')
  assert_tree_close(s_s, s_m, 1e-10, 'final state')
  # The state, the token inputs (q, k, v, η, log α, log μ), W_0 (the reset target) and the
  # LayerNorm parameters.
  for what, m, s in zip(('state', 'tokens', 'w0', 'outer'), g_m, g_s):
    assert jax.tree.leaves(m), what
    assert_tree_close(s, m, 1e-9, f'grad[{what}]')


@pytest.mark.slow
def test_scan_equals_matmul_titans():
  _check(get_rule('titans'))


SLOW = {
  'moneta': get_rule('moneta'),
  'yaad': get_rule('yaad'),
  'memora': get_rule('memora'),
  'memora_lag': with_options(get_rule('memora'), memora_form='lag'),
  'titans_initial': with_options(get_rule('titans'), retention_target='initial'),
  'ttt_mlp': get_rule('ttt_mlp'),
  'ttt_linear': get_rule('ttt_linear'),
  'mamba2': get_rule('mamba2'),
  'linear_attention': get_rule('linear_attention'),
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(SLOW))
def test_scan_equals_matmul(name):
  _check(SLOW[name])


@pytest.mark.slow
def test_scan_equals_matmul_titans_long_chunk():
  # Chunk 16 at T = 37: several levels of the scan's tree, a partial last chunk.
  _check(get_rule('titans'), T=37, chunk=16)


def test_selection():
  assert resolve_inner_form('scan') == 'scan'
  assert resolve_inner_form('matmul') == 'matmul'
  assert resolve_inner_form('auto') == AUTO[jax.default_backend()]
  with compile_pallas_for_tpu():
    assert resolve_inner_form('auto') == AUTO['tpu']
  for name in ('gla', 'deltanet', 'gated_deltanet'):
    assert not has_scan_form(get_rule(name))
  x = jnp.zeros((1, 1, 3, 4))
  w0 = (jnp.zeros((1, 4, 4)),)
  with pytest.raises(ValueError, match='no associative-scan inner form'):
    chunked(get_rule('gla'), x, x, x, w0=w0, inner_form='scan')
  with pytest.raises(ValueError, match='unknown inner_form'):
    chunked(get_rule('titans'), x, x, x, w0=w0, inner_form='x')
  with pytest.raises(ValueError, match='unknown inner_form'):
    memory_forward(get_rule('titans'), x, x, x, w0=w0, inner_form='x')
  with pytest.raises(ValueError, match="use implementation='xla'"):
    memory_forward(get_rule('titans'), x, x, x, w0=w0, implementation='pallas', inner_form='scan')
