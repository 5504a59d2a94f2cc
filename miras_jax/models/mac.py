"""Titans MAC, memory as a context (Behrouz et al. 2025, arXiv 2501.00663, §4.1, Fig. 2).

The sequence is cut into segments S_t of C = ``cfg.window`` tokens. For each segment (eq. 21–25):

    q_t = S_t W_Q                                 the memory's query projection of the segment
    h_t = M*_{t−1}(q_t)                           read the memory as it was at the end of the
                                                  previous segment (no update)
    ỹ_t = Attn([P ‖ h_t ‖ S_t])                   P: N_p persistent tokens (§3.3)
    M_t = M_{t−1} updated on y_t                  the Miras memory layer run over y
    o_t = y_t ⊗ M*_t(y_t)

The paper leaves these open; our choices (each tested in tests/models/test_mac.py):
  * Causality. A query of S_t sees every persistent token, and the tokens h_{t,j} and S_{t,j}
    with j ≤ i only: h_{t,j} is read with x_j's query, so a later h would leak the future
    (Fig. 2 draws the memory columns fully visible, which a causal LM cannot have).
  * Only S_t's tokens are queries: y_t has C rows (the attention outputs of P and h would be
    discarded anyway).
  * RoPE positions are those of the literal concatenation of a full segment: P at 0 .. N_p−1,
    h_{t,j} at N_p + j, S_{t,j} at N_p + C + j (C, not the segment's actual length, so that a
    partly decoded segment gives the same scores as the whole one).
  * h_t enters attention as tokens of the model width: the per-head reads go through the memory
    layer's read-out (per-head RMSNorm, output gate from S_t, output projection), then through
    the attention's own k / v projections. q_t is the memory layer's query projection, SiLU and
    ℓ2-normalised per head, without the short convolution (eq. 21 has none; the convolution
    belongs to the stream that updates the memory).
  * The update ``M_t = M_{t−1}(y_t)`` and the read ``M*_t(y_t)`` are the Miras layer run
    over the attention outputs y, token by token with its chunk semantics (layers/miras.py): the
    read at token i sees the updates of tokens ≤ i, never later ones (the literal
    "read M_t after the whole segment" would leak the segment's future).
  * ⊗ is MAG's gate (§4.2, eq. 28): ``o = RMSNorm(y) ⊙ sigmoid(RMSNorm(M*(y)))``.
  * Segments lie on the row's grid (blocks of C tokens, ``C`` a multiple of the memory chunk),
    cut at document boundaries: a document starting inside a block gets a short first segment
    that reads its fresh memory W_0. Memory and conv windows reset at every document start. So
    a packed row equals each document run alone when documents start on the segment grid (the
    memory core's own chunk grid has the same rule, memory/chunked.py); elsewhere nothing leaks
    between documents, but a document's segment boundaries depend on where it starts (an
    approximation of a per-document grid, named here and in the tests).

One h per token follows eq. 21–22 (q_t = S_t W_Q, h_t = M*(q_t)); lucidrains' titans-pytorch
(``MemoryAsContextTransformer``) instead interleaves a fixed number of learned long-term-memory
tokens per segment, a different reading of Fig. 2.

Training runs ``nn.scan`` over blocks of C tokens (the recurrence h_t ← M_{t−1} ← y_{t−1} is
sequential across segments; attention inside a segment is a dense [C, N_p + 2C] masked softmax,
so its cost is C per token, not T; a T that is not a multiple of C is padded at the end). Decoding (`MAC.decode`) is a separate, token-by-
token implementation with a KV cache of the current segment only (2C slots: h and S), the
memory state at the segment's start (for the reads) and the running memory state; prefill
and one-token steps equal the training pass (tests/models/test_mac.py).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from miras_jax.layers.attention_backends import dense_masked_attention
from miras_jax.layers.dense import DenseND
from miras_jax.layers.miras import MirasLayer
from miras_jax.layers.norms import RMSNorm, l2_normalize
from miras_jax.layers.rope import apply_rope
from miras_jax.memory import init_state, memory_forward
from miras_jax.models.config import LMConfig
from miras_jax.models.positions import positions_from_segments


def read_memory(rule, state: dict, q: jax.Array, outer: dict) -> jax.Array:
  """Read a memory state without updating it: ``M*(q)`` with the weights φ(A).

  ``state`` [B, H, ...] at a chunk boundary (where the read weights are exactly φ(A),
  memory/reference.py), ``q [B, H, L, D]`` → ``[B, H, L, D]`` float32.
  """
  arch, ret = rule.arch, rule.retention
  w = tuple(jax.vmap(jax.vmap(ret.phi))(a) for a in state['A'])
  per_head = jax.vmap(lambda w, x, o: arch.apply(w, x, o), in_axes=(0, 0, 0))
  return jax.vmap(per_head, in_axes=(0, 0, None))(w, q.astype(jnp.float32), outer)


class MAC(nn.Module):
  """Titans MAC mixer, ``[B, T, E] -> [B, T, E]`` (module docstring).

  Attributes:
      cfg: the model config (heads, window C = segment length, persistent tokens, backend).
      memory: the Miras layer holding the long-term memory (any rule; Titans' in the preset).
  """

  cfg: LMConfig
  memory: MirasLayer

  def setup(self):
    c = self.cfg
    h, hkv, d = c.n_heads, c.n_kv_heads or c.n_heads, c.head_dim
    dense = lambda feats, axis, axes: DenseND(
      features=feats,
      axis=axis,
      kernel_axes=axes,
      dtype=c.compute_dtype,
      param_dtype=c.params_dtype,
      kernel_init=nn.initializers.lecun_normal(),
    )
    self.q = dense((h, d), -1, ('embed', 'heads', 'head_dim'))
    self.k = dense((hkv, d), -1, ('embed', 'kv_heads', 'head_dim'))
    self.v = dense((hkv, d), -1, ('embed', 'kv_heads', 'head_dim'))
    self.o = dense(c.d_model, (-2, -1), ('heads', 'head_dim', 'embed'))
    if c.persistent_tokens:
      self.persistent = self.param(
        'persistent',
        nn.with_logical_partitioning(nn.initializers.normal(1.0), (None, 'embed')),
        (c.persistent_tokens, c.d_model),
        c.params_dtype,
      )
    self.norm_attn = RMSNorm(epsilon=c.norm_eps, dtype=jnp.float32, param_dtype=c.params_dtype)
    self.norm_mem = RMSNorm(epsilon=c.norm_eps, dtype=jnp.float32, param_dtype=c.params_dtype)

  # ------------------------------------------------------------------------------------------
  # Pieces shared by the training pass and decoding.

  def _retrieve(self, x, state):
    """``h = M*(q(x))`` as model-width tokens: ``x [B, L, E]``, state [B, H, ...] → [B, L, E].
    ``state=None`` reads the fresh memory W_0."""
    mem = self.memory
    b, l = x.shape[:2]
    q = mem.q_proj(x).astype(jnp.float32)  # [B, L, H, D]
    q = l2_normalize(jnp.swapaxes(nn.silu(q), 1, 2))  # [B, H, L, D]
    w0, outer = mem._memory_params()
    if state is None:
      state = init_state(mem.memory_rule, w0, b)
    h = read_memory(mem.memory_rule, state, q, outer)
    return mem._output(x, h)

  def _prefix(self, dtype):
    """Persistent keys / values ``[N_p, Hkv, D]`` at RoPE positions 0 .. N_p−1, or None."""
    n_p = self.cfg.persistent_tokens
    if not n_p:
      return None
    p = self.persistent.astype(dtype)[None]
    pos = jnp.arange(n_p, dtype=jnp.int32)[None]
    return apply_rope(self.k(p), pos, self.cfg.rope_theta)[0], self.v(p)[0]

  def _qkv(self, x, h, offset):
    """Queries of S, keys / values of h and S at in-segment ``offset [B, L]``."""
    c = self.cfg
    n_p, cap, theta = c.persistent_tokens, c.window, c.rope_theta
    q = apply_rope(self.q(x), n_p + cap + offset, theta)
    k_s = apply_rope(self.k(x), n_p + cap + offset, theta)
    k_h = apply_rope(self.k(h), n_p + offset, theta)
    return q, (k_h, self.v(h)), (k_s, self.v(x))

  def _attend(self, q, kv_h, kv_s, mask):
    """Softmax over [P ‖ h ‖ S]; ``mask [B, L, S]`` applies to both h and S slots."""
    keys, values = [kv_h[0], kv_s[0]], [kv_h[1], kv_s[1]]
    masks = [mask, mask]
    prefix = self._prefix(q.dtype)
    b, l = q.shape[:2]
    if prefix is not None:
      k_p, v_p = prefix
      keys.insert(0, jnp.broadcast_to(k_p.astype(q.dtype), (b,) + k_p.shape))
      values.insert(0, jnp.broadcast_to(v_p.astype(q.dtype), (b,) + v_p.shape))
      masks.insert(0, jnp.ones((b, l, k_p.shape[0]), bool))
    out = dense_masked_attention(
      q,
      jnp.concatenate([k.astype(q.dtype) for k in keys], 1),
      jnp.concatenate([v.astype(q.dtype) for v in values], 1),
      jnp.concatenate(masks, -1),
      self.cfg.attention_backend,
    )
    return self.o(out)

  def _combine(self, y, m):
    return (self.norm_attn(y) * jax.nn.sigmoid(self.norm_mem(m))).astype(y.dtype)

  # ------------------------------------------------------------------------------------------
  # Training / evaluation: segment by segment.

  def _block(self, carry, xs, seg, packed):
    """One segment block: ``xs [B, C, E]``, ``seg [B, C]``; ``carry`` = (memory state, raw
    q/k/v projections of the last K−1 attention outputs and their ids, last id). Returns the
    new carry and (output [B, C, E], the memory's keys and values [B, H, C, D])."""
    mem = self.memory
    state, prev_raw, prev_seg_win, prev_seg = carry
    b, l = xs.shape[:2]
    offset = positions_from_segments(seg)  # in-segment offsets (restart at a document start)
    # h_t = M*_{t−1}(q_t): the document continuing from the previous block reads the carried
    # state (fresh in the first block), a document starting inside the block its W_0.
    h = self._retrieve(xs, state)
    if packed:
      cont = seg == prev_seg[:, None]
      h = jnp.where(cont[..., None], h, self._retrieve(xs, None))
    q, kv_h, kv_s = self._qkv(xs, h, offset)
    idx = jnp.arange(l)
    mask = (idx[:, None] >= idx[None, :]) & (seg[:, :, None] == seg[:, None, :])
    y = self._attend(q, kv_h, kv_s, mask)

    # M_t = M_{t−1} updated on y_t and read token by token: the Miras layer with its memory
    # state and conv windows carried across blocks.
    raw = mem._project(y)
    conv_in = tuple(jnp.concatenate([p.astype(r.dtype), r], 1) for p, r in zip(prev_raw, raw))
    conv_seg = jnp.concatenate([prev_seg_win, seg], 1)
    n_prev = prev_raw[0].shape[1]
    convs = (mem.conv_q, mem.conv_k, mem.conv_v)
    qm, km, vm = mem._post_conv(*(f(z, conv_seg)[:, n_prev:] for f, z in zip(convs, conv_in)))
    if packed:  # a document starting at the block start begins from W_0
      fresh = init_state(mem.memory_rule, mem._memory_params()[0], b)
      new_doc = seg[:, 0] != prev_seg
      state = jax.tree.map(
        lambda f, s: jnp.where(new_doc.reshape((b,) + (1,) * (s.ndim - 1)), f, s), fresh, state
      )
    w0, outer = mem._memory_params()
    m, state = memory_forward(
      mem.memory_rule,
      qm,
      km,
      vm,
      mem._gates(y),
      w0=w0,
      outer=outer,
      state=state,
      segment_ids=seg if packed else None,
      chunk_size=mem.chunk_size,
      implementation=mem.implementation,
      remat_group=mem.remat_group,
      aligned=True,  # blocks start on the chunk grid (window % chunk_size == 0)
    )
    keep = lambda z: z[:, z.shape[1] - n_prev :]
    carry = (
      state,
      tuple(keep(z).astype(p.dtype) for z, p in zip(conv_in, prev_raw)),
      keep(conv_seg),
      seg[:, -1],
    )
    return carry, (self._combine(y, mem._output(y, m)), (km, vm))

  def __call__(self, x, positions=None, segment_ids=None):
    """``x [B, T, E]`` → ``[B, T, E]``. ``segment_ids [B, T]`` marks packed documents;
    ``positions`` is unused (RoPE positions are in-segment, module docstring).

    The blocks run under ``nn.scan`` (compile time independent of T / C); T is padded to a
    multiple of C at the end (causal: padding never reaches a real token) and sliced off.
    """
    del positions
    mem = self.memory
    b, t, e = x.shape
    cap = self.cfg.window
    n_blocks = -(-t // cap)
    pad = n_blocks * cap - t
    packed = segment_ids is not None
    seg = jnp.zeros((b, t), jnp.int32) if segment_ids is None else segment_ids.astype(jnp.int32)
    if pad:
      x = jnp.pad(x, ((0, 0), (0, pad), (0, 0)))
      seg = jnp.concatenate([seg, jnp.broadcast_to(jnp.max(seg) + 1, (b, pad))], 1)
    n_prev, hd = mem.conv_size - 1, mem.num_heads * mem.head_dim
    state = init_state(mem.memory_rule, mem._memory_params()[0], b)
    raw0 = jnp.zeros((b, n_prev, hd), self.cfg.compute_dtype)
    carry = (state, (raw0, raw0, raw0), jnp.broadcast_to(seg[:, :1], (b, n_prev)), seg[:, 0])

    def body(module, carry, inputs):
      return module._block(carry, *inputs, packed)

    scan = nn.scan(
      body, variable_broadcast='params', split_rngs={'params': False}, in_axes=1, out_axes=1
    )
    blocks = (x.reshape(b, n_blocks, cap, e), seg.reshape(b, n_blocks, cap))
    (state, *_), (out, (k_mem, v_mem)) = scan(self, carry, blocks)
    if self.is_mutable_collection('intermediates'):
      # the memory-health proxy of layers/miras.py on the last block's keys and values and
      # the final state (which, when T was padded, has also seen the padding)
      mem._sow_inner_loss(k_mem[:, -1], v_mem[:, -1], state)
    return out.reshape(b, n_blocks * cap, -1)[:, :t]

  # ------------------------------------------------------------------------------------------
  # Decoding: token by token.

  def _step(self, cache, x):
    """One token ``x [B, 1, E]``; returns ``(y [B, 1, E], new cache)``."""
    mem, cap = self.memory, self.cfg.window
    b = x.shape[0]
    index = jnp.asarray(cache['index'], jnp.int32)
    off = index % cap
    fresh = init_state(mem.memory_rule, mem._memory_params()[0], b)
    started = cache['mem']['started']
    running = jax.tree.map(lambda s, f: jnp.where(started, s, f), cache['mem']['memory'], fresh)
    # a segment starts: its reads see the memory as the previous segment left it
    read = jax.tree.map(lambda r, s: jnp.where(off == 0, s, r), cache['read'], running)
    h = self._retrieve(x, read)
    q, kv_h, kv_s = self._qkv(x, h, jnp.broadcast_to(off, (b, 1)))
    put = lambda buf, new: jax.lax.dynamic_update_slice(buf, new.astype(buf.dtype), (0, off, 0, 0))
    kv = {
      'k_h': put(cache['k_h'], kv_h[0]),
      'v_h': put(cache['v_h'], kv_h[1]),
      'k_s': put(cache['k_s'], kv_s[0]),
      'v_s': put(cache['v_s'], kv_s[1]),
    }
    # slots past ``off`` still hold the previous segment: hidden
    mask = jnp.broadcast_to(jnp.arange(cap) <= off, (b, 1, cap))
    y = self._attend(q, (kv['k_h'], kv['v_h']), (kv['k_s'], kv['v_s']), mask)
    m, mem_cache = mem.decode(y, cache['mem'])
    new = dict(kv, mem=mem_cache, read=read, index=index + 1)
    return self._combine(y, m), new

  def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """Continue every row by ``x [B, T_new, E]`` (a prefill or one token), one token at a time
    (``nn.scan``); returns ``(y [B, T_new, E], new cache)``, the outputs of the training pass
    over everything decoded so far. One document per row."""

    def body(module, carry, xt):
      y, carry = module._step(carry, xt[:, None])
      return carry, y[:, 0]

    scan = nn.scan(
      body, variable_broadcast='params', split_rngs={'params': False}, in_axes=1, out_axes=1
    )
    cache, y = scan(self, cache, x)
    return y, cache


def mac_cache(cfg: LMConfig, memory: MirasLayer, batch: int) -> dict:
  """The empty decoding cache of one MAC mixer (no parameters needed): the current segment's
  keys / values of h and S ``[B, C, Hkv, D]`` each (C = ``cfg.window``: bounded by the
  segment, not the context), the memory state at the segment's start ``read``, the Miras
  layer's own cache ``mem`` (conv windows, running memory state) and ``index``."""
  hkv = cfg.n_kv_heads or cfg.n_heads
  kv = jnp.zeros((batch, cfg.window, hkv, cfg.head_dim), cfg.compute_dtype)
  mem = memory.init_cache(batch, cfg.compute_dtype)
  return {
    'k_h': kv,
    'v_h': kv,
    'k_s': kv,
    'v_s': kv,
    'read': mem['memory'],
    'mem': mem,
    'index': jnp.zeros((), jnp.int32),
  }
