"""Analytic FLOP counts of the LM, for MFU (DESIGN.md §6).

Conventions: a matmul [m, k] @ [k, n] is 2·m·k·n FLOPs; training = 3 × forward (the backward
pass costs twice the forward: one matmul for the input gradient, one for the weight gradient).
Re-computation under ``jax.checkpoint`` (the layer ``remat`` policy and the memory's
``remat_group``) is *not* counted, as usual for MFU ("model FLOPs", PaLM appendix B).
Element-wise work (norms, activations, softmax, gates' non-linearities, the memory's
LayerNorm / GELU / ℓp and Huber maps) is not counted either; only matmuls and the
matmul-like contractions of the chunked memory.

Per token, forward, for one layer of each mixer (d = d_model, H heads of size D, context T):
  attention  projections 2·d·D·(2H + 2H_kv), scores + values 2·2·H·D·ctx with ctx = T for full
             attention (the dense causal kernel computes the whole T × T square, as the PaLM
             6N + 12·L·T·d formula counts it) and ctx = min(window, T) for sliding windows (the
             useful work; the XLA backend computes the full square, see tests), plus
             ``persistent_tokens`` more keys.
  memory     projections q, k, v, output gate and output: 5 · 2·d·H·D; low-rank gates
             2·r·(d + H·c) each; short convs 3 · 2·K·H·D; and the inner loop per head
             (memory/chunked.py, chunk b, weights W_l [o_l, i_l]):
               general kernel (any memory, scalar decay, momentum):
                 Σ_l 2·o_l·i_l · (key forward + read of the boundary weights + chunk update
                                  [+ back-prop for l > 0] [+ 2 with momentum])
                     + 2·b·(i_l + o_l)                (dual-form in-chunk attention)
               channel-wise decay (GLA): 6·D² + 5·b·D
               WY (DeltaNet family): 6·D² + 7·b·D    (incl. the b × b triangular solve)
             Packed rows (segment ids) add a second key forward at W_0 (not counted).
  MLP        3 · 2·d·mlp_dim
  MAG        attention + memory (the gate's norms are element-wise)
  MAC        (models/mac.py) the memory as above, updated on the attention output; the retrieval
             h = M*(q(x)): query projection 2·d·H·D, a read of the memory per head
             Σ_l 2·o_l·i_l, its read-out (output gate and projection) 2 · 2·d·H·D; attention
             projections of the segment (q, k, v, o) and of h (k, v), and scores + values over
             N_p + 2·min(window, T) keys (h and the segment, the dense [C, N_p + 2C] block
             the XLA path computes). Packed rows also read the fresh memory for documents that
             start inside a segment (not counted); a T that is not a multiple of the window
             is padded to one (the padding's work is not counted).
plus the head 2·d·V (the embedding lookup is free).
"""

from __future__ import annotations

from typing import Any

from miras_jax.memory import get_rule
from miras_jax.models.config import LMConfig


def _attention(c: LMConfig, seq_len: int, window: int | None) -> float:
  h, hkv, dh, d = c.n_heads, c.n_kv_heads or c.n_heads, c.head_dim, c.d_model
  proj = 2 * d * dh * (2 * h + 2 * hkv)
  ctx = seq_len if window is None else min(window, seq_len)
  # persistent tokens (Titans §3.3): N_p more keys per query (their k/v projections are per
  # sequence, not per token, and not counted)
  return proj + 2 * 2 * h * dh * (ctx + c.persistent_tokens)


def memory_inner_flops(rule_name: str, head_dim: int, chunk_size: int) -> float:
  """Forward FLOPs per token per head of the chunked memory update and read."""
  rule = get_rule(rule_name)
  D, b = head_dim, chunk_size
  if rule.form == 'wy':
    return 6 * D * D + 7 * b * D
  if rule.retention.decay == 'channel':
    return 6 * D * D + 5 * b * D
  total = 0.0
  mom = 2 if rule.algorithm.momentum else 0
  for l, (o, i) in enumerate(rule.arch.shapes(D, D)):
    n_mats = 3 + (1 if l > 0 else 0) + mom
    total += 2 * o * i * n_mats + 2 * b * (i + o)
  return total


def _memory(c: LMConfig) -> float:
  d, h, dh = c.d_model, c.n_heads, c.head_dim
  rule = get_rule(c.rule)
  hd = h * dh
  proj = 5 * 2 * d * hd
  uses = rule.uses
  gates = 0.0
  for name, on in uses.items():
    if not on:
      continue
    if name == 'log_alpha' and rule.decay_style == 'fixed':
      continue
    out = hd if (name == 'log_alpha' and rule.retention.decay == 'channel') else h
    gates += 2 * c.gate_rank * (d + out)
  conv = 3 * 2 * c.conv_size * hd
  return proj + gates + conv + h * memory_inner_flops(c.rule, dh, c.chunk_size)


def memory_read_flops(rule_name: str, head_dim: int) -> float:
  """Forward FLOPs per token per head of one read ``M(W; q)`` at fixed weights."""
  return sum(2 * o * i for o, i in get_rule(rule_name).arch.shapes(head_dim, head_dim))


def _mac(c: LMConfig, seq_len: int) -> float:
  d, h, hkv, dh = c.d_model, c.n_heads, c.n_kv_heads or c.n_heads, c.head_dim
  ctx = c.persistent_tokens + 2 * min(c.window, seq_len)
  attention = 2 * d * dh * (2 * h + 4 * hkv) + 2 * 2 * h * dh * ctx
  retrieval = 3 * 2 * d * h * dh + h * memory_read_flops(c.rule, dh)
  return attention + retrieval + _memory(c)


def mixer_forward_flops(c: LMConfig, kind: str, seq_len: int) -> float:
  if kind == 'attention':
    return _attention(c, seq_len, None)
  if kind == 'swa':
    return _attention(c, seq_len, c.window)
  if kind == 'memory':
    return _memory(c)
  if kind == 'mag':
    return _attention(c, seq_len, c.window) + _memory(c)
  if kind == 'mac':
    return _mac(c, seq_len)
  raise ValueError(f'unknown mixer {kind!r}')


def forward_flops_per_token(model_cfg: Any, seq_len: int) -> float:
  """Forward FLOPs per token of the whole model at context ``seq_len``."""
  c = LMConfig.from_config(model_cfg)
  per_repeat = sum(
    mixer_forward_flops(c, k, seq_len) + 3 * 2 * c.d_model * c.mlp_dim for k in c.pattern
  )
  return c.repeats * per_repeat + 2 * c.d_model * c.vocab_size


def training_flops_per_token(model_cfg: Any, seq_len: int) -> float:
  """Training (forward + backward) FLOPs per token: 3 × forward (module docstring)."""
  return 3.0 * forward_flops_per_token(model_cfg, seq_len)
