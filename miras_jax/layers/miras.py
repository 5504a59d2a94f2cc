"""The Miras layer: a multi-head associative memory learned at test time (DESIGN.md §5).

Per the papers (Miras, arXiv 2504.13173 §5 "Architecture backbone"; Titans, arXiv 2501.00663
§4.4 "Architectural details"), for ``x [B, T, E]``:

    q, k, v = W_q x, W_k x, W_v x                                  [B, T, H, D]
    q, k, v = SiLU(conv4(q)), SiLU(conv4(k)), SiLU(conv4(v))        depthwise causal, kernel 4
    q, k    = q / ‖q‖, k / ‖k‖                                     per head
    gates   = low-rank projections of x (rank ``gate_rank``)       η, α, μ, δ (below)
    y       = memory(q, k, v, gates)                               one memory per head
    out     = W_o [RMSNorm_head(y) ⊙ act(W_g x)]                   act = SiLU (default) | sigmoid

Gates (η, α, μ, δ from low-rank projections), the initial memory W_0 and the MLP memory's
LayerNorm (ε = ``ln_eps`` = 1: a gain bounded by 1): layers/miras_params.py.

Decoding: ``init_cache(batch)`` → ``{'conv_q', 'conv_k', 'conv_v': [B, K−1, H·D],
'memory': state [B, H, ...], 'started': bool}`` and ``decode(x [B, T_new, E], cache)``, which
continues the conv windows and the memory state exactly (``memory_step`` for one token,
``memory_forward`` with the carried state for several), so a prefill followed by one-token steps
gives the outputs of one full pass. ``init_cache`` needs no parameters: the memory's fresh state
depends on the learned ``W_0``, so it is filled in at the first ``decode`` (``started``).

Inner-loss logging (DESIGN §6, the memory's health check): when the ``'intermediates'``
collection is mutable, ``__call__`` sows per-layer scalars
    ``inner_loss_before`` = mean over (batch, head, last ≤ chunk_size tokens) of ‖M(W_0; k) − v‖²
    ``inner_loss_after``  = the same with the memory after the sequence, M(φ(A_T); k)
— a cheap proxy for "the memory learned the recent pairs": it is evaluated on the last chunk
only (cost O(chunk) per head), always with the ℓ2 error whatever the rule's attentional bias, and
in packed rows the last chunk may straddle a document boundary.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from miras_jax.layers import partitioning, sequence_parallel
from miras_jax.layers.conv import CausalDepthwiseConv1D, init_conv_state
from miras_jax.layers.dense import DenseND, HeadsToEmbed
from miras_jax.layers.miras_params import (  # noqa: F401 (retnet_log_gamma: re-exported for tests)
  gate_specs,
  gate_values,
  memory_params,
  retnet_log_gamma,
  to_bht,
  w0_initializer,
)
from miras_jax.layers.norms import RMSNorm, l2_normalize
from miras_jax.memory import get_rule, init_state, memory_forward, memory_step, with_options
from miras_jax.models.config import LMConfig

Dtype = Any
Initializer = Callable[..., jax.Array]

OUTPUT_GATES = ('silu', 'sigmoid')

# Logical names of the memory's leading [B, H, ...] dimensions (train/sharding.py's rules table),
# and of its per-token tensors [B, H, T, ...] (T split when the mesh splits the sequence).
_BATCH_HEADS = ('activation_batch', 'activation_heads')
_TOKENS = _BATCH_HEADS + ('activation_length',)


class MirasLayer(nn.Module):
  """Multi-head test-time memory mixer, ``[B, T, E] -> [B, T, E]``.

  Attributes:
      rule: a memory rule name (``miras_jax.memory.list_rules()``).
      num_heads: H, one memory per head.
      head_dim: D (= d_k = d_v).
      chunk_size: b of the chunk-parallel training form (also the semantics, see memory/).
      implementation: 'auto' | 'reference' | 'xla' (memory_forward).
      gate_rank: rank of the low-rank gate projections (Miras: 32 or 64).
      conv_size: kernel of the depthwise causal conv (4).
      eta_max, eta_bias_init: η = eta_max · sigmoid(· + b), b initialised to eta_bias_init.
      alpha_init: (lo, hi) range of the keep factor α at initialisation, spread over heads.
      mu_init: momentum decay μ at initialisation.
      delta_init: Huber threshold δ at initialisation.
      channel_delta: δ per value channel ([B, H, T, D]) instead of per head.
      huber_mode: Yaad's bias variant, 'mask' (Eq. 26) | 'clip' (Eq. 14) | 'norm' (Eq. 15).
      memora_form: Memora's chunked form, 'logits' | 'lag' (Eq. 30–32; memory/retention.py).
      simplex_w0_std: std of the logits of Memora's initial memory W_0 = c · softmax(raw).
      ln_eps: ε of the MLP memory's output LayerNorm; 1 bounds its gain by 1
          (layers/miras_params.py; 1e-6 is the usual, unbounded choice).
      retention_target: what the scalar decay forgets towards, 'zero' (the papers) or
          'initial' (the learned W_0; memory/retention.py ``target``).
      momentum_form: 'sum' (Titans eq. 10: S_t = μ_t S_{t−1} − θ_t ∇ℓ) or 'ema' (the step
          θ_t (1 − μ_t): an average of the gradients; layers/miras_params.py).
      step_scale: the deep memory's inner step, 'none' (the papers) or 'implicit' /
          'implicit_chunk' (bounded by the inner loss's curvature along it; memory/rules.py
          ``step_factors``).
      output_gate: 'silu' (default, as Gated DeltaNet / FLA) or 'sigmoid'.
      remat_group: chunks per ``jax.checkpoint`` in the chunked memory.
      grad_horizon: 0 for exact gradients; else truncated back-propagation through the memory
          state, cut every ``grad_horizon`` tokens (a multiple of ``chunk_size``; forward
          unchanged; memory/common.py ``gradient_cuts``). An approximation, for the deep
          memories with forgetting whose exact gradient through thousands of tokens explodes
          (see models/config.py ``memory_grad_horizon``).
      dtype: compute dtype of the projections (None keeps the input's); the memory itself
          always runs in float32.
      param_dtype: parameter dtype.
      kernel_init: initializer of the q/k/v/gate/output kernels.
  """

  # Defaults shared with the model config are LMConfig's (their one home, models/config.py);
  # eta_bias_init, mu_init and simplex_w0_std are the layer's own.
  rule: str = LMConfig.rule
  num_heads: int = LMConfig.n_heads
  head_dim: int = LMConfig.head_dim
  chunk_size: int = LMConfig.chunk_size
  implementation: str = LMConfig.memory_impl
  gate_rank: int = LMConfig.gate_rank
  conv_size: int = LMConfig.conv_size
  eta_max: float = LMConfig.eta_max
  eta_bias_init: float = 0.0
  alpha_init: tuple[float, float] = LMConfig.alpha_init
  mu_init: float = 0.9
  delta_init: float = LMConfig.delta_init
  channel_delta: bool = LMConfig.channel_delta
  huber_mode: str = LMConfig.huber_mode
  memora_form: str = LMConfig.memora_form
  simplex_w0_std: float = 2.0
  ln_eps: float = LMConfig.memory_ln_eps
  retention_target: str = LMConfig.retention_target
  momentum_form: str = LMConfig.momentum_form
  step_scale: str = LMConfig.step_scale
  output_gate: str = LMConfig.output_gate
  remat_group: int = LMConfig.memory_remat_group
  grad_horizon: int = LMConfig.memory_grad_horizon
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32
  kernel_init: Initializer = nn.initializers.lecun_normal()

  # ------------------------------------------------------------------------------------------
  # Parameters.

  @property
  def memory_rule(self):
    return with_options(
      get_rule(self.rule),
      huber_mode=self.huber_mode,
      memora_form=self.memora_form,
      ln_eps=self.ln_eps,
      retention_target=self.retention_target,
      step_scale=self.step_scale,
    )

  def _dense(self, features, axes, axis=-1):
    return DenseND(
      features=features,
      axis=axis,
      kernel_axes=axes,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_init=self.kernel_init,
    )

  def setup(self):
    if self.output_gate not in OUTPUT_GATES:
      raise ValueError(f'unknown output_gate {self.output_gate!r}; choose {OUTPUT_GATES}')
    rule = self.memory_rule
    H, D = self.num_heads, self.head_dim
    proj = ('embed', 'heads', 'head_dim')
    self.q_proj = self._dense((H, D), proj)
    self.k_proj = self._dense((H, D), proj)
    self.v_proj = self._dense((H, D), proj)
    conv = lambda: CausalDepthwiseConv1D(
      kernel_size=self.conv_size,
      dtype=self.dtype,
      param_dtype=self.param_dtype,
      kernel_axes=(None, 'heads'),
    )
    self.conv_q, self.conv_k, self.conv_v = conv(), conv(), conv()
    self.g_proj = self._dense((H, D), proj)
    self.o_proj = HeadsToEmbed(dtype=self.dtype, param_dtype=self.param_dtype)
    self.out_norm = RMSNorm(
      dtype=jnp.float32, param_dtype=self.param_dtype, scale_axis_name='head_dim'
    )

    # Low-rank gates: x -> [rank] -> [H] (or [H, c]) + bias.
    specs = gate_specs(
      rule,
      H,
      D,
      eta_bias_init=self.eta_bias_init,
      alpha_init=self.alpha_init,
      mu_init=self.mu_init,
      delta_init=self.delta_init,
      channel_delta=self.channel_delta,
    )
    self._gate_specs = {n: c for n, (c, _) in specs.items()}
    downs, ups, biases = {}, {}, {}
    for n, (c, b0) in specs.items():
      downs[n] = self._dense(self.gate_rank, ('embed', None))
      if c is None:
        ups[n] = self._dense((H,), (None, 'heads'))
        axes = ('heads',)
      else:
        ups[n] = self._dense((H, c), (None, 'heads', 'head_dim'))
        axes = ('heads', 'head_dim')
      biases[n] = self.param(
        f'gate_bias_{n}',
        nn.with_logical_partitioning(lambda key, shape, dtype, b0=b0: b0.astype(dtype), axes),
        b0.shape,
        self.param_dtype,
      )
    self.gate_down, self.gate_up, self.gate_bias = downs, ups, biases

    # Outer-loop memory parameters: W_0 per head and the architecture's outer params.
    arch = rule.arch
    shapes = tuple(arch.shapes(D, D))
    self.w0_raw = [
      self.param(
        f'w0_{l}',
        nn.with_logical_partitioning(
          w0_initializer(rule, l, H, D, self.simplex_w0_std), ('heads', None, None)
        ),
        (H,) + tuple(s),
        self.param_dtype,
      )
      for l, s in enumerate(shapes)
    ]
    outer0 = arch.init_outer(D)
    self.outer = {
      n: self.param(
        f'outer_{n}',
        nn.with_logical_partitioning(
          lambda key, shape, dtype, v=v: jnp.broadcast_to(v, shape).astype(dtype),
          ('heads', 'head_dim'),
        ),
        (H, D),
        self.param_dtype,
      )
      for n, v in outer0.items()
    }

  # ------------------------------------------------------------------------------------------
  # Pieces shared by __call__ and decode.

  def _memory_params(self):
    return memory_params(self.memory_rule, self.w0_raw, self.outer)

  def _gates(self, x):
    """Gates as the memory core wants them: dict of float32 [B, H, T(, c)]."""

    def lowrank(n):
      z = self.gate_up[n](self.gate_down[n](x)).astype(jnp.float32)
      return z + jnp.asarray(self.gate_bias[n], jnp.float32)

    shape = (*x.shape[:2], self.num_heads)
    return gate_values(
      self.memory_rule, lowrank, self._gate_specs, self.eta_max, shape, self.momentum_form
    )

  def _project(self, x):
    """Raw q, k, v projections, flattened to [B, T, H·D] for the convs."""
    B, T = x.shape[:2]
    flat = lambda z: z.reshape(B, T, self.num_heads * self.head_dim)
    return flat(self.q_proj(x)), flat(self.k_proj(x)), flat(self.v_proj(x))

  def _post_conv(self, q, k, v):
    """SiLU, split heads, ℓ2-normalise q and k; returns [B, H, T, D] each."""
    B, T = q.shape[:2]
    heads = lambda z: to_bht(nn.silu(z).reshape(B, T, self.num_heads, self.head_dim))
    q, k, v = heads(q), heads(k), heads(v)
    return l2_normalize(q), l2_normalize(k), v

  def _output(self, x, y):
    """y [B, H, T, D] -> out [B, T, E]: per-head RMSNorm, gate from x, projection."""
    y = self.out_norm(to_bht(y).astype(jnp.float32))  # [B, T, H, D]
    g = self.g_proj(x).astype(jnp.float32)
    g = nn.silu(g) if self.output_gate == 'silu' else jax.nn.sigmoid(g)
    out_dtype = x.dtype if self.dtype is None else self.dtype
    return self.o_proj((y * g).astype(out_dtype), x.shape[-1])

  def _memory(self, q, k, v, gates, state=None, segment_ids=None):
    rule = self.memory_rule
    w0, outer = self._memory_params()
    # Each (row, head) memory is independent, so its inputs, its state (W_0 broadcast to
    # [B, H, ...], every chunk's state in the scan carry, the final state) and its output stay
    # split over batch x heads on a mesh: pinned here rather than left to propagation, which
    # could otherwise gather a state per chunk (tests/layers/test_miras_mesh.py).
    q, k, v = (partitioning.constrain(z, _TOKENS) for z in (q, k, v))
    gates = {n: partitioning.constrain(g, _TOKENS) for n, g in gates.items()}
    if state is not None:
      state = jax.tree.map(lambda s: partitioning.constrain(s, _BATCH_HEADS), state)
    forward = functools.partial(
      memory_forward,
      chunk_size=self.chunk_size,
      implementation=self.implementation,
      remat_group=self.remat_group,
    )
    axis = sequence_parallel.axis_for(q.shape[2]) if state is None else None
    if axis:  # the sequence is split over a mesh axis (layers/sequence_parallel.py)
      if self.grad_horizon:
        raise sequence_parallel.SequenceParallelError('memory_grad_horizon needs a whole sequence')
      y, state = sequence_parallel.linear_memory(
        rule,
        q,
        k,
        v,
        gates,
        w0=w0,
        outer=outer,
        segment_ids=segment_ids,
        axis=axis,
        chunk_size=self.chunk_size,
        local_forward=forward,
      )
    else:
      y, state = forward(
        rule,
        q,
        k,
        v,
        gates,
        w0=w0,
        outer=outer,
        state=state,
        segment_ids=segment_ids,
        # decoding continues a carried state: no gradients wanted there
        grad_horizon=self.grad_horizon if state is None else None,
      )
    state = jax.tree.map(lambda s: partitioning.constrain(s, _BATCH_HEADS), state)
    return partitioning.constrain(y, _TOKENS), state

  def _sow_inner_loss(self, k, v, state):
    """Sow the ℓ2 inner-loss proxy (module docstring) on the last ≤ chunk_size tokens."""
    rule = self.memory_rule
    arch, ret = rule.arch, rule.retention
    n = min(k.shape[2], self.chunk_size)
    k = jax.lax.stop_gradient(k[:, :, -n:].astype(jnp.float32))
    v = jax.lax.stop_gradient(v[:, :, -n:].astype(jnp.float32))
    w0, outer = jax.lax.stop_gradient(self._memory_params())
    w_end = jax.tree.map(
      jax.lax.stop_gradient, tuple(jax.vmap(jax.vmap(ret.phi))(a) for a in state['A'])
    )

    def err(w, kk, vv, o):  # one (batch, head): mean over tokens of ‖M(W; k) − v‖²
      return jnp.mean(jnp.sum(jnp.square(arch.apply(w, kk, o) - vv), axis=-1))

    per_head = jax.vmap(err, in_axes=(0, 0, 0, 0))
    before = jax.vmap(per_head, in_axes=(None, 0, 0, None))(w0, k, v, outer)
    after = jax.vmap(per_head, in_axes=(0, 0, 0, None))(w_end, k, v, outer)
    self.sow('intermediates', 'inner_loss_before', jnp.mean(before))
    self.sow('intermediates', 'inner_loss_after', jnp.mean(after))

  # ------------------------------------------------------------------------------------------
  # Public API.

  def __call__(self, x: jax.Array, segment_ids: jax.Array | None = None) -> jax.Array:
    """Whole sequences (training, evaluation).

    Args:
        x: ``[B, T, E]``.
        segment_ids: integer ``[B, T]`` for packed rows: the convs do not reach across a
            document boundary and every memory restarts from W_0 at a document start
            (DESIGN §5). Chunk semantics follow the row's chunk grid (memory/chunked.py).

    Returns:
        ``[B, T, E]`` in ``dtype`` (or x's dtype).
    """
    qr, kr, vr = self._project(x)
    q, k, v = self._post_conv(
      self.conv_q(qr, segment_ids), self.conv_k(kr, segment_ids), self.conv_v(vr, segment_ids)
    )
    y, state = self._memory(q, k, v, self._gates(x), segment_ids=segment_ids)
    if self.is_mutable_collection('intermediates'):
      self._sow_inner_loss(k, v, state)
    return self._output(x, y)

  def init_cache(self, batch: int, dtype: Dtype = jnp.float32) -> dict:
    """The decoding cache of a fresh document (no parameters needed; callable unbound).

    ``{'conv_q', 'conv_k', 'conv_v': zeros [B, K−1, H·D], 'memory': placeholder state
    [B, H, ...] (replaced by the fresh state at the first decode), 'started': False}``.
    """
    rule = self.memory_rule
    H, D = self.num_heads, self.head_dim
    w0 = tuple(jax.ShapeDtypeStruct((H,) + tuple(s), jnp.float32) for s in rule.arch.shapes(D, D))
    shapes = jax.eval_shape(lambda w: init_state(rule, w, batch), w0)
    conv = init_conv_state(batch, self.conv_size, H * D, dtype)
    return {
      'conv_q': conv,
      'conv_k': conv,
      'conv_v': conv,
      'memory': jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes),
      'started': jnp.zeros((), bool),
    }

  def decode(self, x: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """Continue a sequence by ``T_new`` tokens (a prefill, or one-token steps).

    Args:
        x: ``[B, T_new, E]``, the next tokens of every row (one document per row).
        cache: from `init_cache` or a previous `decode`.

    Returns:
        ``(y [B, T_new, E], new_cache)``; exactly the outputs ``__call__`` gives these
        tokens in one pass over the whole sequence.
    """
    rule = self.memory_rule
    B, T = x.shape[:2]
    qr, kr, vr = self._project(x)
    qc, cq = self.conv_q.extend(qr, cache['conv_q'])
    kc, ck = self.conv_k.extend(kr, cache['conv_k'])
    vc, cv = self.conv_v.extend(vr, cache['conv_v'])
    q, k, v = self._post_conv(qc, kc, vc)
    gates = self._gates(x)
    w0, outer = self._memory_params()
    fresh = init_state(rule, w0, B)
    state = jax.tree.map(lambda c, f: jnp.where(cache['started'], c, f), cache['memory'], fresh)
    if T == 1:
      y, state = memory_step(
        rule,
        q[:, :, 0],
        k[:, :, 0],
        v[:, :, 0],
        {n: g[:, :, 0] for n, g in gates.items()},
        w0=w0,
        outer=outer,
        state=state,
        chunk_size=self.chunk_size,
      )
      y = y[:, :, None]
    else:
      y, state = self._memory(q, k, v, gates, state=state)
    new = {'conv_q': cq, 'conv_k': ck, 'conv_v': cv, 'memory': state, 'started': jnp.ones((), bool)}
    return self._output(x, y), new
