"""Llama-style decoder LM whose token mixers are chosen per layer (DESIGN.md §5).

    tokens [B, T] -> embed -> R × Block(pattern) -> RMSNorm -> head (tied or untied) -> logits

A `Block` is one repeat of ``cfg.pattern``; each entry is a pre-norm residual sub-layer
``x += mixer(RMSNorm(x)); x += SwiGLU(RMSNorm(x))`` (Llama, Touvron et al. 2023). Mixers:
full attention, sliding-window attention (Samba, Ren et al. 2024), the Miras memory layer, and
Titans MAG (Behrouz et al. 2025, "Titans" §4.2: memory and SWA branches in parallel, combined
by a gate) and Titans MAC (§4.1, models/mac.py: attention over each segment with the memory's
retrieval as context). Titans MAL (§4.3) and Samba-style hybrids are the pattern ['memory', 'swa'].
Titans' persistent memory (§3.3) is ``cfg.persistent_tokens`` learnable tokens prepended to every
document in each attention mixer (see `MAG` for the memory branch's share of them).
The repeats are one ``nn.scan`` (``scan_layers``) with a configurable ``jax.checkpoint`` policy
(``remat``), so compile time does not grow with depth.

Logical axes: every parameter carries them (attention / MLP / Miras layers; embedding
('vocab', 'embed'); head ('embed', 'vocab'); scanned parameters get a leading 'layers' axis);
the residual stream is constrained to ('activation_batch', 'activation_length',
'activation_embed') and logits to (..., 'activation_vocab').

Inference: ``init_cache(batch, max_len)`` (no parameters needed) and ``decode(tokens, cache)``
(prefill any number of tokens, then one at a time). Attention layers keep KV caches, memory
layers their conv windows and memory state, so greedy decoding reproduces the full forward
pass's logits (tests/models/test_lm.py).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from miras_jax.layers.attention import Attention, cache_len, init_kv_cache
from miras_jax.layers.miras import MirasLayer
from miras_jax.layers.mlp import SwiGLU
from miras_jax.layers.norms import RMSNorm
from miras_jax.models.config import LMConfig
from miras_jax.models.mac import MAC, mac_cache
from miras_jax.models.positions import positions_from_segments  # noqa: F401  (re-exported)

ACT = ('activation_batch', 'activation_length', 'activation_embed')


def _constrain(x, names=ACT):
  return nn.with_logical_constraint(x, names)


def _remat_policy(name: str):
  if name == 'full':
    return jax.checkpoint_policies.nothing_saveable
  return getattr(jax.checkpoint_policies, name)


def memory_layer(cfg: LMConfig, **kw) -> MirasLayer:
  return MirasLayer(
    rule=cfg.rule,
    num_heads=cfg.n_heads,
    head_dim=cfg.head_dim,
    chunk_size=cfg.chunk_size,
    implementation=cfg.memory_impl,
    gate_rank=cfg.gate_rank,
    conv_size=cfg.conv_size,
    eta_max=cfg.eta_max,
    alpha_init=cfg.alpha_init,
    huber_mode=cfg.huber_mode,
    delta_init=cfg.delta_init,
    channel_delta=cfg.channel_delta,
    memora_form=cfg.memora_form,
    ln_eps=cfg.memory_ln_eps,
    retention_target=cfg.retention_target,
    momentum_form=cfg.momentum_form,
    step_scale=cfg.step_scale,
    output_gate=cfg.output_gate,
    remat_group=cfg.memory_remat_group,
    grad_horizon=cfg.memory_grad_horizon,
    dtype=cfg.compute_dtype,
    param_dtype=cfg.params_dtype,
    **kw,
  )


def attention_layer(cfg: LMConfig, window: int | None, **kw) -> Attention:
  return Attention(
    num_heads=cfg.n_heads,
    head_dim=cfg.head_dim,
    num_kv_heads=cfg.n_kv_heads,
    window_size=window,
    backend=cfg.attention_backend,
    rope_theta=cfg.rope_theta,
    persistent_tokens=cfg.persistent_tokens,
    dtype=cfg.compute_dtype,
    param_dtype=cfg.params_dtype,
    **kw,
  )


class MAG(nn.Module):
  """Titans MAG (Behrouz et al. 2025, §4.2, eq. 26–28): ``x̃ = P || x``, ``y = SW-Attn*(x̃)``,
  ``o = RMSNorm(y) ⊙ sigmoid(RMSNorm(M(x̃)))`` — the memory branch gates the attention branch,
  both read the same input.

  Persistent memory P (``cfg.persistent_tokens`` learnable tokens, §3.3) enters the attention
  branch as a prefix every query sees through the window ("SW-Attn*", Fig. 3b; Fig. 4 draws P
  in the attention context only). In ``M(x̃)`` the memory would first consume the N_p
  input-independent tokens; the state that leaves it in is a function of the parameters alone,
  and the layer already learns its initial memory W_0 (layers/miras.py), of which that state is
  a reparametrisation. So the memory reads ``x`` from its learned W_0 instead, which keeps its
  chunk grid aligned with documents (exact per-document resets in packed rows). What this
  drops is only the momentum and conv-window state P would leave behind.
  """

  cfg: LMConfig

  def setup(self):
    c = self.cfg
    self.attn = attention_layer(c, c.window, persistent_always_visible=True)
    self.memory = memory_layer(c)
    self.norm_attn = RMSNorm(epsilon=c.norm_eps, dtype=jnp.float32, param_dtype=c.params_dtype)
    self.norm_mem = RMSNorm(epsilon=c.norm_eps, dtype=jnp.float32, param_dtype=c.params_dtype)

  def _combine(self, a, m):
    out = self.norm_attn(a) * jax.nn.sigmoid(self.norm_mem(m))
    return out.astype(a.dtype)

  def __call__(self, x, positions=None, segment_ids=None):
    return self._combine(self.attn(x, positions, segment_ids), self.memory(x, segment_ids))

  def decode(self, x, cache):
    a, ca = self.attn.decode(x, cache['attn'])
    m, cm = self.memory.decode(x, cache['memory'])
    return self._combine(a, m), {'attn': ca, 'memory': cm}


def _make_mixer(cfg: LMConfig, kind: str, **kw):
  if kind == 'attention':
    return attention_layer(cfg, None, **kw)
  if kind == 'swa':
    return attention_layer(cfg, cfg.window, **kw)
  if kind == 'memory':
    return memory_layer(cfg, **kw)
  if kind == 'mac':
    return MAC(cfg, memory_layer(cfg, parent=None), **kw)
  return MAG(cfg, **kw)


def mixer_cache(cfg: LMConfig, kind: str, batch: int, max_len: int) -> dict:
  """The empty decoding cache of one mixer (no parameters needed); sliding-window layers hold
  a ring of ``min(max_len, window)`` slots, so their memory stays bounded."""
  dtype = cfg.compute_dtype
  hkv = cfg.n_kv_heads or cfg.n_heads
  slots = cache_len(max_len, None if kind == 'attention' else cfg.window)
  if kind in ('attention', 'swa'):
    return init_kv_cache(batch, slots, hkv, cfg.head_dim, dtype)
  if kind == 'mac':
    return mac_cache(cfg, memory_layer(cfg, parent=None), batch)
  mem = memory_layer(cfg, parent=None).init_cache(batch, dtype)
  if kind == 'memory':
    return mem
  return {'attn': init_kv_cache(batch, slots, hkv, cfg.head_dim, dtype), 'memory': mem}


class Block(nn.Module):
  """One repeat of the layer pattern, ``[B, T, E] -> [B, T, E]``.

  ``__call__(x, aux)``: training/eval with ``aux = (segment_ids, positions)`` (returns
  ``(x, None)``), or with ``decode_mode`` ``aux`` = tuple of per-sub-layer caches (returns
  ``(x, new_caches)``). The (carry, x) -> (carry, y) shape is what ``nn.scan`` wants.
  """

  cfg: LMConfig
  decode_mode: bool = False

  def setup(self):
    c = self.cfg
    norm = lambda: RMSNorm(epsilon=c.norm_eps, dtype=c.compute_dtype, param_dtype=c.params_dtype)
    self.mixer_norms = [norm() for _ in c.pattern]
    self.mixers = [_make_mixer(c, kind) for kind in c.pattern]
    self.mlp_norms = [norm() for _ in c.pattern]
    self.mlps = [
      SwiGLU(c.mlp_dim, dtype=c.compute_dtype, param_dtype=c.params_dtype) for _ in c.pattern
    ]

  def __call__(self, x, aux):
    c = self.cfg
    new_caches = []
    for i, kind in enumerate(c.pattern):
      h = self.mixer_norms[i](x)
      mixer = self.mixers[i]
      if self.decode_mode:
        y, ci = mixer.decode(h, aux[i])
        new_caches.append(ci)
      else:
        segment_ids, positions = aux
        if kind == 'memory':
          y = mixer(h, segment_ids)
        else:
          y = mixer(h, positions, segment_ids)
      x = _constrain(x + y.astype(x.dtype))
      x = _constrain(x + self.mlps[i](self.mlp_norms[i](x)).astype(x.dtype))
    return x, (tuple(new_caches) if self.decode_mode else None)


class LM(nn.Module):
  """Decoder LM: ``__call__(tokens [B, T] int32, segment_ids=None, positions=None) -> logits
  [B, T, V] float32``; ``init_cache`` / ``decode`` for inference; ``num_params``."""

  cfg: LMConfig

  @nn.compact
  def _run(self, tokens, aux, decode_mode: bool):
    c = self.cfg
    embed = nn.Embed(
      c.vocab_size,
      c.d_model,
      dtype=c.compute_dtype,
      param_dtype=c.params_dtype,
      embedding_init=nn.with_logical_partitioning(
        nn.initializers.normal(c.embed_init_std), ('vocab', 'embed')
      ),
      name='embed',
    )
    x = _constrain(embed(tokens))
    block = Block
    if c.remat != 'none' and not decode_mode:
      block = nn.remat(Block, policy=_remat_policy(c.remat), prevent_cse=not c.scan_layers)
    if c.scan_layers:
      stack = nn.scan(
        block,
        variable_axes={'params': 0, 'intermediates': 0},
        split_rngs={'params': True},
        in_axes=0 if decode_mode else nn.broadcast,
        length=c.repeats,
        metadata_params={nn.PARTITION_NAME: 'layers'},
      )
      x, new = stack(c, decode_mode, name='blocks')(x, aux)
    else:
      outs = []
      for r in range(c.repeats):
        aux_r = jax.tree.map(lambda a: a[r], aux) if decode_mode else aux
        x, out = block(c, decode_mode, name=f'blocks_{r}')(x, aux_r)
        outs.append(out)
      new = jax.tree.map(lambda *a: jnp.stack(a), *outs) if decode_mode else None
    x = RMSNorm(
      epsilon=c.norm_eps, dtype=c.compute_dtype, param_dtype=c.params_dtype, name='final_norm'
    )(x)
    if c.tie_embeddings:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(
        c.vocab_size,
        use_bias=False,
        dtype=c.compute_dtype,
        param_dtype=c.params_dtype,
        kernel_init=nn.with_logical_partitioning(
          nn.initializers.lecun_normal(), ('embed', 'vocab')
        ),
        name='head',
      )(x)
    logits = _constrain(
      logits.astype(jnp.float32), ('activation_batch', 'activation_length', 'activation_vocab')
    )
    return logits, new

  def __call__(
    self,
    tokens: jax.Array,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
  ) -> jax.Array:
    """Whole sequences.

    Args:
        tokens: int32 ``[B, T]``.
        segment_ids: int ``[B, T]`` for packed rows: attention stays within a document,
            convs do not cross boundaries and every memory restarts at a document start.
        positions: int ``[B, T]`` RoPE positions; default ``0..T−1``, or restarting per
            document when ``segment_ids`` is given.

    Returns:
        float32 logits ``[B, T, vocab_size]``.
    """
    if positions is None:
      if segment_ids is not None:
        positions = positions_from_segments(segment_ids)
      else:
        b, t = tokens.shape
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    return self._run(tokens, (segment_ids, positions), False)[0]

  def init_cache(self, batch: int, max_len: int | None = None) -> dict:
    """An empty decoding cache (callable on the unbound module; no parameters needed).

    ``{'index': int32 scalar, 'layers': tuple over pattern entries of per-mixer caches,
    each leaf stacked over the R repeats [R, ...]}``.
    """
    c = self.cfg
    max_len = c.max_len if max_len is None else max_len
    per = tuple(mixer_cache(c, kind, batch, max_len) for kind in c.pattern)
    stacked = jax.tree.map(lambda a: jnp.tile(a[None], (c.repeats,) + (1,) * a.ndim), per)
    return {'index': jnp.zeros((), jnp.int32), 'layers': stacked}

  def decode(self, tokens: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """Append ``tokens [B, T_new]`` (a prompt prefill or one token) to every row.

    Returns ``(logits [B, T_new, V] float32, new_cache)``; the logits equal those of one full
    forward pass over everything decoded so far. Rows hold one document each.
    """
    logits, layers = self._run(tokens, cache['layers'], True)
    return logits, {'index': cache['index'] + tokens.shape[1], 'layers': layers}

  def num_params(self, params=None) -> int:
    """Parameter count: of ``params`` if given, else from ``jax.eval_shape`` of ``init``
    (nothing allocated)."""
    if params is None:
      module = self.clone(parent=None)
      tokens = jax.ShapeDtypeStruct((1, 8), jnp.int32)
      params = jax.eval_shape(lambda t: module.init(jax.random.PRNGKey(0), t), tokens)
      params = params['params']
    return count_params(params)


def count_params(tree: Any) -> int:
  """Number of scalars in a (possibly boxed, possibly ShapeDtypeStruct) parameter tree."""
  leaves = jax.tree.leaves(nn.unbox(tree))
  total = 0
  for leaf in leaves:
    n = 1
    for s in leaf.shape:
      n *= int(s)
    total += n
  return total
