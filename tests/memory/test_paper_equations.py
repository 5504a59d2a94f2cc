"""Both implementations against the papers' equations written out independently
(tests/memory/paper_recurrences.py, which shares no code with miras_jax.memory): outputs and
final state, float64, chunk sizes > 1 where the rule's chunk semantics matter."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import paper_recurrences as pr
import pytest

from miras_jax.memory import (
  Huber,
  LinearMemory,
  Retention,
  chunked,
  get_rule,
  reference,
  with_options,
)
from miras_jax.memory.testing import assert_close

T, D = 21, 6  # T not a multiple of b: the last chunk is partial


def _inputs(seed, rule, channel_delta=False, delta_range=(0.5, 5.0)):
  rng = np.random.default_rng(seed)
  n = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  x = dict(
    q=n(rng.standard_normal((T, D))),
    k=n(rng.standard_normal((T, D))),
    v=0.5 * rng.standard_normal((T, D)),
    alpha=rng.uniform(0.85, 1.0, T),
    eta=rng.uniform(0.05, 0.6, T),
    mu=rng.uniform(0.3, 0.9, T),
    delta=rng.uniform(*delta_range, (T, D) if channel_delta else (T,)),
  )
  shapes = rule.arch.shapes(D, D)
  w0 = [rng.standard_normal(s) / np.sqrt(s[1]) for s in shapes]
  if rule.retention.map in ('softmax', 'softmax_lag'):
    w0 = [np.exp(2 * w) / np.exp(2 * w).sum(-1, keepdims=True) for w in w0]
  ln = dict(ln_scale=1 + 0.1 * rng.standard_normal(D), ln_bias=0.1 * rng.standard_normal(D))
  return x, w0, ln


def _project(impl, rule, x, w0, ln, b):
  """The project's implementation on one (batch, head)."""
  u = rule.uses
  g = {'eta': x['eta'][None, None]}
  if u['log_alpha']:
    g['log_alpha'] = np.log(x['alpha'])[None, None]
  if u['log_mu']:
    g['log_mu'] = np.log(x['mu'])[None, None]
  if u['delta']:
    g['delta'] = x['delta'][None, None]
  outer = {k: v[None] for k, v in ln.items()} if ln is not None else None
  fn = reference if impl == 'reference' else chunked
  y, st = fn(
    rule,
    *(x[n][None, None] for n in ('q', 'k', 'v')),
    g,
    w0=tuple(w[None] for w in w0),
    outer=outer,
    chunk_size=b,
  )
  return np.asarray(y[0, 0]), jax.tree.map(lambda a: np.asarray(a[0, 0]), st)


def _check(rule, b, x, w0, ln, run, final_of_state, tol=1e-9):
  with jax.enable_x64(True):
    x = {k: jnp.asarray(v, jnp.float64) for k, v in x.items()}
    w0 = [jnp.asarray(w, jnp.float64) for w in w0]
    ln = {k: jnp.asarray(v, jnp.float64) for k, v in ln.items()}
    y_ref, w_ref = run(x, w0, ln)
    for impl in ('reference', 'xla'):
      y, st = _project(impl, rule, x, w0, ln, b)
      assert_close(y, y_ref, tol, f'{rule.name} {impl} outputs')
      for l, (a, r) in enumerate(zip(final_of_state(st), w_ref)):
        assert_close(a, r, tol, f'{rule.name} {impl} final memory [{l}]')


def _mlp(bias=False):
  return lambda ln: lambda ws, x: pr.mlp_memory(ws, x, ln, bias)


YAAD = {
  'mask': pr.u_yaad_eq26,
  'clip': pr.u_yaad_clip,
  'norm': pr.u_yaad_norm,
}


@pytest.mark.parametrize(
  'mode,channel',
  [
    ('mask', False),
    ('mask', True),
    pytest.param('clip', True, marks=pytest.mark.slow),
    pytest.param('norm', False, marks=pytest.mark.slow),
  ],
)
def test_yaad(mode, channel):
  """Miras Eq. 26 (default) and the Eq. 14 / 15 options, b = 8, the δ_t straddling ‖e‖."""
  rule = get_rule('yaad', bias=Huber(mode=mode))
  x, w0, ln = _inputs(1, rule, channel_delta=channel, delta_range=(1.5, 6.0) if channel else (1, 4))
  branches = []

  def u(e, d):
    out = YAAD[mode](e, d)
    branches.append(bool(np.allclose(out, e)))
    return out

  run = lambda x, w0, ln: pr.run_gd(_mlp()(ln), w0, x, 8, u)
  _check(rule, 8, x, w0, ln, run, lambda st: st['A'])
  assert any(branches) and not all(branches), f'{mode}: one branch only ({branches})'


def test_yaad_mask_is_the_default():
  assert get_rule('yaad').bias.mode == 'mask'


@pytest.mark.parametrize(
  'target,step',
  [
    ('zero', 'none'),
    ('initial', 'none'),
    ('zero', 'implicit_chunk'),
    pytest.param('zero', 'implicit', marks=pytest.mark.slow),
  ],
)
def test_titans_momentum_chunked(target, step):
  """Titans Eq. 10–13 with μ > 0 at b = 8; forgetting towards zero (the paper) or W_0; the
  papers' step or the implicit one bounded by the curvature (step_scale, rules.step_factors)."""
  rule = with_options(get_rule('titans'), retention_target=target, step_scale=step)
  x, w0, ln = _inputs(2, rule)
  to_init = target == 'initial'
  implicit = {'none': 0.0, 'implicit': 1.0, 'implicit_chunk': 8.0}[step]
  run = lambda x, w0, ln: pr.run_gd(_mlp()(ln), w0, x, 8, pr.u_l2, True, to_init, implicit)
  _check(rule, 8, x, w0, ln, run, lambda st: st['A'])
  if implicit:  # the bound acts at these inputs: the first token's step is well below η_0
    with jax.enable_x64(True):
      mem = _mlp()({k: jnp.asarray(v, jnp.float64) for k, v in ln.items()})
      ws = [jnp.asarray(w, jnp.float64) for w in w0]
      e = mem(ws, x['k'][0]) - x['v'][0]
      lam = sum(float((g * g).sum()) for g in pr.weight_grad(mem, ws, x['k'][0], e)) / float(e @ e)
      assert 1.0 / (1.0 + implicit * x['eta'][0] / (1.0 - x['mu'][0]) * lam) < 0.5


@pytest.mark.parametrize('target', ['zero', 'initial'])
def test_moneta_mlp_chunked(target):
  """Moneta (p, q) = (3, 4) with the MLP memory at b = 8; forgetting towards zero or A_0."""
  rule = with_options(get_rule('moneta'), retention_target=target)
  x, w0, ln = _inputs(3, rule)
  to_init = target == 'initial'
  run = lambda x, w0, ln: pr.run_moneta(_mlp()(ln), w0, x, 8, to_initial=to_init)
  _check(rule, 8, x, w0, ln, run, lambda st: st['A'])


@pytest.mark.parametrize('name', ['ttt_mlp', pytest.param('ttt_linear', marks=pytest.mark.slow)])
def test_ttt_with_bias(name):
  """TTT: f(x) = x + LN(MLP(x)) with test-time-learned biases, mini-batch GD at b = 8."""
  rule = get_rule(name)
  x, w0, ln = _inputs(4, rule)
  x['alpha'] = np.ones(T)  # TTT has no retention
  run = lambda x, w0, ln: pr.run_gd(_mlp(bias=True)(ln), w0, x, 8, pr.u_l2)
  _check(rule, 8, x, w0, ln, run, lambda st: st['A'])


@pytest.mark.parametrize(
  'form,b',
  [
    pytest.param('logits', 1, marks=pytest.mark.slow),
    ('logits', 8),
    pytest.param('lag', 1, marks=pytest.mark.slow),
    ('lag', 8),
  ],
)
def test_memora(form, b):
  """Memora's KL rule (b = 1: Eq. 27–28) and its chunked forms; the lag scheme is Eq. 30–32."""
  lag = form == 'lag'
  ret = Retention('scalar', 'softmax_lag' if lag else 'softmax')
  rule = get_rule('memora', retention=ret)
  x, w0, ln = _inputs(5, rule)
  run = lambda x, w0, ln: pr.run_memora(_mlp()(ln), w0, x, b, lag=lag)
  final = (lambda st: st['A']) if lag else (lambda st: [jax.nn.softmax(a, -1) for a in st['A']])
  _check(rule, b, x, w0, ln, run, final)


def test_memora_lag_guard_no_nan():
  """Large linear steps inside a chunk make weights negative; the chunk end's guarded log
  (retention.py log⁺) keeps them finite and back on the simplex."""
  rule = get_rule('memora', arch=LinearMemory(), retention=Retention('scalar', 'softmax_lag'))
  x, w0, _ = _inputs(6, rule)
  x['eta'] = np.full(T, 5.0)
  with jax.enable_x64(True):
    for impl in ('reference', 'xla'):
      fn = functools.partial(_project, impl, rule, x, w0, None, 8)
      y, st = fn()
      assert np.all(np.isfinite(y))
      (w,) = st['Wg']
      assert np.all(w >= 0) and np.allclose(w.sum(-1), 1.0)
