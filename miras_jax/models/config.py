"""The model's own frozen config (hashable, so Flax modules can hold it).

`LMConfig.from_config(cfg)` reads a `ml_collections.ConfigDict` (miras_jax/models/presets.py) or any
mapping with the same keys; unknown keys are an error, missing keys take the defaults below.

Layer pattern: ``pattern`` is a list of mixer kinds, repeated ``n_layers // len(pattern)`` times
(one ``nn.scan`` step per repeat). Every entry is one residual block ``x += mixer(norm(x));
x += mlp(norm(x))``. Mixer kinds:
    'attention'  full causal softmax attention with RoPE (Transformer++)
    'swa'        sliding-window attention (window ``window``)
    'memory'     the Miras layer with rule ``rule`` (miras_jax/layers/miras.py)
    'mag'        Titans MAG: memory and SWA branches in parallel on the same input, combined by
                 a gate (models/lm.py `MAG`)
    'mac'        Titans MAC: segments of ``window`` tokens; attention over [persistent ‖ memory
                 retrieval ‖ segment], its output updates the memory and is gated by the
                 memory's read (models/mac.py `MAC`)
so e.g. ['memory'] is a pure memory model, ['memory', 'swa'] a Samba-style hybrid (and Titans
MAL: a memory layer, then an SWA layer), ['mag'] Titans MAG.

``eta_max`` and ``alpha_init`` set the memory gates (layers/miras.py): η ≤ eta_max, and the
keep-rate α starts spread over heads in ``alpha_init`` = (lo, hi). The papers do not give them;
the presets cap η per rule and start Titans with a slower-forgetting α range, so that the
exact 4K-token gradient stays bounded (miras_jax/models/presets.py, scripts/bench_bptt.py).

Rule variants (memory/rules.py ``with_options``; ignored by rules without the component):
``huber_mode`` Yaad's bias, 'mask' (Miras Eq. 26: per token ℓ2 gradient where ‖e‖ ≤ δ_t, else
δ_t·sign(e); the default) | 'clip' (Eq. 14, per channel) | 'norm' (Eq. 15); ``delta_init`` its
threshold δ at initialisation (δ_t = softplus(·), layers/miras.py); ``channel_delta``
makes Yaad's data-dependent δ_t per value channel instead of per head (layers/miras.py);
``memora_form`` Memora's chunked form, 'logits' | 'lag' (Eq. 30–32).

``memory_ln_eps`` (default 1.0): ε of the deep memories' output LayerNorm (Titans, Moneta, Yaad,
Memora, TTT). 1 bounds the LayerNorm's gain by 1 whatever the gates do to the memory's scale,
which keeps the exact gradient through 4K–8K tokens bounded at the layer's default gates
(layers/miras.py; issue 10 §3); 1e-6, the usual value, was the default before, and the Titans
presets keep it (miras_jax/models/presets.py).

``retention_target`` (default 'zero', the papers): what the deep memories' scalar decay forgets
towards, 'zero' (A_t = α_t A_{t−1} + …) or 'initial' (A_t = α_t A_{t−1} + (1 − α_t) A_0 + …,
towards the learned initial memory; memory/retention.py). It keeps the memory at the scale it
was trained at over thousands of tokens, which bounds Moneta's exact 4K–8K gradient after
training (benchmarks/README.md "Issue 10 §3"); no preset takes it, since it is not the papers'
printed rule (opt in with --config.model.retention_target=initial). Applies to rules with a
scalar decay and the identity or ℓq map (Titans, Moneta, Yaad); ignored by the others.
``momentum_form`` (default 'sum', Titans eq. 10): 'ema' hands the momentum rules the step
η_t (1 − μ_t), so a gradient's weights over all later tokens sum to at most η_t instead of
η_t / (1 − μ_t) (layers/miras_params.py). It bounds Titans' trained 4K–8K gradient (1.1e7 →
2.0e4 at 4K) but cost 0.18 of validation loss in the tiny run, so no preset takes it.
``step_scale`` (default 'none', the papers' step η_t): 'implicit' bounds each token's step by
the inner loss's curvature along it, η_t/(1 + η̄_t λ_t) with λ_t = ‖∇_W ℓ_t‖²/‖∂ℓ_t/∂M‖² and
η̄_t = η_t/(1 − μ_t) (Longhorn's implicit step for a linear memory); 'implicit_chunk' counts the
chunk's b steps taken at one point, η_t/(1 + b η̄_t λ_t) (memory/rules.py ``step_factors``). The
output LayerNorm makes λ ∝ 1/‖W‖², which forgetting inflates far beyond the training context
(benchmarks/README.md "Issue 10 §3"): 'implicit_chunk' bounds the trained tiny Titans MAG's exact
4K / 8K gradient (1.1e7 / 1.4e9 → 5.9e3 / 9.1e3) at the same validation loss (4.99 against 5.04).
Opt-in (not the papers' step), for the deep memories with the identity or ℓq map.

``memory_grad_horizon`` (tokens, 0 = exact): truncated back-propagation through every memory
state, cut every that many tokens (a multiple of ``chunk_size``; the forward pass is unchanged).
An approximation, off in every preset (whose gates keep the exact gradient bounded at
initialisation, miras_jax/models/presets.py); a fallback if training drives the forgetting gates into
the regime where it overflows (scripts/bench_bptt.py).

``persistent_tokens`` (Titans §3.3, default 0): N_p learnable tokens prepended to every document
in each attention mixer; 'swa' layers see them through their window (MAL: ``SW-Attn(M(P || x))``),
'mag' and 'attention' layers always (MAG's "SW-Attn*"), 'mac' layers always (the segment's
context [P ‖ h ‖ S]). 'mac' takes its segment length from ``window`` (a multiple of
``chunk_size``) and needs attention_backend xla or cudnn.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from miras_jax.memory.biases import HUBER_MODES
from miras_jax.memory.retention import TARGETS
from miras_jax.memory.rules import MEMORA_FORMS, MOMENTUM_FORMS, STEP_SCALES

MIXERS = ('attention', 'swa', 'memory', 'mag', 'mac')
REMAT_POLICIES = (
  'none',
  'full',
  'dots_saveable',
  'dots_with_no_batch_dims_saveable',
  'nothing_saveable',
  'everything_saveable',
)

# Model keys that configs stored by older runs hold but LMConfig no longer has, dropped on
# loading so those run directories still evaluate and resume (``family``: never read, gone).
LEGACY_KEYS = frozenset({'family'})


@dataclasses.dataclass(frozen=True)
class LMConfig:
  name: str = 'lm'
  vocab_size: int = 256
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  n_kv_heads: int | None = None
  head_dim: int = 16
  mlp_dim: int = 192
  pattern: tuple[str, ...] = ('attention',)
  # memory mixer
  rule: str = 'moneta'
  chunk_size: int = 64
  memory_impl: str = 'auto'
  gate_rank: int = 32
  conv_size: int = 4
  eta_max: float = 1.0
  alpha_init: tuple[float, float] = (0.99, 0.999)
  huber_mode: str = 'mask'
  delta_init: float = 1.0
  channel_delta: bool = False
  memora_form: str = 'logits'
  memory_ln_eps: float = 1.0
  retention_target: str = 'zero'
  momentum_form: str = 'sum'
  step_scale: str = 'none'
  output_gate: str = 'silu'
  memory_remat_group: int = 4
  memory_grad_horizon: int = 0
  # attention mixers
  window: int = 2048
  rope_theta: float = 10_000.0
  attention_backend: str = 'xla'
  persistent_tokens: int = 0
  # model
  max_len: int = 4096
  tie_embeddings: bool = True
  norm_eps: float = 1e-6
  embed_init_std: float = 0.02
  dtype: str = 'float32'
  param_dtype: str = 'float32'
  remat: str = 'none'
  scan_layers: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'pattern', tuple(self.pattern))
    object.__setattr__(self, 'alpha_init', tuple(float(a) for a in self.alpha_init))
    lo_hi = self.alpha_init
    if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1] < 1.0:
      raise ValueError(f'alpha_init={lo_hi} must be (lo, hi) with 0 < lo <= hi < 1')
    if self.huber_mode not in HUBER_MODES:
      raise ValueError(f'unknown huber_mode {self.huber_mode!r}; choose from {HUBER_MODES}')
    if self.memora_form not in MEMORA_FORMS:
      raise ValueError(f'unknown memora_form {self.memora_form!r}; choose from {MEMORA_FORMS}')
    if self.retention_target not in TARGETS:
      raise ValueError(f'unknown retention_target {self.retention_target!r}; choose from {TARGETS}')
    if self.momentum_form not in MOMENTUM_FORMS:
      raise ValueError(
        f'unknown momentum_form {self.momentum_form!r}; choose from {MOMENTUM_FORMS}'
      )
    if self.step_scale not in STEP_SCALES:
      raise ValueError(f'unknown step_scale {self.step_scale!r}; choose from {STEP_SCALES}')
    bad = [m for m in self.pattern if m not in MIXERS]
    if bad or not self.pattern:
      raise ValueError(f'pattern {self.pattern}: unknown mixer(s) {bad}; choose from {MIXERS}')
    if self.n_layers % len(self.pattern):
      raise ValueError(
        f'n_layers={self.n_layers} is not a multiple of the pattern length '
        f'{len(self.pattern)} ({self.pattern})'
      )
    if self.memory_grad_horizon < 0 or self.memory_grad_horizon % self.chunk_size:
      raise ValueError(
        f'memory_grad_horizon={self.memory_grad_horizon} must be 0 or a '
        f'positive multiple of chunk_size={self.chunk_size}'
      )
    if self.persistent_tokens < 0:
      raise ValueError(f'persistent_tokens must be >= 0, got {self.persistent_tokens}')
    if self.persistent_tokens and not any(m != 'memory' for m in self.pattern):
      raise ValueError(
        f'persistent_tokens={self.persistent_tokens} but pattern {self.pattern} has no '
        f'attention mixer to hold them'
      )
    if self.persistent_tokens and self.attention_backend not in ('xla', 'cudnn'):
      raise ValueError(
        f'persistent_tokens={self.persistent_tokens} needs attention_backend xla or '
        f'cudnn, not {self.attention_backend!r} (the Pallas TPU kernels cannot mask '
        f'shared prefix slots)'
      )
    if self.attention_backend == 'pallas_tpu_flash' and any(
      m in ('swa', 'mag') for m in self.pattern
    ):
      raise ValueError(
        f"attention_backend 'pallas_tpu_flash' has no sliding window, which pattern "
        f"{self.pattern} needs; use 'pallas_tpu_splash' (or 'xla' / 'cudnn')"
      )
    if 'mac' in self.pattern:
      if self.window % self.chunk_size:
        raise ValueError(
          f'mac: window={self.window} (the segment length) must be a multiple of '
          f'chunk_size={self.chunk_size}'
        )
      if self.attention_backend not in ('xla', 'cudnn'):
        raise ValueError(
          f'mac needs attention_backend xla or cudnn, not {self.attention_backend!r} (its '
          f'segment mask over memory tokens is an explicit dense mask)'
        )
      if self.memory_grad_horizon:
        raise ValueError('mac does not support memory_grad_horizon (set it to 0)')
    if self.remat not in REMAT_POLICIES:
      raise ValueError(f'unknown remat policy {self.remat!r}; choose from {REMAT_POLICIES}')

  @property
  def repeats(self) -> int:
    return self.n_layers // len(self.pattern)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)

  @property
  def params_dtype(self):
    return jnp.dtype(self.param_dtype)

  @property
  def uses_memory(self) -> bool:
    return any(m in ('memory', 'mag', 'mac') for m in self.pattern)

  @classmethod
  def from_config(cls, cfg: Any) -> 'LMConfig':
    if isinstance(cfg, cls):
      return cfg
    d = cfg.to_dict() if hasattr(cfg, 'to_dict') else dict(cfg)
    d = {k: v for k, v in d.items() if k not in LEGACY_KEYS}  # old run directories' configs
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - fields)
    if unknown:
      raise ValueError(f'unknown model config key(s) {unknown}; known: {sorted(fields)}')
    if 'pattern' in d:
      d['pattern'] = tuple(d['pattern'])
    return cls(**d)

  def replace(self, **kw) -> 'LMConfig':
    return dataclasses.replace(self, **kw)
