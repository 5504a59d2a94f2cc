"""Model presets: ``model_config(family, size) -> ml_collections.ConfigDict``.

Families (DESIGN.md §5; the mixer pattern is a config value, not a class):
  'transformer'                      Transformer++ (Llama: RoPE attention, SwiGLU, RMSNorm)
  any memory rule name               a pure memory model, every layer the Miras layer with that
                                     rule: moneta, yaad, memora, titans, gated_deltanet, deltanet,
                                     mamba2, gla, retnet, linear_attention, longhorn, ttt_linear,
                                     ttt_mlp (``miras_jax.memory.list_rules()``)
  'hybrid_<rule>'                    Samba-style: pattern ['memory', 'swa'] (memory layer, then a
                                     sliding-window attention layer, each with its MLP)
  'titans_mal'                       Titans MAL: pattern ['memory', 'swa'] with the Titans rule
  'titans_mag'                       Titans MAG: pattern ['mag'] (memory ∥ SWA, gated)
  'titans_mac'                       Titans MAC: pattern ['mac'] (segments of ``window`` tokens
                                     attend over [P ‖ memory retrieval ‖ segment]; models/mac.py)
  (the Titans hybrids carry ``persistent_tokens`` = 16 persistent-memory tokens, 4 at tiny)
Sizes: '170m' (12 × 768), '340m' (24 × 1024), '760m' (24 × 1536), '1.3b' (18 × 2048, 8 heads)
as in the papers (context 4096, vocabulary 32K), and 'tiny' (2 × 64, vocab 256) for tests.

Width choices (documented here because the papers do not print them; counts are checked in
tests/models/test_presets.py within 10 % of the nominal size):
  * attention: heads × head_dim = d_model, head_dim 64 (128 ... 256 for 1.3b's 8 heads).
  * MLP: SwiGLU. Transformer++ uses ≈ 8/3·d rounded up to a multiple of 256 for 340m/760m, and
    4·d at 170m / 1.3b (where 8/3·d gives 20 % too few parameters at the nominal depth).
  * Pure memory families replace 4·d² of attention by ≈ 5·d² (q, k, v, output gate, output) plus
    gates, convs and the per-head initial memory; their MLP is narrowed by the difference
    (``_MEMORY_MLP``) so that all families of a size have about the same count; hybrids (half
    memory, half SWA) keep the Transformer++ MLP; MAG and MAC blocks (both hold attention and a memory) use ``_MAG_MLP``.
  * embeddings: untied at 170m and 760m, tied at 340m and 1.3b (whichever fits the nominal
    count better at the papers' depth × width).
Keys (all plain values; ``LMConfig`` in miras_jax/models/config.py reads them and rejects
unknown ones): name, vocab_size, d_model, n_layers, n_heads, n_kv_heads, head_dim,
mlp_dim, pattern, rule, chunk_size, memory_impl, gate_rank, conv_size, eta_max, alpha_init,
huber_mode, delta_init, channel_delta, memora_form, memory_ln_eps, output_gate, memory_remat_group, memory_grad_horizon, window, rope_theta, attention_backend,
persistent_tokens, max_len, tie_embeddings, norm_eps, embed_init_std, dtype, param_dtype, remat,
scan_layers.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from miras_jax.memory import list_rules
from miras_jax.models.config import LMConfig

# size -> (n_layers, d_model, n_heads, mlp_dim (transformer), tie_embeddings)
SIZES = {
  'tiny': (2, 64, 4, 128, True),
  '170m': (12, 768, 16, 3072, False),
  '340m': (24, 1024, 16, 2816, True),
  '760m': (24, 1536, 16, 4096, False),
  '1.3b': (18, 2048, 8, 8192, True),
}
# Narrower MLP for memory mixers (see the module docstring): size -> mlp_dim.
_MEMORY_MLP = {'tiny': 128, '170m': 2816, '340m': 2560, '760m': 3584, '1.3b': 7680}
# MAG blocks hold a memory *and* an SWA branch: narrower still, by ≈ 4/3·d (4·d² / 3·d).
_MAG_MLP = {'tiny': 128, '170m': 1792, '340m': 1280, '760m': 1536, '1.3b': 4864}

HYBRID_PREFIX = 'hybrid_'
# Ceilings of the learning-rate gate η = eta_max · sigmoid(·) of the deep memories (the papers
# give none), a bound that holds however η is learned. The keep-rate α starts at the layer's
# default range (0.99, 0.999) for every rule: the memory's bounded LayerNorm gain (``memory_ln_eps``
# = 1, layers/miras.py) keeps the exact gradient through 4K–8K tokens bounded at those gates and
# after training (benchmarks/README.md "Back-propagation through the memory"; issue 10 §3), so
# no rule needs the former hand-picked α ranges that forgot less. Yaad's Eq. 26 steps δ·sign(e)
# outside its ℓ2 region: a step whose size does not shrink with the error and whose
# linearisation has no contracting −η JᵀJ term, so it takes η ≤ 0.1 (the tiny LM's step-1
# gradient is 0.67 then, 48 at η ≤ 1); Memora steps on its logits with η ≤ 0.01.
# rule -> (eta_max, alpha_init).
_GATES = {
  # Titans' explosion at the default α (~3e5 at 1K tokens, head dim 16) does not come from the
  # LayerNorm gain (the same with ε = 1e-6 and 1): it keeps the α range that forgets less.
  'titans': (1.0, (0.999, 0.9999)),
  'yaad': (0.1, LMConfig.alpha_init),
  'memora': (0.01, LMConfig.alpha_init),
}


def families() -> list[str]:
  rules = list_rules()
  return (
    ['transformer']
    + rules
    + [HYBRID_PREFIX + r for r in rules]
    + ['titans_mag', 'titans_mal', 'titans_mac']
  )


def _family_spec(family: str) -> tuple[list[str], str]:
  """(pattern, rule) of a family."""
  rules = list_rules()
  if family == 'transformer':
    return ['attention'], 'moneta'
  if family in rules:
    return ['memory'], family
  if family.startswith(HYBRID_PREFIX) and family[len(HYBRID_PREFIX) :] in rules:
    return ['memory', 'swa'], family[len(HYBRID_PREFIX) :]
  if family == 'titans_mal':
    return ['memory', 'swa'], 'titans'
  if family == 'titans_mag':
    return ['mag'], 'titans'
  if family == 'titans_mac':
    return ['mac'], 'titans'
  raise ValueError(f'unknown model family {family!r}; known: {", ".join(families())}')


def model_config(family: str, size: str) -> ConfigDict:
  """The preset of ``family`` at ``size`` (see the module docstring)."""
  if size not in SIZES:
    raise ValueError(f'unknown size {size!r}; known: {", ".join(SIZES)}')
  pattern, rule = _family_spec(family)
  n_layers, d, heads, mlp, tie = SIZES[size]
  tiny = size == 'tiny'
  if pattern in (['mag'], ['mac']):
    mlp = _MAG_MLP[size]
  elif pattern == ['memory']:
    mlp = _MEMORY_MLP[size]
  c = ConfigDict()
  c.name = LMConfig.name
  c.vocab_size = 256 if tiny else 32000
  c.d_model = d
  c.n_layers = n_layers
  c.n_heads = heads
  c.n_kv_heads = None
  c.head_dim = d // heads
  c.mlp_dim = mlp
  c.pattern = list(pattern)
  c.rule = rule
  c.chunk_size = 8 if tiny else LMConfig.chunk_size
  c.memory_impl = LMConfig.memory_impl
  c.gate_rank = 8 if tiny else LMConfig.gate_rank
  c.conv_size = LMConfig.conv_size
  # Gate initialisation (the papers give none; see _GATES): η's ceiling and α's range.
  c.eta_max, c.alpha_init = _GATES.get(rule, (LMConfig.eta_max, LMConfig.alpha_init))
  # Rule variants (models/config.py): the papers' printed rules by default.
  c.huber_mode = LMConfig.huber_mode
  c.delta_init = LMConfig.delta_init
  c.channel_delta = LMConfig.channel_delta
  c.memora_form = LMConfig.memora_form
  # Titans' 4K growth does not come from the LayerNorm gain, and ε = 1 costs Titans MAG 0.19 of
  # validation loss in the tiny run (benchmarks/README.md "Issue 10 §3"): it keeps the usual ε.
  c.memory_ln_eps = 1e-6 if rule == 'titans' else LMConfig.memory_ln_eps
  # What forgetting decays towards (memory/retention.py ``target``): every preset keeps the
  # papers' decay towards zero. 'initial' (towards the learned W_0) bounds Moneta's exact 4K–8K
  # gradient after training (4.3e11 → 4.8e3 at 4K, benchmarks/README.md "Issue 10 §3") at equal
  # validation loss, but it is not the printed rule (Miras Eq. 24–25), so it is opt-in:
  # --config.model.retention_target=initial.
  c.retention_target = LMConfig.retention_target
  c.momentum_form = LMConfig.momentum_form
  c.step_scale = LMConfig.step_scale  # the papers' step ('implicit': opt-in, memory/rules.py)
  c.output_gate = LMConfig.output_gate
  c.memory_remat_group = LMConfig.memory_remat_group
  c.memory_grad_horizon = LMConfig.memory_grad_horizon  # 0: exact gradients (opt-in truncation)
  c.window = 16 if tiny else LMConfig.window
  c.rope_theta = LMConfig.rope_theta
  c.attention_backend = LMConfig.attention_backend
  # Titans' persistent memory (§3.3) in the Titans hybrids only; the paper does not print N_p.
  c.persistent_tokens = (4 if tiny else 16) if family.startswith('titans_') else 0
  c.max_len = 128 if tiny else LMConfig.max_len
  c.tie_embeddings = tie
  c.norm_eps = LMConfig.norm_eps
  c.embed_init_std = LMConfig.embed_init_std
  c.dtype = LMConfig.dtype
  c.param_dtype = LMConfig.param_dtype
  c.remat = 'none' if tiny else 'dots_with_no_batch_dims_saveable'
  c.scan_layers = LMConfig.scan_layers
  return c


def parse_arg(arg: str | None, default_size: str = 'tiny') -> tuple[str, str]:
  """``"moneta,170m"`` -> ("moneta", "170m"); ``"moneta"`` -> ("moneta", default_size)."""
  parts = [p.strip() for p in (arg or 'moneta').split(',') if p.strip()]
  if not 1 <= len(parts) <= 2:
    raise ValueError(f"config arg {arg!r}: expected '<family>[,<size>]'")
  return parts[0], parts[1] if len(parts) == 2 else default_size


def get_config(arg: str | None = None) -> ConfigDict:
  """``miras_jax/models/presets.py:moneta,340m`` → the model section alone."""
  return model_config(*parse_arg(arg))
