"""Titans MAC (miras_jax/models/mac.py): the mixer against a literal per-segment NumPy
implementation of Titans §4.1 (eq. 21–25) that shares no code with it; decoding across
segment boundaries; packed rows; the segment-bounded cache; config errors."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from miras_jax.models import LMConfig
from miras_jax.models.lm import memory_layer
from miras_jax.models.mac import MAC
from miras_jax.models.presets import model_config
from miras_jax.testing import assert_close
from tests.models._util import numpy_params, random_params, tiny, tokens
from tests.models.test_lm import _greedy_and_full

# ----------------------------------------------------------------------------------------------
# The literal reference: one row, float64, a Python loop over segments and over tokens.


def _silu(z):
  return z / (1 + np.exp(-z))


def _sigmoid(z):
  return 1 / (1 + np.exp(-z))


def _l2n(z, eps=1e-6):
  return z / np.sqrt(np.sum(z * z, -1, keepdims=True) + eps)


def _rms(z, scale, eps=1e-6):
  return z / np.sqrt(np.mean(z * z, -1, keepdims=True) + eps) * scale


def _rope(z, pos, theta):
  """z [N, H, D] rotated by integer positions pos [N] (halves (x1, x2) → (x1 c − x2 s, …))."""
  d = z.shape[-1]
  ang = pos[:, None] * theta ** (-np.arange(0, d, 2) / d)
  c, s = np.cos(ang)[:, None], np.sin(ang)[:, None]
  x1, x2 = z[..., : d // 2], z[..., d // 2 :]
  return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)


_C_GELU = math.sqrt(2 / math.pi)


def _gelu(z):
  return 0.5 * z * (1 + np.tanh(_C_GELU * (z + 0.044715 * z**3)))


def _gelu_grad(z):
  t = np.tanh(_C_GELU * (z + 0.044715 * z**3))
  return 0.5 * (1 + t) + 0.5 * z * (1 - t * t) * _C_GELU * (1 + 3 * 0.044715 * z * z)


def _mlp(w1, w2, s, b, x, eps=1e-6):
  """Titans' deep memory for one head: x + LN(W2 gelu(W1 x)); also returns the pieces."""
  z1 = w1 @ x
  a = _gelu(z1)
  z2 = w2 @ a
  mu, var = z2.mean(), z2.var()
  n = (z2 - mu) / np.sqrt(var + eps)
  return x + n * s + b, (z1, a, n, np.sqrt(var + eps))


def _mlp_grads(w1, w2, s, b, k, v):
  """Hand back-propagation of ½‖M(W; k) − v‖² to (W1, W2)."""
  y, (z1, a, n, sd) = _mlp(w1, w2, s, b, k)
  dn = (y - v) * s
  dz2 = (dn - dn.mean() - n * np.mean(dn * n)) / sd
  dz1 = (w2.T @ dz2) * _gelu_grad(z1)
  return np.outer(dz1, k), np.outer(dz2, a)


def literal_mac(p, x, cfg):
  """Titans MAC over one row ``x [T, E]`` with the mixer's parameters ``p`` (float64).

  For every segment S_t of C tokens: q_t = S_t W_Q; h_t = M*_{t−1}(q_t) (the memory as the
  previous segment left it); attention over [P ‖ h_t ‖ S_t] (queries: S_t; a query sees P, and
  h_j, S_j for j ≤ i; RoPE at the positions of a full segment's concatenation); then the
  memory learns from the attention outputs y token by token (Titans' momentum + decay, gradient
  at the chunk's start) and each token reads it; o = RMSNorm(y) ⊙ σ(RMSNorm(M*(y))).
  """
  m = p['memory']
  H, D, C, n_p, b_chunk = (
    cfg.n_heads,
    cfg.head_dim,
    cfg.window,
    cfg.persistent_tokens,
    cfg.chunk_size,
  )
  theta = cfg.rope_theta

  def readout(src, y):  # per-head RMSNorm, SiLU output gate from src, output projection
    g = _silu(np.einsum('le,ehd->lhd', src, m['g_proj']['kernel']))
    return np.einsum('lhd,hde->le', _rms(y, m['out_norm']['scale']) * g, m['o_proj']['kernel'])

  def gate(name, y):
    z = y @ m[f'gate_down_{name}']['kernel'] @ m[f'gate_up_{name}']['kernel']
    return z + m[f'gate_bias_{name}']

  w = [m['w0_0'].copy(), m['w0_1'].copy()]  # [H, 4D, D], [H, D, 4D]
  wg = [a.copy() for a in w]
  mom = [np.zeros_like(a) for a in w]
  ln_s, ln_b = m['outer_ln_scale'], m['outer_ln_bias']
  raw_hist = {n: [] for n in 'qkv'}  # raw projections of every y so far (for the short conv)
  n_seen, out = 0, []
  for start in range(0, x.shape[0], C):
    s = x[start : start + C]
    L = s.shape[0]
    q_mem = _l2n(_silu(np.einsum('le,ehd->lhd', s, m['q_proj']['kernel'])))
    h = np.stack(
      [
        [_mlp(w[0][hh], w[1][hh], ln_s[hh], ln_b[hh], q_mem[j, hh])[0] for hh in range(H)]
        for j in range(L)
      ]
    )
    h_tok = readout(s, h)

    ctx = np.concatenate([p['persistent'], h_tok, s]) if n_p else np.concatenate([h_tok, s])
    pos = np.concatenate([np.arange(n_p), n_p + np.arange(L), n_p + C + np.arange(L)])
    kk = _rope(np.einsum('ne,ehd->nhd', ctx, p['k']['kernel']), pos, theta)
    vv = np.einsum('ne,ehd->nhd', ctx, p['v']['kernel'])
    qq = _rope(np.einsum('le,ehd->lhd', s, p['q']['kernel']), n_p + C + np.arange(L), theta)
    att = np.zeros((L, H, D))
    for i in range(L):
      seen = (
        list(range(n_p)) + [n_p + j for j in range(i + 1)] + [n_p + L + j for j in range(i + 1)]
      )
      for hh in range(H):
        sc = kk[seen, hh] @ qq[i, hh] / math.sqrt(D)
        pr = np.exp(sc - sc.max())
        att[i, hh] = (pr / pr.sum()) @ vv[seen, hh]
    y = np.einsum('lhd,hde->le', att, p['o']['kernel'])

    eta = cfg.eta_max * _sigmoid(gate('eta', y))
    alpha, mu = _sigmoid(gate('alpha', y)), _sigmoid(gate('mu', y))
    reads = np.zeros((L, H, D))
    for i in range(L):
      for n in 'qkv':
        raw_hist[n].append(y[i] @ m[f'{n}_proj']['kernel'].reshape(y.shape[1], H * D))
      conv = {}
      for n in 'qkv':
        ker = m[f'conv_{n}']['kernel']  # [K, H·D], ker[K−1] on the current token
        taps = raw_hist[n][-ker.shape[0] :]
        z = sum(ker[ker.shape[0] - len(taps) + j] * t for j, t in enumerate(taps))
        conv[n] = _silu(z).reshape(H, D)
      qm, km, vm = _l2n(conv['q']), _l2n(conv['k']), conv['v']
      for hh in range(H):
        g1, g2 = _mlp_grads(wg[0][hh], wg[1][hh], ln_s[hh], ln_b[hh], km[hh], vm[hh])
        for l, g in enumerate((g1, g2)):
          mom[l][hh] = mu[i, hh] * mom[l][hh] - eta[i, hh] * g
          w[l][hh] = alpha[i, hh] * w[l][hh] + mom[l][hh]
        reads[i, hh] = _mlp(w[0][hh], w[1][hh], ln_s[hh], ln_b[hh], qm[hh])[0]
      n_seen += 1
      if n_seen % b_chunk == 0:  # a chunk ends: later gradients are taken here
        wg = [a.copy() for a in w]
    m_tok = readout(y, reads)
    out.append(_rms(y, p['norm_attn']['scale']) * _sigmoid(_rms(m_tok, p['norm_mem']['scale'])))
  return np.concatenate(out)


def _mac_layer(**overrides):
  cfg, _ = tiny('titans_mac', **overrides)
  cfg = LMConfig.from_config(cfg)
  return cfg, MAC(cfg, memory_layer(cfg, parent=None))


def test_mac_matches_the_literal_segment_loop():
  """Two and a half segments (C = 16, chunk 8), persistent tokens, two rows."""
  cfg, layer = _mac_layer()
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, 40, cfg.d_model)), jnp.float32)
  params = numpy_params(layer, x[:, :8], std=0.2)
  got = np.asarray(jax.jit(layer.apply)(params, x))
  p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params['params'])
  for row in range(2):
    want = literal_mac(p64, np.asarray(x[row], np.float64), cfg)
    assert_close(got[row], want, 1e-4, atol=1e-5)
  # the memory matters: another initial memory changes the output from the second segment on
  p2 = jax.tree.map(lambda a: a, params)
  p2['params']['memory']['w0_1'] = params['params']['memory']['w0_1'] * 2
  other = np.asarray(jax.jit(layer.apply)(p2, x))
  assert np.abs(other - got).max() > 1e-3


# ----------------------------------------------------------------------------------------------
# The model: decoding, packing, the cache, config.


def test_decoding_crosses_segments_and_equals_the_full_pass():
  """Prefill 19 tokens (past the first segment end at 16), then 16 one-token steps (past 32):
  logits equal one full pass; the cache holds one segment (C slots), whatever max_len."""
  cfg, model = tiny('titans_mac')
  prompt = tokens((2, 19), seed=2)
  params = random_params(model, prompt, std=0.1)
  seq, dec, full, index = jax.jit(_greedy_and_full, static_argnums=(0, 3, 4))(
    model, params, prompt, 16, 128
  )
  assert int(index) == 35
  assert_close(dec[:, : full.shape[1]], full, 2e-5, atol=2e-5)
  cache = model.init_cache(2, 4096)
  kv = cache['layers'][0]['k_s']
  assert kv.shape == (cfg.n_layers, 2, cfg.window, cfg.n_heads, cfg.head_dim)


def test_packed_rows_follow_documents():
  """Documents of 16, 16, 3 and 5 tokens in one row (C = 16). The first three start on the
  segment grid and equal their solo runs; the last starts inside a segment (a short first
  segment, module docstring) and never sees the others: its outputs ignore their tokens.
  The memory's health proxy is sown as for the other memory layers."""
  cfg, model = tiny('titans_mac')
  toks = tokens((1, 40), seed=5)
  seg = jnp.asarray([[1] * 16 + [2] * 16 + [3] * 3 + [4] * 5], jnp.int32)
  params = random_params(model, toks)
  other = toks.at[:, :35].set((toks[:, :35] + 7) % cfg.vocab_size)

  def run(params):
    rows, ids = jnp.concatenate([toks, other]), jnp.concatenate([seg, seg])
    packed, inter = model.apply(params, rows, ids, mutable=['intermediates'])
    alone = model.apply(params, jnp.concatenate([toks[:, :16], toks[:, 16:32]]))
    return packed, alone, inter

  (packed, packed_other), alone, inter = jax.jit(run)(params)
  # the memory's inner-loss proxy (layers/miras.py) is sown once per scanned layer
  losses = jax.tree.leaves(inter)
  assert len(losses) == 2 and all(x.shape == (cfg.n_layers,) for x in losses)
  assert_close(packed[:32], jnp.concatenate([alone[0], alone[1]]), 2e-5, atol=2e-5)
  assert_close(packed_other[35:], packed[35:], 1e-6, atol=1e-6)
  assert float(jnp.max(jnp.abs(packed[:35] - packed_other[:35]))) > 1e-3


def test_config_errors_and_preset():
  with pytest.raises(ValueError, match='multiple of chunk_size'):
    LMConfig(pattern=('mac',), window=12, chunk_size=8)
  with pytest.raises(ValueError, match='mac needs attention_backend'):
    LMConfig(pattern=('mac',), window=16, chunk_size=8, attention_backend='pallas_tpu_splash')
  with pytest.raises(ValueError, match='memory_grad_horizon'):
    LMConfig(pattern=('mac',), window=16, chunk_size=8, memory_grad_horizon=8)
  c = model_config('titans_mac', '170m')
  assert (c.pattern, c.rule, c.window, c.persistent_tokens) == (['mac'], 'titans', 2048, 16)
  # any rule can be the MAC memory
  cfg, model = tiny('titans_mac', rule='gated_deltanet')
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), tokens((1, 8)))['params']
  assert 'w0_0' in nn.unbox(shapes)['blocks']['mixers_0']['memory']
