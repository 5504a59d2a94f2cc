"""Attention: the XLA reference against a loop, every backend against XLA (outputs and input
gradients), packed documents, sliding windows, GQA, and KV-cache decoding against the full pass."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from miras_jax.layers.attention import Attention, init_kv_cache
from miras_jax.layers.attention_backends import causal_attention
from miras_jax.models.lm import positions_from_segments
from miras_jax.testing import assert_close

from ._util import numpy_params, out_and_grads

# Row 0 packs three documents; row 1 is one document. T = 37 is odd and not a multiple of 128,
# so the Pallas paths pad.
T = 37
SEG = np.array([[1] * 10 + [2] * 4 + [3] * 23, [0] * T], np.int32)


def _qkv(b, t, h, hkv, d, seed=0):
  rng = np.random.default_rng(seed)
  return tuple(
    rng.standard_normal(shape).astype(np.float32)
    for shape in [(b, t, h, d), (b, t, hkv, d), (b, t, hkv, d)]
  )


def _loop_reference(q, k, v, seg, window):
  """Attention written token by token in numpy float64."""
  q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
  b, t, h, d = q.shape
  g = h // k.shape[2]
  out = np.zeros_like(q)
  for bi in range(b):
    for hi in range(h):
      for i in range(t):
        js = [
          j
          for j in range(i + 1)
          if (window is None or i - j < window) and (seg is None or seg[bi, i] == seg[bi, j])
        ]
        s = np.array([q[bi, i, hi] @ k[bi, j, hi // g] for j in js]) / np.sqrt(d)
        p = np.exp(s - s.max())
        p /= p.sum()
        out[bi, i, hi] = sum(pj * v[bi, j, hi // g] for pj, j in zip(p, js))
  return out


@pytest.mark.parametrize('window,use_seg', [(None, False), (5, True)])
def test_xla_reference_matches_loop(window, use_seg):
  q, k, v = _qkv(2, 19, 4, 2, 6)
  seg = SEG[:, :19] if use_seg else None
  got = jax.jit(causal_attention, static_argnames='window_size')(
    q, k, v, segment_ids=seg, window_size=window
  )
  assert_close(got, _loop_reference(q, k, v, seg, window), 1e-5, atol=1e-6)


# (backend, B, H, Hkv, D, window, segments). The Pallas cases run in interpret mode (slow), so
# they are few and small; between them they cover GQA, MHA, windows, segments and padding.
CASES = [
  ('cudnn', 2, 4, 4, 12, None, False),
  ('cudnn', 2, 6, 2, 8, 5, True),
  ('cudnn', 2, 2, 1, 8, 1, False),  # window 1: each token sees only itself
  ('pallas_tpu_flash', 1, 2, 2, 16, None, False),
  ('pallas_tpu_flash', 2, 2, 1, 16, None, True),
  ('pallas_tpu_splash', 1, 2, 2, 16, None, False),
  ('pallas_tpu_splash', 2, 4, 2, 16, 6, True),
  ('pallas_tpu_splash', 1, 4, 1, 8, 9, False),
]


@pytest.mark.parametrize('backend,b,h,hkv,d,window,use_seg', CASES)
def test_backend_matches_xla(backend, b, h, hkv, d, window, use_seg):
  if backend == 'cudnn' and jax.default_backend() == 'gpu':
    pytest.skip('cuDNN takes only bf16/fp16; the GPU path is tested in test_attention_gpu.py')
  q, k, v = _qkv(b, T, h, hkv, d, seed=h + d)
  ct = np.random.default_rng(7).standard_normal(q.shape).astype(np.float32)
  seg = SEG[:b] if use_seg else None
  ref_out, ref_grads = out_and_grads(q, k, v, ct, seg, 'xla', window)
  out, grads = out_and_grads(q, k, v, ct, seg, backend, window)
  assert out.shape == q.shape and out.dtype == q.dtype
  assert_close(out, ref_out, 1e-5, atol=1e-6)
  for r, g in zip(ref_grads, grads):  # d/dq, d/dk, d/dv
    assert_close(g, r, 1e-4, atol=1e-6)


def test_flash_rejects_sliding_window_and_unknown_backend():
  q, k, v = _qkv(1, 8, 2, 2, 8)
  with pytest.raises(NotImplementedError, match='sliding window'):
    causal_attention(q, k, v, window_size=4, backend='pallas_tpu_flash')
  with pytest.raises(ValueError, match='unknown attention backend'):
    causal_attention(q, k, v, backend='flash')


# ---------------------------------------------------------------------------------------------
# The Flax module.

E = 16


def _module(**kw):
  cfg = dict(num_heads=4, num_kv_heads=2, head_dim=8)
  cfg.update(kw)
  return Attention(**cfg)


def _x(shape, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def test_params_logical_axes_and_dtypes():
  x = _x((2, 5, E))
  layer = _module(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(layer.init, jax.random.PRNGKey(1), x)
  assert nn.get_partition_spec(abstract)['params'] == {
    'q': {'kernel': P('embed', 'heads', 'head_dim')},
    'k': {'kernel': P('embed', 'kv_heads', 'head_dim')},
    'v': {'kernel': P('embed', 'kv_heads', 'head_dim')},
    'o': {'kernel': P('heads', 'head_dim', 'embed')},
  }
  shapes = jax.tree_util.tree_map(lambda p: (p.shape, p.dtype), nn.unbox(abstract)['params'])
  assert shapes['q']['kernel'] == ((E, 4, 8), jnp.float32)
  assert shapes['k']['kernel'] == ((E, 2, 8), jnp.float32)
  assert shapes['o']['kernel'] == ((4, 8, E), jnp.float32)
  y = jax.eval_shape(layer.apply, nn.unbox(abstract), x)
  assert y.shape == x.shape and y.dtype == jnp.bfloat16
  with pytest.raises(ValueError, match='must divide'):
    jax.eval_shape(_module(num_kv_heads=3).init, jax.random.PRNGKey(1), x)


def test_packed_row_equals_separate_documents():
  """segment_ids (and per-document positions) make a packed row behave like separate rows."""
  layer = _module(window_size=6)
  x = _x((1, 14, E))
  params = numpy_params(layer, x)
  apply = jax.jit(layer.apply)
  seg = np.array([[0] * 9 + [1] * 5])
  pos = np.array([list(range(9)) + list(range(5))])
  packed = apply(params, x, pos, seg)
  # Each document alone, zero-padded to the same length (padding comes after: causal).
  for lo, hi in [(0, 9), (9, 14)]:
    alone = np.zeros_like(x)
    alone[:, : hi - lo] = x[:, lo:hi]
    assert_close(packed[:, lo:hi], apply(params, alone)[:, : hi - lo], 1e-5, atol=1e-6)
  # Without restarting positions the result is the same up to rounding (RoPE is relative).
  assert_close(apply(params, x, None, seg), packed, 1e-4, atol=1e-6)


def test_module_backend_switch():
  """The module gives the same outputs whatever the backend (splash: window + segments)."""
  x = _x((2, T, E))
  params = numpy_params(_module(), x)
  ref = jax.jit(_module(window_size=6).apply)(params, x, None, SEG)
  got = jax.jit(_module(window_size=6, backend='pallas_tpu_splash').apply)(params, x, None, SEG)
  assert_close(got, ref, 1e-5, atol=1e-6)


@pytest.mark.parametrize('window,prefill', [(None, 4), (4, 4), (4, 6), (3, 2)])
def test_kv_cache_decode_equals_full_forward(window, prefill):
  """Prefill, then one token at a time; a sliding window keeps a ring of ``w`` slots that wraps
  several times (and a prefill longer than the ring writes only its last ``w`` keys)."""
  b, t = 2, 11
  layer = _module(window_size=window)
  x = _x((b, t, E))
  params = numpy_params(layer, x)
  full = jax.jit(layer.apply)(params, x)

  decode = jax.jit(functools.partial(layer.apply, method=Attention.decode))
  cache = layer.init_cache(b, max_len=16)
  assert cache['k'].shape == (b, window or 16, 2, 8) and int(cache['index']) == 0
  y0, cache = decode(params, x[:, :prefill], cache)  # prefill several tokens at once
  outs = [y0]
  for i in range(prefill, t):  # then one token at a time
    y, cache = decode(params, x[:, i : i + 1], cache)
    outs.append(y)
  assert int(cache['index']) == t
  assert_close(jnp.concatenate(outs, axis=1), full, 1e-5, atol=1e-6)


def test_kv_cache_init_helper():
  cache = init_kv_cache(1, 4, 2, 8, jnp.bfloat16)
  assert cache['v'].shape == (1, 4, 2, 8) and cache['v'].dtype == jnp.bfloat16
  assert cache['index'].dtype == jnp.int32


# ---------------------------------------------------------------------------------------------
# Titans' persistent memory: N_p learnable tokens literally prepended to every document.


def _literal_prepend(params, x, seg, n_p, window, always_visible, h=4, hkv=2, d=8):
  """Each document of each row run on its own as the sequence ``[P; x_doc]`` at positions
  ``-N_p .. L-1`` (numpy float64 attention; RoPE from layers/rope.py), keeping the outputs of
  the real tokens. The prefix obeys the window unless ``always_visible`` (Titans' SW-Attn*)."""
  from miras_jax.layers.rope import apply_rope

  p64 = {
    k: np.asarray(v['kernel'], np.float64) for k, v in params['params'].items() if k != 'persistent'
  }
  pers = np.asarray(params['params']['persistent'], np.float64)
  out = np.zeros(x.shape[:2] + (x.shape[2],))
  for bi in range(x.shape[0]):
    ids = seg[bi]
    for doc in np.unique(ids):
      cols = np.nonzero(ids == doc)[0]
      seq = np.concatenate([pers, np.asarray(x[bi, cols], np.float64)])  # [N_p + L, E]
      pos = np.arange(len(seq)) - n_p
      rope = lambda a: np.asarray(
        apply_rope(jnp.asarray(a[None], jnp.float32), jnp.asarray(pos[None])), np.float64
      )[0]
      q = rope(np.einsum('te,ehd->thd', seq, p64['q']))
      k = rope(np.einsum('te,ehd->thd', seq, p64['k']))
      v = np.einsum('te,ehd->thd', seq, p64['v'])
      o = np.zeros((len(seq), h, d))
      for i in range(n_p, len(seq)):
        js = [
          j
          for j in range(i + 1)
          if window is None or i - j < window or (always_visible and j < n_p)
        ]
        for hi in range(h):
          s = np.array([q[i, hi] @ k[j, hi // (h // hkv)] for j in js]) / np.sqrt(d)
          w = np.exp(s - s.max())
          o[i, hi] = (w / w.sum()) @ v[js, hi // (h // hkv)]
      out[bi, cols] = np.einsum('thd,hde->te', o[n_p:], p64['o'])
  return out


@pytest.mark.parametrize('window,always_visible', [(None, False), (4, False), (4, True)])
def test_persistent_tokens_equal_a_literal_prepend(window, always_visible):
  """Full attention, MAL's windowed prefix and MAG's SW-Attn* on a packed row (three
  documents) and a one-document row: each document behaves as if the N_p persistent tokens
  were prepended to it."""
  n_p, t = 3, 19
  layer = _module(
    window_size=window, persistent_tokens=n_p, persistent_always_visible=always_visible
  )
  x = _x((2, t, E), seed=5)
  params = numpy_params(layer, x)
  assert params['params']['persistent'].shape == (n_p, E)
  seg = SEG[:, :t]
  pos = positions_from_segments(jnp.asarray(seg))  # restart at every document
  got = jax.jit(layer.apply)(params, x, pos, seg)
  assert_close(got, _literal_prepend(params, x, seg, n_p, window, always_visible), 1e-5, atol=1e-6)


def test_persistent_tokens_cudnn_matches_xla_and_decode_matches_full():
  """The dense-mask cuDNN path (its XLA fallback off GPU) equals the XLA one, gradients of the
  persistent tokens included; decoding reproduces the full pass; Pallas kernels refuse."""
  kw = dict(window_size=4, persistent_tokens=2, persistent_always_visible=True)
  x = _x((2, T, E), seed=6)
  params = numpy_params(_module(**kw), x)

  def loss(params, backend):
    y = _module(backend=backend, **kw).apply(params, x, None, SEG)
    return jnp.sum(jnp.sin(y)), y

  (_, ref), g_ref = jax.jit(jax.value_and_grad(lambda p: loss(p, 'xla'), has_aux=True))(params)
  assert float(jnp.max(jnp.abs(g_ref['params']['persistent']))) > 0
  if jax.default_backend() != 'gpu':  # on GPU cuDNN takes only bf16: test_attention_gpu.py
    (_, out), g = jax.jit(jax.value_and_grad(lambda p: loss(p, 'cudnn'), has_aux=True))(params)
    assert_close(out, ref, 1e-5, atol=1e-6)
    assert_close(g['params']['persistent'], g_ref['params']['persistent'], 1e-4, atol=1e-6)

  layer = _module(**kw)
  xs = x[:, :9]
  full = jax.jit(layer.apply)(params, xs)
  decode = jax.jit(functools.partial(layer.apply, method=Attention.decode))
  y0, cache = decode(params, xs[:, :3], layer.init_cache(2, max_len=12))
  outs = [y0] + [None] * 6
  for i in range(3, 9):
    outs[i - 2], cache = decode(params, xs[:, i : i + 1], cache)
  assert_close(jnp.concatenate(outs, axis=1), full, 1e-5, atol=1e-6)

  with pytest.raises(NotImplementedError, match='persistent'):
    jax.eval_shape(_module(backend='pallas_tpu_splash', **kw).apply, params, x)
