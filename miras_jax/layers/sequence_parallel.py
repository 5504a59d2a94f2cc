"""Sequence (context) parallelism: the layers whose work crosses tokens, on a split sequence.

With ``train.mesh.sequence`` = P > 1 the trainer's rules table (train/sharding.py) maps the
logical axis ``activation_length`` to the mesh axis ``sequence``: every row's T tokens are split
into P contiguous slices, one per device along that axis. Per-token work (projections, norms,
MLPs, gates, the loss) needs nothing more: XLA's partitioner runs it on each slice. The three
kinds of work that reach across tokens run here, each under ``jax.shard_map`` (rows split as
``activation_batch``, heads as ``activation_heads``, time over ``sequence``):

* **Short causal convolutions** (kernel K): each device needs the K − 1 tokens before its slice.
  They come from the left neighbour by one ``ppermute`` (the halo; the first device receives
  zeros, which the convolution's zero padding would have given), with their segment ids, so
  the taps that would cross a document boundary stay masked.
* **Linear memories** (linear attention, RetNet, Mamba2, GLA): each device runs the configured
  chunked implementation on its slice from a zero state (W_0 when a document starts at its
  first token), and the slices' affine state maps are composed across devices by the
  associative state combine of pallas_kernels/linear_memory/state_passing.py
  (``pass_state_across``; Mamba2 / SSD state passing, Dao & Gu 2024 §6; GLA, Yang et al. 2024
  §4): an all-gather of one [dk] decay and one [dk, dv] state per (row, head) and device, a
  log-depth scan, and each device adds the read of its true start state to its outputs. Resets
  come from the *global* segment ids, so a document starting on a slice boundary (or anywhere
  in a slice) cuts the carried state exactly. Exact: the same sums in another order.
* **Delta rules** (DeltaNet, Gated DeltaNet, Longhorn): the slice's state map S ↦ A S + U has a
  full [dk, dk] multiplier A = Π α_t (I − β_t k_t k_tᵀ) (Yang et al. 2024, "Parallelizing Linear
  Transformers with the Delta Rule", §3). Each device runs the configured implementation once
  on its slice with the value width widened to dv + dk (values [v | 0], start [0 | I], W_0
  [W_0 | 0]): the first dv columns are the run from a zero start (y0, U), the last dk the
  homogeneous run from the identity (A, and r_t = A_tᵀ q_t), sharing the WY solve. The maps are
  composed across devices by pallas_kernels/delta_rule/state_passing.py (``pass_state_across``:
  an all-gather of one [dk, dk + dv] map per (row, head) and device, a log-depth scan of
  (A₂ A₁, A₂ U₁ + U₂)) and each device adds y_t += S_dᵀ r_t for its true start state S_d. A
  reset zeroes A and r from the reset on, so resets come from the global segment ids as above.
  Cost: one local run at width dv + dk (≈ 2x the width-dependent work at dk = dv; the solve is
  shared) instead of dv, plus a [T, dk] x [dk, dv] read; no second pass. Exact.
* **Attention**: all-gather of K / V (and their segment ids) over ``sequence``; each device's
  queries keep their global positions (slice offset + local index), so the causal, window and
  document masks are the single-device ones. This is MaxText's context parallelism
  (AI-Hypercomputer/maxtext getting_started/Sharding.md, "context parallelism"; its
  attention_op.py all-gathers K/V over the context axis). It holds the whole row's K / V on
  every device: ring attention (Liu et al. 2023), which passes K / V blocks around the ring
  with an online softmax, is the memory-lean alternative and is not implemented. The dense-mask
  backends ('xla', 'cudnn') do it; the Pallas TPU kernels refuse at startup.

Memories without an associative state combine cannot be split this way: the deep (MLP)
memories (Titans, Moneta, Yaad, Memora, TTT-Linear / TTT-MLP) update a non-linear state.
``check_model`` refuses them at startup with one line, and the layers raise the same line if
they meet a split sequence anyway.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from miras_jax.layers.partitioning import mesh_axes_dividing

AXIS = 'sequence'
CP_ATTENTION_BACKENDS = ('xla', 'cudnn')


class SequenceParallelError(ValueError):
  """The model cannot run on a split sequence."""


def axis_for(T: int):
  """The mesh axis a length-``T`` sequence is split over under the current mesh and rules, or
  None when it stays whole (no mesh, no such axis, size 1, or the axis does not divide T)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or AXIS not in mesh.axis_names or mesh.shape[AXIS] == 1:
    return None
  import flax.linen as nn  # pylint: disable=import-outside-toplevel

  if nn.logical_to_mesh_axes(('activation_length',))[0] != AXIS:
    return None  # rules that keep the sequence whole
  if T % mesh.shape[AXIS]:
    # Not split (e.g. one-token decoding): XLA's partitioner then runs the layer on the whole
    # sequence, exact but gathered. Training lengths are checked at startup (check_model).
    return None
  return AXIS


def _rows_heads(B: int, H: int):
  """The mesh axes splitting B rows and H heads (None where they do not divide)."""
  mesh = jax.sharding.get_abstract_mesh()
  rows = mesh_axes_dividing('activation_batch', B, mesh)
  return rows, mesh_axes_dividing('activation_heads', H, mesh)


def memory_refusal(rule) -> str | None:
  """Why ``rule`` (a MemoryRule) cannot run on a split sequence, or None when it can."""
  from pallas_kernels.memory_dispatch import kernel_for  # pylint: disable=import-outside-toplevel

  op = kernel_for(rule)
  if op in ('linear_memory', 'delta_rule'):
    return None
  kind = {
    'mlp_memory': 'a deep (MLP) memory is not a linear recurrence',
  }.get(op, 'its state update is not an affine map of the state with a known combine')
  return f'memory rule {rule.name!r} ({kind})'


def check_model(cfg, sequence: int, seq_len: int) -> None:
  """Fail with one line when ``cfg`` (an LMConfig) cannot train with ``train.mesh.sequence =
  sequence``: a memory without an associative state combine, an attention backend without a
  context-parallel form, a sequence the axis does not divide, slices shorter than the conv halo."""
  if sequence <= 1:
    return
  from miras_jax.memory import get_rule  # pylint: disable=import-outside-toplevel

  where = f'train.mesh.{AXIS}={sequence}'
  if seq_len % sequence:
    raise SequenceParallelError(f'{where}: train.seq_len={seq_len} is not divisible by it')
  kinds = set(cfg.pattern)
  if kinds & {'memory', 'mag', 'mac'}:
    if kinds & {'mag', 'mac'}:
      raise SequenceParallelError(
        f'{where}: model pattern {list(cfg.pattern)} (Titans MAG / MAC) has no sequence '
        f'parallelism; set train.mesh.{AXIS}=1'
      )
    why = memory_refusal(get_rule(cfg.rule))
    if why:
      raise SequenceParallelError(
        f'{where}: {why} has no sequence parallelism; set train.mesh.{AXIS}=1'
      )
    if cfg.memory_grad_horizon:
      raise SequenceParallelError(f'{where}: model.memory_grad_horizon must be 0')
    if seq_len // sequence < cfg.conv_size - 1:
      raise SequenceParallelError(
        f'{where}: slices of {seq_len // sequence} tokens are shorter than the conv halo '
        f'({cfg.conv_size - 1})'
      )
  if kinds & {'attention', 'swa'}:
    if cfg.attention_backend not in CP_ATTENTION_BACKENDS:
      raise SequenceParallelError(
        f'{where}: attention backend {cfg.attention_backend!r} has no context-parallel form; '
        f'use one of {CP_ATTENTION_BACKENDS}'
      )


# ------------------------------------------------------------------------------------------
# Short causal convolution with a halo.


def causal_conv(conv, x, kernel, bias, segment_ids, dtype, axis):
  """``conv(x, kernel, bias, segment_ids, dtype)`` (layers/conv.py ``causal_depthwise_conv``,
  x [B, T, C]) with T split over ``axis``: each slice is extended by the K − 1 tokens before it."""
  B, T, C = x.shape
  n = kernel.shape[0] - 1
  mesh = jax.sharding.get_abstract_mesh()
  rows, _ = _rows_heads(B, 1)
  chans = mesh_axes_dividing('activation_heads', C, mesh)
  size = mesh.shape[axis]
  if n > T // size:
    raise SequenceParallelError(f'conv halo {n} exceeds the {T // size} tokens per slice')
  to_right = [(i, i + 1) for i in range(size - 1)]  # device 0 receives zeros

  def halo(z):
    return jax.lax.ppermute(z[:, z.shape[1] - n :], axis, to_right)

  def body(x, kernel, bias, seg):
    if n == 0:
      return conv(x, kernel, bias, seg, dtype)
    xx = jnp.concatenate([halo(x), x], axis=1)
    ss = None if seg is None else jnp.concatenate([halo(seg), seg], axis=1)
    return conv(xx, kernel, bias, ss, dtype)[:, n:]

  x_spec = P(rows, axis, chans)
  seg_spec = None if segment_ids is None else P(rows, axis)
  b_spec = None if bias is None else P(chans)
  return jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(x_spec, P(None, chans), b_spec, seg_spec),
    out_specs=x_spec,
    check_vma=False,
  )(x, kernel, bias, segment_ids)


# ------------------------------------------------------------------------------------------
# Linear memories and delta rules: local chunked run + associative state combine across devices.


def linear_memory(rule, q, k, v, gates, *, w0, outer, segment_ids, axis, chunk_size, local_forward):
  """The memory over a split sequence: (y [B, H, T, dv], final state dict of the whole row).

  q, k [B, H, T, dk], v [B, H, T, dv], gates {name: [B, H, T(, c)]}; w0 / outer per head [H, …].
  ``local_forward(rule, q, k, v, gates, w0=, outer=, state=, segment_ids=)`` is the configured
  single-device implementation (memory_forward), run on each slice. Only rules that
  ``memory_refusal`` accepts (state = {'A': ([B, H, dv, dk],), 'Wg', 'pos'}, identity read): the
  dot-product linear memories (diagonal-decay combine) and the delta rules (widened run, [dk, dk]
  combine; module doc)."""
  from miras_jax.memory import common  # pylint: disable=import-outside-toplevel
  from miras_jax.memory.rules import init_state, prepare_gates  # pylint: disable=import-outside-toplevel
  from pallas_kernels.delta_rule import state_passing as delta_sp  # pylint: disable=import-outside-toplevel
  from pallas_kernels.linear_memory.state_passing import (  # pylint: disable=import-outside-toplevel
    pass_state_across,
  )
  from pallas_kernels.memory_dispatch import kernel_for  # pylint: disable=import-outside-toplevel

  why = memory_refusal(rule)
  if why:
    raise SequenceParallelError(f'mesh axis {axis!r} splits the sequence, but {why} cannot')
  B, H, T, _ = q.shape
  mesh = jax.sharding.get_abstract_mesh()
  rows, heads = _rows_heads(B, H)
  # Resets from the *global* segment ids (the one at a slice's first token included).
  reset = None
  if segment_ids is not None:
    reset = common.resets_from_segments(segment_ids, (B, 1, T))[:, 0]  # [B, T]
  names = sorted(gates)
  delta = kernel_for(rule) == 'delta_rule'

  def start_of(fresh, reset):
    """The slice's own run starts from zero, or from W_0 when a document starts at its first
    token (the local segment ids cannot see that reset)."""
    start = jax.tree.map(jnp.zeros_like, fresh)
    if reset is None:
      return start
    new_doc = reset[:, 0] > 0  # [B]
    return jax.tree.map(
      lambda f, z: jnp.where(new_doc.reshape((-1,) + (1,) * (f.ndim - 1)), f, z), fresh, start
    )

  def delta_body(q, k, v, g, w0, outer, seg, reset):
    # One local run with the value width widened to dv + dk gives the slice's map (A, U) and the
    # read coefficients r_t = A_tᵀ q_t (pallas_kernels/delta_rule/state_passing.py). Built here
    # in the memory's A layout [dv, dk] = Sᵀ: widening S's dv columns is widening A's rows.
    dv, dk = v.shape[-1], k.shape[-1]
    (w,) = w0  # [H, dv, dk]
    w2 = (jnp.concatenate([w, jnp.zeros(w.shape[:-2] + (dk, dk), w.dtype)], axis=-2),)
    fresh2 = init_state(rule, w2, q.shape[0])  # [W_0 | 0]ᵀ; 'A', 'Wg' [B, H, dv + dk, dk]
    start = start_of(fresh2, reset)
    eye = jnp.broadcast_to(jnp.eye(dk, dtype=jnp.float32), q.shape[:2] + (dk, dk))
    cont = jnp.ones(q.shape[:1], bool) if reset is None else reset[:, 0] == 0
    eye = jnp.where(cont[:, None, None, None], eye, 0.0)  # [0 | I]ᵀ, or [W_0 | 0]ᵀ at a doc start
    a2 = jnp.concatenate([start['A'][0][..., :dv, :], eye], axis=-2)
    start = dict(start, A=(a2,), Wg=(a2,))
    v2 = jnp.concatenate([v, jnp.zeros(v.shape[:-1] + (dk,), v.dtype)], axis=-1)
    y2, st = local_forward(rule, q, k, v2, g, w0=w2, outer=outer, state=start, segment_ids=seg)
    y0, U, r, A = delta_sp.split(y2, jnp.swapaxes(st['A'][0], -1, -2), dv)
    h0 = jnp.swapaxes(init_state(rule, tuple(w0), q.shape[0])['A'][0], -1, -2)  # row starts at W_0
    y, end = delta_sp.pass_state_across(y0, U, r, A, h0, axis_name=axis)
    return y, jnp.swapaxes(end, -1, -2)

  def body(q, k, v, gate_list, w0, outer, seg, reset):
    f32 = jnp.float32
    g = dict(zip(names, gate_list))
    if delta:
      return delta_body(q, k, v, g, w0, outer, seg, reset)
    fresh = init_state(rule, tuple(w0), q.shape[0])  # [B, H, ...]
    start = start_of(fresh, reset)
    y0, st = local_forward(rule, q, k, v, g, w0=w0, outer=outer, state=start, segment_ids=seg)
    U = jnp.swapaxes(st['A'][0], -1, -2)  # [B, H, dk, dv], the kernels' layout
    h0 = jnp.swapaxes(fresh['A'][0], -1, -2)  # the row starts from W_0
    la = prepare_gates(rule, g, q.astype(f32), k.astype(f32), v.astype(f32))[1]
    la = la if rule.retention.decay != 'none' else None
    r = None if reset is None else jnp.broadcast_to(reset[:, None], q.shape[:3])
    y, end = pass_state_across(q, y0, U, la, r, h0, axis_name=axis)
    a = jnp.swapaxes(end, -1, -2)
    return y, a

  tok = P(rows, heads, axis)
  gate_specs = [tok] * len(names)
  per_head = P(heads)
  y, a = jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(
      tok,
      tok,
      tok,
      gate_specs,
      jax.tree.map(lambda _: per_head, tuple(w0)),
      jax.tree.map(lambda _: per_head, outer),
      None if segment_ids is None else P(rows, axis),
      None if reset is None else P(rows, axis),
    ),
    out_specs=(tok, P(rows, heads)),
    check_vma=False,
  )(q, k, v, [gates[n] for n in names], tuple(w0), outer, segment_ids, reset)
  # As pallas_kernels/memory_dispatch.py: the gradient point of a dot-product memory is never
  # read, so the exact memory A stands for it; pos is the row's place in its chunk grid.
  # The delta rules' state is exact at any chunk grid (chunked.py, form 'wy'): pos stays 0.
  pos = jnp.full((B, H), 0 if delta else T % int(chunk_size), jnp.int32)
  return y, {'A': (a,), 'Wg': (a,), 'pos': pos}


# ------------------------------------------------------------------------------------------
# Attention: all-gather K / V over the sequence axis.


def attention(q, k, v, *, segment_ids, window_size, backend, prefix, axis):
  """Causal attention (attention_backends.causal_attention's contract: q [B, T, H, D], k, v
  [B, T, Hkv, D]) with T split over ``axis``; K / V are gathered, the mask is offset per slice."""
  from miras_jax.layers.attention_backends import (  # pylint: disable=import-outside-toplevel
    attention_mask,
    dense_masked_attention,
    prepend_prefix,
  )

  if backend not in CP_ATTENTION_BACKENDS:
    raise SequenceParallelError(
      f'mesh axis {axis!r} splits the sequence, but attention backend {backend!r} has no '
      f'context-parallel form; use one of {CP_ATTENTION_BACKENDS}'
    )
  B, T, H, _ = q.shape
  mesh = jax.sharding.get_abstract_mesh()
  rows = mesh_axes_dividing('activation_batch', B, mesh)
  heads = mesh_axes_dividing('activation_heads', H, mesh)
  kv_heads = mesh_axes_dividing('activation_kv_heads', k.shape[2], mesh)
  if heads is None or heads != kv_heads:  # keep whole GQA groups per device (mesh.on_mesh)
    heads = kv_heads = None

  def body(q, k, v, seg, prefix):
    Tl = q.shape[1]
    gather = lambda z: jax.lax.all_gather(z, axis, axis=1, tiled=True)
    kf, vf = gather(k), gather(v)
    segf = None if seg is None else gather(seg)
    q_pos = jax.lax.axis_index(axis) * Tl + jnp.arange(Tl, dtype=jnp.int32)
    q_pos = jnp.broadcast_to(q_pos, (q.shape[0], Tl))
    kv_pos = jnp.broadcast_to(jnp.arange(kf.shape[1], dtype=jnp.int32), (q.shape[0], kf.shape[1]))
    mask = attention_mask(q_pos, kv_pos, window_size, seg, segf)
    if prefix is not None:
      kf, vf, mask = prepend_prefix(prefix, kf, vf, mask)
    return dense_masked_attention(q, kf, vf, mask, backend)

  q_spec, kv_spec = P(rows, axis, heads), P(rows, axis, kv_heads)
  prefix_spec = None
  if prefix is not None:
    prefix_spec = (P(None, kv_heads), P(None, kv_heads), P(rows, axis))
  return jax.shard_map(
    body,
    mesh=mesh,
    in_specs=(
      q_spec,
      kv_spec,
      kv_spec,
      None if segment_ids is None else P(rows, axis),
      prefix_spec,
    ),
    out_specs=q_spec,
    check_vma=False,
  )(q, k, v, segment_ids, prefix)
