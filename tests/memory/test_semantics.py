"""Hand-checked cases that pin each rule to its paper's equation, plus packing, decoding,
long-sequence stability and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.memory import (
  GD,
  L2,
  MemoryRule,
  MLPMemory,
  Retention,
  chunked,
  get_rule,
  list_rules,
  memory_forward,
  memory_step,
  reference,
)
from miras_jax.memory.testing import assert_close, assert_tree_close, random_inputs

B, H, T, D = 1, 2, 29, 8


def _qkv(key, T=T, D=D):
  ks = jax.random.split(key, 3)
  n = lambda x: x / jnp.linalg.norm(x, axis=-1, keepdims=True)
  return (
    n(jax.random.normal(ks[0], (B, H, T, D))),
    n(jax.random.normal(ks[1], (B, H, T, D))),
    jax.random.normal(ks[2], (B, H, T, D)),
  )


def _zero_w0(rule, D=D):
  return tuple(jnp.zeros((H,) + s) for s in rule.arch.shapes(D, D))


@pytest.mark.parametrize('b', [1, 16])
def test_linear_attention_is_causal_unnormalised_attention(b):
  rule = get_rule('linear_attention')
  q, k, v = _qkv(jax.random.PRNGKey(0))
  y, _ = chunked(rule, q, k, v, w0=_zero_w0(rule), chunk_size=b)
  scores = jnp.einsum('bhtd,bhsd->bhts', q, k) * jnp.tril(jnp.ones((T, T)))
  assert_close(y, jnp.einsum('bhts,bhsd->bhtd', scores, v), 1e-5)


def test_retnet_is_decayed_attention():
  rule = get_rule('retnet')
  q, k, v = _qkv(jax.random.PRNGKey(1))
  gamma = jnp.array([0.9, 0.5])
  la = jnp.broadcast_to(jnp.log(gamma)[None, :, None], (B, H, T))
  y, _ = chunked(rule, q, k, v, {'log_alpha': la}, w0=_zero_w0(rule), chunk_size=16)
  t = jnp.arange(T)
  dec = gamma[:, None, None] ** jnp.maximum(t[:, None] - t[None, :], 0) * (t[:, None] >= t[None, :])
  scores = jnp.einsum('bhtd,bhsd->bhts', q, k) * dec[None]
  assert_close(y, jnp.einsum('bhts,bhsd->bhtd', scores, v), 1e-5)


def test_mamba2_matches_explicit_recurrence():
  rule = get_rule('mamba2')
  q, k, v = _qkv(jax.random.PRNGKey(2))
  kk = jax.random.split(jax.random.PRNGKey(3))
  la = jax.nn.log_sigmoid(jax.random.normal(kk[0], (B, H, T)))
  eta = jax.nn.softplus(jax.random.normal(kk[1], (B, H, T)))
  y, _ = chunked(rule, q, k, v, {'log_alpha': la, 'eta': eta}, w0=_zero_w0(rule), chunk_size=16)
  W = np.zeros((B, H, D, D))
  ys = []
  for t in range(T):  # W_t = α_t W_{t−1} + η_t v_t k_tᵀ ; y_t = W_t q_t
    W = np.exp(la[..., t])[..., None, None] * W + eta[..., t, None, None] * np.einsum(
      'bhi,bhj->bhij', v[:, :, t], k[:, :, t]
    )
    ys.append(np.einsum('bhij,bhj->bhi', W, q[:, :, t]))
  assert_close(y, np.stack(ys, 2), 1e-5)


def test_gla_matches_explicit_recurrence():
  rule = get_rule('gla')
  q, k, v = _qkv(jax.random.PRNGKey(4))
  la = jax.nn.log_sigmoid(jax.random.normal(jax.random.PRNGKey(5), (B, H, T, D)) + 1)
  y, _ = chunked(rule, q, k, v, {'log_alpha': la}, w0=_zero_w0(rule), chunk_size=8)
  W = np.zeros((B, H, D, D))
  ys = []
  for t in range(T):  # W_t = W_{t−1} Diag(α_t) + v_t k_tᵀ
    W = W * np.exp(la[:, :, t])[:, :, None, :] + np.einsum('bhi,bhj->bhij', v[:, :, t], k[:, :, t])
    ys.append(np.einsum('bhij,bhj->bhi', W, q[:, :, t]))
  assert_close(y, np.stack(ys, 2), 1e-5)


@pytest.mark.parametrize('name', ['deltanet', 'gated_deltanet'])
def test_delta_rule_beta_one_retrieves_last_value(name):
  """β = 1 on orthonormal keys: writing k1→v1, k2→v2, k1→v3 leaves M k1 = v3, M k2 = v2."""
  rule = get_rule(name)
  e = jnp.eye(D)
  k = jnp.stack([e[0], e[1], e[0]])[None, None].repeat(H, 1)
  v = jax.random.normal(jax.random.PRNGKey(6), (1, H, 3, D))
  q = jnp.stack([e[0], e[1], e[0]])[None, None].repeat(H, 1)
  gates = {'eta': jnp.ones((1, H, 3))}
  if rule.uses['log_alpha']:
    gates['log_alpha'] = jnp.zeros((1, H, 3))
  for impl in ('reference', 'xla'):
    _, st = memory_forward(
      rule, q, k, v, gates, w0=_zero_w0(rule), chunk_size=16, implementation=impl
    )
    W = st['A'][0]
    assert_close(jnp.einsum('bhij,j->bhi', W, e[0]), v[:, :, 2], 1e-5)
    assert_close(jnp.einsum('bhij,j->bhi', W, e[1]), v[:, :, 1], 1e-5)


def test_gated_deltanet_equation():
  """S_t = α_t S_{t−1}(I − β_t k kᵀ) + β_t v kᵀ, written out."""
  rule = get_rule('gated_deltanet')
  q, k, v = _qkv(jax.random.PRNGKey(7))
  kk = jax.random.split(jax.random.PRNGKey(8))
  la = jax.nn.log_sigmoid(jax.random.normal(kk[0], (B, H, T)) + 1)
  beta = jax.nn.sigmoid(jax.random.normal(kk[1], (B, H, T)))
  y, _ = chunked(rule, q, k, v, {'log_alpha': la, 'eta': beta}, w0=_zero_w0(rule), chunk_size=8)
  S = np.zeros((B, H, D, D))
  ys = []
  I = np.eye(D)
  for t in range(T):
    kt, vt, bt = np.asarray(k[:, :, t]), np.asarray(v[:, :, t]), np.asarray(beta[:, :, t])
    P = I - bt[..., None, None] * np.einsum('bhi,bhj->bhij', kt, kt)
    S = np.exp(la[..., t])[..., None, None] * S @ P + bt[..., None, None] * np.einsum(
      'bhi,bhj->bhij', vt, kt
    )
    ys.append(np.einsum('bhij,bhj->bhi', S, q[:, :, t]))
  assert_close(y, np.stack(ys, 2), 1e-5)


def test_longhorn_step_size():
  """Longhorn: ε = β/(1 + β kᵀk); with unit keys a DeltaNet with β' = β/(1+β)."""
  q, k, v = _qkv(jax.random.PRNGKey(9))
  beta = jax.nn.softplus(jax.random.normal(jax.random.PRNGKey(10), (B, H, T)))
  lh = get_rule('longhorn')
  dn = get_rule('deltanet')
  y1, _ = chunked(lh, q, k, v, {'eta': beta}, w0=_zero_w0(lh), chunk_size=8)
  y2, _ = chunked(dn, q, k, v, {'eta': beta / (1 + beta)}, w0=_zero_w0(dn), chunk_size=8)
  assert_close(y1, y2, 1e-5)


def test_titans_without_momentum_is_minibatch_gd():
  """μ = 0: S_t = −θ g_t and W_t = α W_{t−1} + S_t — plain GD with ℓ2 decay (the
  Gated-DeltaNet-style mini-batch rule on the deep memory)."""
  titans = get_rule('titans')
  gd = MemoryRule('gd_l2_decay', MLPMemory(depth=2, expansion=4), L2(), Retention('scalar'), GD())
  inp = random_inputs(titans, jax.random.PRNGKey(11), B=1, H=2, T=40, dk=8)
  gates = dict(inp['gates'])
  gates['log_mu'] = jnp.full_like(gates['log_mu'], -1e4)  # μ = e^−10000 = 0
  kw = dict(w0=inp['w0'], outer=inp['outer'], chunk_size=16)
  y1, s1 = chunked(titans, inp['q'], inp['k'], inp['v'], gates, **kw)
  g2 = {n: gates[n] for n in ('eta', 'log_alpha')}
  y2, s2 = chunked(gd, inp['q'], inp['k'], inp['v'], g2, **kw)
  assert_close(y1, y2, 1e-5)
  assert_tree_close(s1['A'], s2['A'], 1e-5)


def test_ttt_linear_equation():
  """TTT-Linear, b = 1: (W, b)_t = (W, b)_{t−1} − η ∇ ½‖k + LN(W k + b) − v‖², y = q + LN(W_t q + b_t)
  (the bias is the last column of the memory's matrix)."""
  rule = get_rule('ttt_linear')
  inp = random_inputs(rule, jax.random.PRNGKey(12), B=1, H=1, T=9, dk=6)
  y, _ = reference(
    rule, inp['q'], inp['k'], inp['v'], inp['gates'], w0=inp['w0'], outer=inp['outer'], chunk_size=1
  )
  sc, bi = inp['outer']['ln_scale'][0], inp['outer']['ln_bias'][0]

  def f(W, x):
    z = W[:, :-1] @ x + W[:, -1]
    z = (z - z.mean()) / jnp.sqrt(z.var() + 1e-6) * sc + bi
    return x + z

  W = inp['w0'][0][0]
  ys = []
  for t in range(9):
    kt, vt, qt = (inp[n][0, 0, t] for n in ('k', 'v', 'q'))
    et = inp['gates']['eta'][0, 0, t]
    g = jax.grad(lambda W: 0.5 * jnp.sum((f(W, kt) - vt) ** 2))(W)
    W = W - et * g
    ys.append(f(W, qt))
  assert_close(y[0, 0], jnp.stack(ys), 1e-5)


def test_moneta_lq_map_b1():
  """Moneta, b = 1, linear memory: A_t = α A − η ∇ℓ3, W_t = A_t/‖A_t‖_4², y = W_t q."""
  from miras_jax.memory import LinearMemory

  rule = get_rule('moneta', arch=LinearMemory())
  inp = random_inputs(rule, jax.random.PRNGKey(13), B=1, H=1, T=7, dk=5)
  y, _ = reference(rule, inp['q'], inp['k'], inp['v'], inp['gates'], w0=inp['w0'], chunk_size=1)
  W = inp['w0'][0][0]
  A = W / jnp.sum(W**4) ** 0.5  # A_0 = W_0 ‖W_0‖_4^{-2}, so that φ(A_0) = W_0
  ys = []
  for t in range(7):
    kt, vt, qt = (inp[n][0, 0, t] for n in ('k', 'v', 'q'))
    e = W @ kt - vt
    u = jnp.tanh(10.0 * e) * (e * e + 1e-6)  # smoothed sign(e)|e|^{p−1}, p = 3
    A = jnp.exp(inp['gates']['log_alpha'][0, 0, t]) * A - inp['gates']['eta'][0, 0, t] * jnp.outer(
      u, kt
    )
    W = A / jnp.sum(jnp.abs(A) ** 4) ** 0.5
    ys.append(W @ qt)
  assert_close(y[0, 0], jnp.stack(ys), 1e-5)


def test_memora_stays_on_simplex():
  rule = get_rule('memora')
  inp = random_inputs(rule, jax.random.PRNGKey(14), B=1, H=2, T=64, dk=8)
  _, st = chunked(
    rule,
    inp['q'],
    inp['k'],
    inp['v'],
    inp['gates'],
    w0=inp['w0'],
    outer=inp['outer'],
    chunk_size=16,
  )
  for w in st['Wg']:  # at a boundary the memory is c · softmax(A) row-wise
    assert np.all(np.asarray(w) > 0)
    np.testing.assert_allclose(np.asarray(w).sum(-1), rule.retention.scale_c, rtol=1e-5)


# ----------------------------------------------------------------------------------
# Packed documents.

# One rule per state layout and chunk kernel in the default run (CI budget): general linear
# (Mamba2), channel decay (GLA), WY (Gated DeltaNet), a deep memory without retention (TTT-MLP),
# momentum (Titans), the ℓq read scale (Moneta) and the softmax read (Memora). The others share
# a layout and kernel with one of these (other coefficients or bias, each checked against the
# reference by test_equivalence.py) and run behind ``slow`` (``python -m pytest -m slow``).
LAYOUTS = ('gated_deltanet', 'gla', 'mamba2', 'memora', 'moneta', 'titans', 'ttt_mlp')


def _per_layout(names):
  """Parametrize values: ``names`` with those outside LAYOUTS marked ``slow``."""
  return [n if n in LAYOUTS else pytest.param(n, marks=pytest.mark.slow) for n in names]


SEQUENTIAL = [
  n for n in list_rules() if get_rule(n).form == 'wy' or not get_rule(n).bias.depends_on_memory
]


def _alone_vs_packed(name, b, lengths, T=None):
  rule = get_rule(name)
  T = sum(lengths)
  inp = random_inputs(rule, jax.random.PRNGKey(15), B=1, H=2, T=T, dk=8)
  seg = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])[None]
  kw = dict(w0=inp['w0'], outer=inp['outer'], chunk_size=b)
  y, _ = chunked(rule, inp['q'], inp['k'], inp['v'], inp['gates'], segment_ids=seg, **kw)
  start = 0
  for n in lengths:
    sl = lambda x: x[:, :, start : start + n]
    g = {kk: sl(x) for kk, x in inp['gates'].items()}
    ya, _ = chunked(rule, sl(inp['q']), sl(inp['k']), sl(inp['v']), g, **kw)
    assert_close(y[:, :, start : start + n], ya, 1e-4, f'{name} document at {start}')
    start += n


@pytest.mark.parametrize('name', _per_layout(SEQUENTIAL))
def test_packed_equals_alone_any_boundaries(name):
  """Rules whose semantics do not depend on b: any document boundaries."""
  _alone_vs_packed(name, 16, [5, 23, 1, 19])


@pytest.mark.parametrize('name', _per_layout(sorted(set(list_rules()) - set(SEQUENTIAL))))
def test_packed_equals_alone_chunk_aligned(name):
  """Mini-batch rules keep the row's chunk grid: documents that start on it equal their
  solo runs exactly; b = 1 makes every boundary aligned."""
  _alone_vs_packed(name, 8, [16, 8, 13])
  _alone_vs_packed(name, 1, [5, 11, 3])


@pytest.mark.parametrize('name', _per_layout(list_rules()))
def test_no_leak_across_documents(name):
  """Whatever the grid: changing a document never changes the outputs of the next one."""
  rule = get_rule(name)
  inp = random_inputs(rule, jax.random.PRNGKey(16), B=1, H=2, T=45, dk=8)
  seg = (np.arange(45) >= 21).astype(np.int32)[None]  # boundary mid-chunk
  kw = dict(w0=inp['w0'], outer=inp['outer'], chunk_size=16, segment_ids=seg)
  y1, s1 = chunked(rule, inp['q'], inp['k'], inp['v'], inp['gates'], **kw)
  v2 = inp['v'].at[:, :, :21].add(3.0)
  k2 = inp['k'].at[:, :, :21].set(jnp.roll(inp['k'][:, :, :21], 1, axis=-1))
  y2, s2 = chunked(rule, inp['q'], k2, v2, inp['gates'], **kw)
  assert not np.allclose(y1[:, :, :21], y2[:, :, :21])
  np.testing.assert_allclose(np.asarray(y1[:, :, 21:]), np.asarray(y2[:, :, 21:]), atol=1e-6)
  assert_tree_close(
    {k: v for k, v in s1.items() if k != 'pos'}, {k: v for k, v in s2.items() if k != 'pos'}, 1e-6
  )


# ----------------------------------------------------------------------------------
# Prefill + decode.


@pytest.mark.parametrize('name', _per_layout(list_rules()))
def test_prefill_then_decode_equals_full_pass(name):
  rule = get_rule(name)
  T1, T2, b = 21, 6, 8
  inp = random_inputs(rule, jax.random.PRNGKey(17), B=2, H=2, T=T1 + T2, dk=8)
  kw = dict(w0=inp['w0'], outer=inp['outer'])
  y_full, s_full = chunked(rule, inp['q'], inp['k'], inp['v'], inp['gates'], chunk_size=b, **kw)
  sl = lambda x, a, z: x[:, :, a:z]
  g1 = {n: sl(x, 0, T1) for n, x in inp['gates'].items()}
  _, st = chunked(
    rule, sl(inp['q'], 0, T1), sl(inp['k'], 0, T1), sl(inp['v'], 0, T1), g1, chunk_size=b, **kw
  )
  step = jax.jit(lambda q, k, v, g, st: memory_step(rule, q, k, v, g, state=st, chunk_size=b, **kw))
  for t in range(T1, T1 + T2):
    g = {n: x[:, :, t] for n, x in inp['gates'].items()}
    y, st = step(inp['q'][:, :, t], inp['k'][:, :, t], inp['v'][:, :, t], g, st)
    assert_close(y, y_full[:, :, t], 1e-4, f'token {t}')
  # A second chunked call continuing from a mid-chunk state equals the full pass too.
  _, st1 = chunked(
    rule, sl(inp['q'], 0, T1), sl(inp['k'], 0, T1), sl(inp['v'], 0, T1), g1, chunk_size=b, **kw
  )
  g2 = {n: sl(x, T1, T1 + T2) for n, x in inp['gates'].items()}
  y2, st2 = chunked(
    rule,
    sl(inp['q'], T1, None),
    sl(inp['k'], T1, None),
    sl(inp['v'], T1, None),
    g2,
    state=st1,
    chunk_size=b,
    **kw,
  )
  assert_close(y2, y_full[:, :, T1:], 1e-4)
  assert_tree_close(
    {k: v for k, v in st2.items() if k != 'pos'},
    {k: v for k, v in s_full.items() if k != 'pos'},
    1e-4,
  )


# ----------------------------------------------------------------------------------
# Long sequences.


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize('name', ['moneta', 'yaad', 'memora', 'titans'])
def test_finite_at_16k_tokens(name, dtype):
  """Outputs and final state stay finite over 16K tokens (fp32 and bf16 inputs)."""
  rule = get_rule(name)
  inp = random_inputs(rule, jax.random.PRNGKey(18), B=1, H=1, T=16384, dk=8, dtype=dtype)
  y, st = jax.jit(
    lambda q, k, v, g: chunked(
      rule, q, k, v, g, w0=inp['w0'], outer=inp['outer'], chunk_size=64, remat_group=8
    )
  )(inp['q'], inp['k'], inp['v'], inp['gates'])
  assert y.dtype == dtype
  for x in jax.tree.leaves((y, st)):
    assert np.all(np.isfinite(np.asarray(x, np.float32))), f'{name} {dtype}: non-finite'


@pytest.mark.parametrize('name', ['moneta', 'yaad', 'memora', 'titans'])
def test_gradients_finite_at_2k_tokens(name):
  """Back-propagation through 2K tokens of memory updates stays finite. (Longer spans
  can overflow: with a decaying retention, the LayerNorm of the deep memory makes the
  last layer scale-invariant, so forgetting acts as a growing inner learning rate and
  the backward pass through time grows exponentially — measured in both the reference
  and the chunked path; see the issue note. Without the LayerNorm it does not.)"""
  rule = get_rule(name)
  inp = random_inputs(rule, jax.random.PRNGKey(18), B=1, H=1, T=2048, dk=8)

  def f(q, k, v, gates):
    y, _ = chunked(rule, q, k, v, gates, w0=inp['w0'], outer=inp['outer'], chunk_size=64)
    return jnp.sum(y**2)

  g = jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(inp['q'], inp['k'], inp['v'], inp['gates'])
  for x in jax.tree.leaves(g):
    assert np.all(np.isfinite(np.asarray(x))), f'{name}: non-finite gradient'


# ----------------------------------------------------------------------------------
# Errors.


def test_errors_are_clear():
  rule = get_rule('titans')
  inp = random_inputs(rule, jax.random.PRNGKey(0), T=5, dk=8)
  with pytest.raises(ValueError, match="unknown memory rule 'moneta2'"):
    get_rule('moneta2')
  with pytest.raises(ValueError, match='unknown gate'):
    chunked(
      rule, inp['q'], inp['k'], inp['v'], dict(inp['gates'], beta=inp['gates']['eta']), w0=inp['w0']
    )
  with pytest.raises(ValueError, match="gate 'eta' has shape"):
    chunked(
      rule,
      inp['q'],
      inp['k'],
      inp['v'],
      dict(inp['gates'], eta=inp['gates']['eta'][..., :3]),
      w0=inp['w0'],
    )
  with pytest.raises(ValueError, match='initial memory w0 has shapes'):
    chunked(rule, inp['q'], inp['k'], inp['v'], inp['gates'], w0=inp['w0'][:1])
  with pytest.raises(ValueError, match='segment_ids has shape'):
    chunked(
      rule,
      inp['q'],
      inp['k'],
      inp['v'],
      inp['gates'],
      w0=inp['w0'],
      segment_ids=np.zeros((2, 4), np.int32),
    )
  with pytest.raises(ValueError, match='unknown memory implementation'):
    memory_forward(
      rule, inp['q'], inp['k'], inp['v'], inp['gates'], w0=inp['w0'], implementation='triton'
    )
  lag = get_rule('memora', retention=Retention('scalar', 'softmax_lag'))  # no kernel (issue 13)
  with pytest.raises(ValueError, match='rule memora: no Pallas kernel'):
    memory_forward(
      lag, inp['q'], inp['k'], inp['v'], inp['gates'], w0=inp['w0'], implementation='pallas'
    )
  with pytest.raises(ValueError, match='WY form needs'):
    get_rule('titans', form='wy')
  with pytest.raises(ValueError, match='no retention decay'):
    chunked(
      get_rule('deltanet'),
      inp['q'],
      inp['k'],
      inp['v'],
      {'eta': inp['gates']['eta'], 'log_alpha': inp['gates']['eta']},
      w0=tuple(jnp.zeros((2, 8, 8)) for _ in range(1)),
    )
