"""The papers' memory rules written token by token, independently of miras_jax.memory.

Nothing here imports the project's biases, retention maps or architectures: the memory
function, each attentional bias's output gradient and each retention step are written out
again from the equations (Miras arXiv 2504.13173 §3–5, Eq. 26 and 30–32; Titans arXiv
2501.00663 Eq. 10–13; TTT arXiv 2407.04620 §2), and the weight gradient is ``jax.vjp`` of the
memory function written here. Single head, unbatched, float64 via the caller's inputs.

Conventions shared with the project only where the papers leave a constant free (both are
documented in miras_jax/memory/biases.py): ℓ2 = ½‖e‖² (u = e), ℓp's gradient
u = tanh(a·e)·(e² + ε)^{(p−1)/2}, retention α the keep factor, momentum decay μ.
Chunk semantics (Miras §5.4, Titans §3.2): gradients at the memory of the last chunk boundary.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

LN_EPS = 1e-6


def gelu_tanh(x):
  return 0.5 * x * (1.0 + jnp.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x**3)))


def layer_norm(z, scale, shift):
  mu = z.mean()
  var = ((z - mu) ** 2).mean()
  return (z - mu) / jnp.sqrt(var + LN_EPS) * scale + shift


def mlp_memory(ws, x, ln, bias=False):
  """M(x) = x + LN(W_L σ(… σ(W_1 x))); with ``bias`` each W_l = [W | b] acts as W h + b."""
  h = x
  for l, w in enumerate(ws):
    z = w[:, :-1] @ h + w[:, -1] if bias else w @ h
    h = gelu_tanh(z) if l < len(ws) - 1 else z
  return x + layer_norm(h, ln['ln_scale'], ln['ln_bias'])


def weight_grad(memory, ws, k, u):
  """∇_W ℓ for ∂ℓ/∂M(k) = u (back-propagation through the memory written above)."""
  _, vjp = jax.vjp(lambda w: memory(w, k), ws)
  return vjp(u)[0]


# --- output gradients of the attentional biases, e = M(k) − v ---------------------------


def u_l2(e, delta=None):
  return e


def u_lp(e, delta=None, p=3.0, a=10.0, eps=1e-6):
  return jnp.tanh(a * e) * (e * e + eps) ** ((p - 1.0) / 2.0)


def u_yaad_eq26(e, delta):
  """Miras Eq. 26: ∇ℓ2 where ‖e‖ ≤ δ, else δ ∇ℓ1 = δ sign(e). A per-channel δ tests the
  ellipsoid Σ_j (e_j/δ_j)² ≤ 1 and steps δ_j sign(e_j)."""
  if np.ndim(delta) == 0 or np.size(delta) == 1:
    d = jnp.reshape(delta, ())
    return e if float(jnp.linalg.norm(e)) <= float(d) else d * jnp.sign(e)
  inside = float(jnp.sum((e / delta) ** 2)) <= 1.0
  return e if inside else delta * jnp.sign(e)


def u_yaad_clip(e, delta):
  """Eq. 14, per channel: e_j where |e_j| ≤ δ_j, else δ_j sign(e_j)."""
  return jnp.where(jnp.abs(e) <= delta, e, delta * jnp.sign(e))


def u_yaad_norm(e, delta):
  """Eq. 15: e where ‖e‖ ≤ δ, else δ e/‖e‖."""
  d = jnp.reshape(delta, (-1,))[0]
  n = jnp.linalg.norm(e)
  return e if float(n) <= float(d) else d * e / n


# --- rules -------------------------------------------------------------------------------


def run_gd(memory, ws, xs, b, u_fn, momentum=False, to_initial=False, implicit=0.0):
  """W_t = α_t W_{t−1} − η_t g_t (or Titans: S_t = μ_t S_{t−1} − η_t g_t, W_t = α_t W_{t−1} +
  S_t), g_t at the chunk-start memory; y_t = M(W_t; q_t). Yaad, Titans, TTT.
  ``to_initial``: the decay forgets towards W_0, α_t W_{t−1} + (1 − α_t) W_0.
  ``implicit`` = c > 0: the step η_t / (1 + c η̄_t λ_t), λ_t = ‖g_t‖² / ‖u_t‖² (all matrices'
  entries, u_t = ∂ℓ/∂M at the chunk-start memory), η̄_t = η_t / (1 − μ_t) with momentum, else η_t
  (the project's step_scale='implicit' with c = 1, 'implicit_chunk' with c = b; Longhorn's
  implicit step for a linear memory at c = 1)."""
  ws = [jnp.asarray(w) for w in ws]
  w_init = ws
  S = [jnp.zeros_like(w) for w in ws]
  wb = ws
  ys = []
  for t in range(len(xs['k'])):
    if t % b == 0:
      wb = ws
    e = memory(wb, xs['k'][t]) - xs['v'][t]
    u = u_fn(e, xs['delta'][t])
    g = weight_grad(memory, wb, xs['k'][t], u)
    al, eta = xs['alpha'][t], xs['eta'][t]
    if implicit:
      lam = sum((gi * gi).sum() for gi in g) / (u * u).sum()
      total = eta / (1.0 - xs['mu'][t]) if momentum else eta
      g = [gi / (1.0 + implicit * total * lam) for gi in g]
    kept = [al * w + (1.0 - al) * w_i if to_initial else al * w for w, w_i in zip(ws, w_init)]
    if momentum:
      S = [xs['mu'][t] * s - eta * gi for s, gi in zip(S, g)]
      ws = [k + s for k, s in zip(kept, S)]
    else:
      ws = [k - eta * gi for k, gi in zip(kept, g)]
    ys.append(memory(ws, xs['q'][t]))
  return jnp.stack(ys), ws


def moneta_map(a, q=4.0, floor=1e-2):
  """W = A / ‖A‖_q^{q−2} per matrix (Miras Eq. 24–25), the norm floored as documented."""
  n = jnp.maximum(jnp.sum(jnp.abs(a) ** q) ** (1.0 / q), floor)
  return a / n ** (q - 2.0)


def run_moneta(memory, w0, xs, b, q=4.0, to_initial=False):
  """A_t = α_t A_{t−1} − η_t ∇ℓp(W'); W = A/‖A‖_q^{q−2} once per chunk, reads inside a chunk
  with the chunk start's scale (miras-math.md "Chunk-parallel semantics"). ``to_initial``: the
  accumulator decays towards A_0, α_t A_{t−1} + (1 − α_t) A_0."""
  # A_0 with φ(A_0) = W_0: ‖φ(A)‖_q = ‖A‖_q^{3−q}, so A_0 = W_0 ‖W_0‖_q^{(q−2)/(3−q)}.
  A = [w * (jnp.sum(jnp.abs(w) ** q) ** (1.0 / q)) ** ((q - 2.0) / (3.0 - q)) for w in w0]
  A_init = A
  wb = [moneta_map(a, q) for a in A]
  scale = [jnp.sum(jnp.abs(a) ** q) ** (-(q - 2.0) / q) for a in A]
  ys = []
  T = len(xs['k'])
  for t in range(T):
    e = memory(wb, xs['k'][t]) - xs['v'][t]
    g = weight_grad(memory, wb, xs['k'][t], u_lp(e))
    al = xs['alpha'][t]
    A = [
      al * a + ((1.0 - al) * a_i if to_initial else 0.0) - xs['eta'][t] * gi
      for a, a_i, gi in zip(A, A_init, g)
    ]
    if t % b == b - 1:  # chunk end: the exact map, the new gradient point and read scale
      wb = [moneta_map(a, q) for a in A]
      scale = [jnp.maximum(jnp.sum(jnp.abs(a) ** q) ** (1.0 / q), 1e-2) ** (2.0 - q) for a in A]
    ys.append(memory([s * a for s, a in zip(scale, A)], xs['q'][t]))
  return jnp.stack(ys), A


def kl_step(w, alpha, eta, g, c):
  """Memora's step (Miras Eq. 27–28): W = c · Softmax(α log W − η g), per row."""
  z = alpha * jnp.log(jnp.maximum(w, 1e-12)) - eta * g
  z = z - z.max(axis=-1, keepdims=True)
  return c * jnp.exp(z) / jnp.exp(z).sum(axis=-1, keepdims=True)


def run_memora(memory, w0, xs, b, c=1.0, lag=False):
  """Memora. ``lag=False``: the exact rule token by token within chunks, gradients at the chunk
  start W' (b = 1: Eq. 27–28); reads inside a chunk use linear steps from W' and the chunk's last
  token the exact memory. ``lag=True``: Eq. 30–32 — the chunk's first token takes the exact step
  from W' and is the gradient point of the rest, which take linear steps; the chunk's end maps
  back to the simplex, W ← c · Softmax(log max(W, 1e-12))."""
  W = [jnp.asarray(w) for w in w0]  # exact memory ('logits' form: on the simplex always)
  logW = [jnp.log(w) for w in W]
  R = W  # what tokens read
  gp = W
  ys = []
  for t in range(len(xs['k'])):
    first, last = t % b == 0, t % b == b - 1
    if first:
      gp = W if not lag else R
    e = memory(gp, xs['k'][t]) - xs['v'][t]
    g = weight_grad(memory, gp, xs['k'][t], u_l2(e))
    al, eta = xs['alpha'][t], xs['eta'][t]
    if lag:
      if first:
        R = [kl_step(w, al, eta, gi, c) for w, gi in zip(gp, g)]
        gp = R
      else:
        R = [al * r - eta * gi for r, gi in zip(R, g)]
      if last:
        R = [kl_step(r, 1.0, 0.0, jnp.zeros_like(r), c) for r in R]
      W = R
    else:  # exact: carry log W (softmax entries can underflow the lag scheme's 1e-12 guard)
      logW = [
        jax.nn.log_softmax(al * lw - eta * gi, axis=-1) + np.log(c) for lw, gi in zip(logW, g)
      ]
      W = [jnp.exp(lw) for lw in logW]
      R = W if last else [al * r - eta * gi for r, gi in zip(R if not first else gp, g)]
    ys.append(memory(R, xs['q'][t]))
  return jnp.stack(ys), W
