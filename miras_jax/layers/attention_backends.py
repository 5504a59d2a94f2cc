"""Causal self-attention cores, one function per backend, one dispatcher.

All take ``q [B, T, H, D]``, ``k, v [B, T, Hkv, D]`` (``Hkv`` divides ``H``; query head ``h``
reads kv head ``h // (H // Hkv)``, the grouping of GQA, Ainslie et al. 2023, and of
``jax.nn.dot_product_attention`` and splash attention), already rotated by RoPE, and return
``[B, T, H, D]`` in ``q.dtype``. Scores are scaled by ``1 / sqrt(D)``. Every backend computes the
same mask: token ``t`` sees token ``s`` iff

    s <= t                                  (causal)
    and t - s < window_size                 (sliding window, if set: s in t-w+1 .. t)
    and segment_ids[t] == segment_ids[s]    (packed documents, if given)

Backends (``backend=``):
  ``'xla'``               einsum + float32 softmax; the reference the others are tested against.
  ``'cudnn'``             ``jax.nn.dot_product_attention``: ``implementation='cudnn'`` on GPU (needs
                          bf16/fp16 inputs), ``None`` (its XLA path) elsewhere. Segment ids become a
                          dense ``[B, 1, T, T]`` boolean mask (cuDNN adds it as a bias).
  ``'pallas_tpu_flash'``  ``jax.experimental.pallas.ops.tpu.flash_attention``. No sliding window
                          (the kernel has no local mask; raises NotImplementedError). KV heads are
                          repeated to ``H`` (the kernel has no GQA).
  ``'pallas_tpu_splash'`` ``jax.experimental.pallas.ops.tpu.splash_attention`` (CausalMask or
                          LocalMask, native GQA, segment ids), vmapped over the batch.

The Pallas TPU kernels need sequence blocks that are multiples of 128, so ``T`` is padded up to a
multiple of 128. Padded tokens get their own segment id (or, without segment ids, sit after every
real token, where the causal mask hides them), so they never change a real token's output; their
rows are sliced off. Off TPU the kernels run interpreted (slow; for tests): flash under
``pltpu.force_tpu_interpret_mode()``, splash with its ``interpret=True`` flag. On a multi-device
mesh (``jax.set_mesh``) the Pallas backends run under ``shard_map`` (DESIGN.md §8), split by rows
and heads as the logical-axis rules say (`_on_mesh`). The head dimension is not padded: on a real TPU, D = 64 or 128
suits the kernels best.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

BACKENDS = ('xla', 'cudnn', 'pallas_tpu_flash', 'pallas_tpu_splash')

# Large finite negative, as in the Pallas TPU kernels: exp() underflows to exactly 0 and, unlike
# -inf, it never produces NaN through (-inf) - (-inf).
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)
PALLAS_BLOCK = 128  # the TPU lane width; Pallas TPU attention blocks are multiples of it


# ----------------------------------------------------------------------------------------------
# Masks and the XLA reference.


def attention_mask(
  q_pos: jax.Array,
  kv_pos: jax.Array,
  window_size: int | None = None,
  q_segment_ids: jax.Array | None = None,
  kv_segment_ids: jax.Array | None = None,
) -> jax.Array:
  """Boolean ``[B, T, S]`` (True = attend) for positions ``q_pos [B, T]``, ``kv_pos [B, S]``.

  Positions here are slot indices within a row (not RoPE positions, which may restart per
  document): causal is ``kv_pos <= q_pos``, the window is ``q_pos - kv_pos < window_size``.
  """
  diff = q_pos[:, :, None] - kv_pos[:, None, :]
  mask = diff >= 0
  if window_size is not None:
    mask = mask & (diff < window_size)
  if q_segment_ids is not None:
    mask = mask & (q_segment_ids[:, :, None] == kv_segment_ids[:, None, :])
  return mask


def masked_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Softmax attention with an explicit mask, float32 logits and softmax.

  Args:
      q: ``[B, T, H, D]``.
      k, v: ``[B, S, Hkv, D]``.
      mask: boolean ``[B, T, S]`` (shared by all heads); every row must have a True.

  Returns:
      ``[B, T, H, D]`` in ``q.dtype``.
  """
  b, t, h, d = q.shape
  hkv = k.shape[2]
  qg = q.reshape(b, t, hkv, h // hkv, d)  # head h = kv_head * G + g
  logits = jnp.einsum('btkgd,bskd->bkgts', qg, k, preferred_element_type=jnp.float32)
  logits = logits * (d**-0.5)
  logits = jnp.where(mask[:, None, None], logits, MASK_VALUE)
  probs = jax.nn.softmax(logits, axis=-1)
  out = jnp.einsum(
    'bkgts,bskd->btkgd', probs.astype(v.dtype), v, preferred_element_type=jnp.float32
  )
  return out.reshape(b, t, h, d).astype(q.dtype)


def attention_xla(q, k, v, segment_ids=None, window_size=None):
  """Reference causal attention (see module docstring for shapes and mask)."""
  b, t = q.shape[:2]
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  mask = attention_mask(pos, pos, window_size, segment_ids, segment_ids)
  return masked_attention(q, k, v, mask)


# ----------------------------------------------------------------------------------------------
# cuDNN (jax.nn.dot_product_attention).


def attention_cudnn(q, k, v, segment_ids=None, window_size=None):
  """``jax.nn.dot_product_attention``; cuDNN flash attention on GPU, its XLA path elsewhere."""
  implementation = 'cudnn' if jax.default_backend() == 'gpu' else None
  mask = None
  if segment_ids is not None:
    mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]  # [B, 1, T, T]
  # jax.nn's (left, right) window: s in t-left .. t+right; with is_causal cuDNN uses left+1.
  local = None if window_size is None else (window_size - 1, 0)
  return jax.nn.dot_product_attention(
    q, k, v, mask=mask, is_causal=True, local_window_size=local, implementation=implementation
  )


# ----------------------------------------------------------------------------------------------
# Pallas TPU kernels.


_COMPILE_FOR_TPU = contextvars.ContextVar('miras_compile_pallas_for_tpu', default=False)


@contextlib.contextmanager
def compile_pallas_for_tpu():
  """Inside this context ``interpret=None`` means "compile the Mosaic kernel" even though the
  host backend is not a TPU: for ahead-of-time compilation for a TPU topology from a CPU
  machine (scripts/aot_tpu_compile.py, DESIGN.md §8), where the model's layers leave
  ``interpret`` unset."""
  token = _COMPILE_FOR_TPU.set(True)
  try:
    yield
  finally:
    _COMPILE_FOR_TPU.reset(token)


def _resolve_interpret(interpret: bool | None) -> bool:
  if interpret is not None:
    return bool(interpret)
  return jax.default_backend() != 'tpu' and not _COMPILE_FOR_TPU.get()


def _in_tpu_interpret_mode(fn, interpret: bool | None):
  """``fn`` with its forward *and* backward Pallas calls traced in TPU interpret mode.

  ``pltpu.force_tpu_interpret_mode()`` acts on the ``pallas_call``s traced inside it, but a
  kernel's backward pass is traced later, when the VJP is applied; so the VJP is wrapped in a
  ``custom_vjp`` whose forward and backward both enter the context. ``interpret=None`` means
  "interpret unless on a TPU"; on a TPU (``interpret`` false) ``fn`` is returned unchanged.
  """
  if not _resolve_interpret(interpret):
    return fn
  from jax.experimental.pallas import tpu as pltpu

  @jax.custom_vjp
  def wrapped(*args):
    with pltpu.force_tpu_interpret_mode():
      return fn(*args)

  def wrapped_fwd(*args):
    with pltpu.force_tpu_interpret_mode():
      out, vjp_fn = jax.vjp(fn, *args)
    return out, vjp_fn  # a jax.tree_util.Partial: a valid residual pytree

  def wrapped_bwd(vjp_fn, ct):
    with pltpu.force_tpu_interpret_mode():
      return vjp_fn(ct)

  wrapped.defvjp(wrapped_fwd, wrapped_bwd)
  return wrapped


def _pick_block(padded_len: int) -> int:
  """Largest of 512, 256, 128 dividing ``padded_len`` (512 is the usual TPU choice)."""
  for block in (512, 256, 128):
    if padded_len % block == 0:
      return block
  raise AssertionError(padded_len)


def _pad_for_pallas(q, k, v, segment_ids):
  """Pad T to a multiple of 128; returns padded q, k, v, segment ids (or None) and T."""
  t = q.shape[1]
  t_pad = -(-t // PALLAS_BLOCK) * PALLAS_BLOCK
  extra = t_pad - t
  if extra == 0:
    return q, k, v, segment_ids, t
  pad = lambda x: jnp.pad(x, ((0, 0), (0, extra), (0, 0), (0, 0)))
  if segment_ids is not None:
    # A fresh id for the padding: padded queries see only padding (never an empty row),
    # real queries never see padding.
    pad_id = jnp.max(segment_ids) + 1
    segment_ids = jnp.concatenate(
      [
        segment_ids,
        jnp.broadcast_to(pad_id, (segment_ids.shape[0], extra)).astype(segment_ids.dtype),
      ],
      axis=1,
    )
  return pad(q), pad(k), pad(v), segment_ids, t


def attention_pallas_flash(q, k, v, segment_ids=None, window_size=None, interpret=None):
  """Pallas TPU flash attention (``flash_attention(q, k, v, segment_ids=..., causal=True)``)."""
  if window_size is not None:
    raise NotImplementedError(
      "backend 'pallas_tpu_flash' has no sliding window (the kernel supports only causal / "
      "segment masks); use 'pallas_tpu_splash' for sliding-window attention."
    )
  from jax.experimental.pallas.ops.tpu import flash_attention as fa

  h, d = q.shape[2], q.shape[3]
  groups = h // k.shape[2]
  if groups > 1:  # the kernel has one kv head per query head
    k = jnp.repeat(k, groups, axis=2)
    v = jnp.repeat(v, groups, axis=2)
  q, k, v, segment_ids, t = _pad_for_pallas(q, k, v, segment_ids)
  block = _pick_block(q.shape[1])
  block_sizes = fa.BlockSizes(
    block_q=block,
    block_k_major=block,
    block_k=block,
    block_b=1,
    block_q_major_dkv=block,
    block_k_major_dkv=block,
    block_k_dkv=block,
    block_q_dkv=block,
    block_k_major_dq=block,
    block_k_dq=block,
    block_q_dq=block,
  )

  def flash(q, k, v, segment_ids):  # [B, H, T, D] layout
    seg = None if segment_ids is None else fa.SegmentIds(q=segment_ids, kv=segment_ids)
    return fa.flash_attention(
      q, k, v, segment_ids=seg, causal=True, sm_scale=d**-0.5, block_sizes=block_sizes
    )

  if segment_ids is not None:
    segment_ids = segment_ids.astype(jnp.int32)
  to_bhtd = lambda x: jnp.swapaxes(x, 1, 2)
  out = _in_tpu_interpret_mode(flash, interpret)(to_bhtd(q), to_bhtd(k), to_bhtd(v), segment_ids)
  return jnp.swapaxes(out, 1, 2)[:, :t]


@functools.lru_cache(maxsize=64)
def _splash_kernel(
  seq_len: int, num_heads: int, window_size: int | None, block: int, interpret: bool
):
  """Build (once per shape) the splash kernel: the mask is preprocessed on the host."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  if window_size is None:
    head_mask = sa.CausalMask((seq_len, seq_len))
  else:  # s in t-(w-1) .. t
    head_mask = sa.LocalMask((seq_len, seq_len), window_size=(window_size - 1, 0), offset=0)
  mask = sa.MultiHeadMask([head_mask] * num_heads)
  block_sizes = sa.BlockSizes(
    block_q=block,
    block_kv=block,
    block_kv_compute=block,
    block_q_dkv=block,
    block_kv_dkv=block,
    block_kv_dkv_compute=block,
    use_fused_bwd_kernel=True,
  )
  # The kernel holds the preprocessed mask as arrays; keep them concrete even when it is first
  # built inside a jit trace, since the kernel is cached across traces.
  with jax.ensure_compile_time_eval():
    return sa.make_splash_mha(
      mask, block_sizes=block_sizes, head_shards=1, q_seq_shards=1, interpret=interpret
    )


def attention_pallas_splash(q, k, v, segment_ids=None, window_size=None, interpret=None):
  """Pallas TPU splash attention (sparse-mask flash attention; causal or local, GQA native)."""
  from jax.experimental.pallas.ops.tpu import splash_attention as sa

  h, d = q.shape[2], q.shape[3]
  q, k, v, segment_ids, t = _pad_for_pallas(q, k, v, segment_ids)
  interpret = _resolve_interpret(interpret)
  # Off TPU: Pallas' generic (HLO) interpreter, via the kernel's own `interpret` flag. The
  # TPU interpret mode (`force_tpu_interpret_mode`) fails here because the batch vmap adds a
  # grid axis that the kernel's dimension_semantics do not cover (jax 0.10.2).
  kernel = _splash_kernel(q.shape[1], h, window_size, _pick_block(q.shape[1]), bool(interpret))
  q = q * jnp.asarray(d**-0.5, q.dtype)  # splash has no softmax scale argument
  to_htd = lambda x: jnp.swapaxes(x, 1, 2)  # per batch row: [H, T, D]

  def one_row(q_r, k_r, v_r, seg_r):
    seg = None if seg_r is None else sa.SegmentIds(q=seg_r, kv=seg_r)
    return kernel(q_r, k_r, v_r, segment_ids=seg)

  seg = None if segment_ids is None else segment_ids.astype(jnp.int32)
  out = jax.vmap(one_row)(to_htd(q), to_htd(k), to_htd(v), seg)
  return jnp.swapaxes(out, 1, 2)[:, :t]


# ----------------------------------------------------------------------------------------------
# Pallas kernels on a device mesh.


def _mesh_axes_dividing(logical: str, dim: int, mesh) -> Any:
  """The mesh axes the logical activation axis ``logical`` maps to under the current Flax
  logical-axis rules, or None when unmapped or when their size does not divide ``dim``."""
  import flax.linen as nn

  axes = nn.logical_to_mesh_axes((logical,))[0]
  if axes is None:
    return None
  names = axes if isinstance(axes, tuple) else (axes,)
  names = tuple(a for a in names if a in mesh.axis_names)
  size = int(np.prod([mesh.shape[a] for a in names])) if names else 1
  if not names or dim % size:
    return None
  return names if len(names) > 1 else names[0]


def _on_mesh(kernel, q, k, v, segment_ids):
  """Run a Pallas attention ``kernel(q, k, v, segment_ids)`` per device under ``shard_map``.

  A Mosaic kernel is an opaque custom call that XLA's SPMD partitioner cannot split (DESIGN.md
  §8), so on a multi-device mesh (``jax.set_mesh``) every device runs it on its own block:
  rows split as the logical axis 'activation_batch' says, heads as 'activation_heads' /
  'activation_kv_heads' (the mesh axes come from the current ``nn.logical_axis_rules``,
  train/sharding.py). Heads are split only when both H and Hkv divide by the axis size, so each
  device keeps whole GQA groups (query head h reads kv head h // G, G = H / Hkv, in blocks).
  The sequence axis is never split: each device sees whole rows, so causal / window / segment
  masks are unchanged. Without a mesh, or with one device, ``kernel`` runs as is.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return kernel(q, k, v, segment_ids)
  from jax.sharding import PartitionSpec as P

  batch = _mesh_axes_dividing('activation_batch', q.shape[0], mesh)
  heads = _mesh_axes_dividing('activation_heads', q.shape[2], mesh)
  kv_heads = _mesh_axes_dividing('activation_kv_heads', k.shape[2], mesh)
  if heads is None or heads != kv_heads:
    heads = kv_heads = None
  q_spec, kv_spec = P(batch, None, heads, None), P(batch, None, kv_heads, None)
  if segment_ids is None:
    fn = lambda q, k, v: kernel(q, k, v, None)
    args, in_specs = (q, k, v), (q_spec, kv_spec, kv_spec)
  else:
    fn, args = kernel, (q, k, v, segment_ids)
    in_specs = (q_spec, kv_spec, kv_spec, P(batch, None))
  # check_vma=False: pallas_call has no replication rule for the varying-axes checker.
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=q_spec, check_vma=False)(*args)


# ----------------------------------------------------------------------------------------------
# Persistent (prefix) keys and values.


def prefix_visibility(
  positions: jax.Array, num_prefix: int, window_size: int | None = None
) -> jax.Array:
  """Which prefix slots each query sees: boolean ``[B, T, N_p]``.

  Titans (Behrouz et al. 2025, §3.3) prepends ``N_p`` learnable tokens to every sequence,
  ``x̃ = [p_1 .. p_{N_p}] || x``. Slot ``j`` of the prefix therefore sits at document position
  ``j - N_p`` (``positions`` restart at 0 per document, so every packed document gets its own
  copy). With ``window_size=None`` every query sees the whole prefix: full attention, or
  Titans MAG's "SW-Attn*", the sliding window *with prefix* (Fig. 3b). With a window, the
  prefix obeys it like any earlier token (Titans MAL's plain SW-Attn over ``M(x̃)``, §4.3):
  query at position t sees slot j iff ``t - (j - N_p) < window_size``.
  """
  slot_pos = jnp.arange(num_prefix, dtype=jnp.int32) - num_prefix
  diff = positions[:, :, None].astype(jnp.int32) - slot_pos  # [B, T, N_p], always > 0
  if window_size is None:
    return jnp.ones(diff.shape, bool)
  return diff < window_size


def prepend_prefix(prefix, k, v, mask):
  """Put the prefix slots in front of the keys: ``(k [B, N_p+S, Hkv, D], v, mask [B, T,
  N_p+S])`` from ``prefix = (k_p, v_p, visible)`` and the row's ``k, v [B, S, Hkv, D]`` and
  ``mask [B, T, S]`` (shared by training and the KV-cache decode)."""
  k_p, v_p, visible = prefix
  b = k.shape[0]
  expand = lambda p, x: jnp.concatenate(
    [jnp.broadcast_to(p.astype(x.dtype), (b,) + p.shape), x], axis=1
  )
  return expand(k_p, k), expand(v_p, v), jnp.concatenate([visible, mask], axis=-1)


def _attention_with_prefix(q, k, v, segment_ids, window_size, backend, prefix):
  """Causal attention plus extra always-present key/value slots: one softmax over both.

  The prefix joins the keys as ``N_p`` extra columns with their own visibility mask, so the
  row's causal / window / segment mask is unchanged. Only the dense-mask backends can do this;
  the Pallas TPU kernels take their masks as static block structure plus segment ids, which
  cannot express "every segment sees these columns".
  """
  if backend not in ('xla', 'cudnn'):
    raise NotImplementedError(
      f"persistent (prefix) tokens need attention backend 'xla' or 'cudnn', not "
      f'{backend!r}: the Pallas TPU kernels cannot mask extra key slots shared by every '
      f"document; set persistent_tokens=0 or use backend='xla'"
    )
  b, t = q.shape[:2]
  pos = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  k, v, mask = prepend_prefix(
    prefix, k, v, attention_mask(pos, pos, window_size, segment_ids, segment_ids)
  )
  return dense_masked_attention(q, k, v, mask, backend)


def dense_masked_attention(q, k, v, mask, backend='xla'):
  """Attention with an explicit boolean ``mask [B, T, S]`` (``q [B, T, H, D]``, ``k, v
  [B, S, Hkv, D]``) on a dense-mask backend: 'xla' (`masked_attention`) or 'cudnn'
  (``jax.nn.dot_product_attention``, cuDNN on GPU). Every row must have a True."""
  if backend == 'xla':
    return masked_attention(q, k, v, mask)
  if backend != 'cudnn':
    raise NotImplementedError(
      f'an explicit attention mask needs backend xla or cudnn, not {backend!r}'
    )
  implementation = 'cudnn' if jax.default_backend() == 'gpu' else None
  return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None], implementation=implementation)


# ----------------------------------------------------------------------------------------------
# Dispatch.


def causal_attention(
  q: jax.Array,
  k: jax.Array,
  v: jax.Array,
  *,
  segment_ids: jax.Array | None = None,
  window_size: int | None = None,
  backend: str = 'xla',
  interpret: bool | None = None,
  prefix: tuple[jax.Array, jax.Array, jax.Array] | None = None,
) -> jax.Array:
  """Causal (optionally sliding-window, segment-masked) attention by ``backend``.

  Args:
      q: ``[B, T, H, D]``; k, v: ``[B, T, Hkv, D]``, ``Hkv`` divides ``H``.
      segment_ids: integer ``[B, T]`` or None (one document per row).
      window_size: None (full causal) or w >= 1 (token t sees t-w+1 .. t).
      backend: one of `BACKENDS`.
      interpret: Pallas backends only; None runs interpret mode everywhere but on TPU.
      prefix: None, or ``(k_p [N_p, Hkv, D], v_p [N_p, Hkv, D], visible [B, T, N_p] bool)``:
          extra keys/values that are not tokens of the row (Titans' persistent memory, see
          `prefix_visibility`); query t may attend prefix slot j iff ``visible[:, t, j]``, in
          addition to its usual causal / window / segment keys. 'xla' and 'cudnn' only.

  Returns:
      ``[B, T, H, D]`` in ``q.dtype``.
  """
  if q.shape[2] % k.shape[2]:
    raise ValueError(f'num_kv_heads={k.shape[2]} must divide num_heads={q.shape[2]}')
  if window_size is not None and window_size < 1:
    raise ValueError(f'window_size must be >= 1 or None, got {window_size}')
  if prefix is not None:
    return _attention_with_prefix(q, k, v, segment_ids, window_size, backend, prefix)
  if backend == 'xla':
    return attention_xla(q, k, v, segment_ids, window_size)
  if backend == 'cudnn':
    return attention_cudnn(q, k, v, segment_ids, window_size)
  if backend == 'pallas_tpu_flash':
    return _on_mesh(
      functools.partial(attention_pallas_flash, window_size=window_size, interpret=interpret),
      q,
      k,
      v,
      segment_ids,
    )
  if backend == 'pallas_tpu_splash':
    return _on_mesh(
      functools.partial(attention_pallas_splash, window_size=window_size, interpret=interpret),
      q,
      k,
      v,
      segment_ids,
    )
  raise ValueError(f'unknown attention backend {backend!r}; choose one of {BACKENDS}')
