"""Per-parameter gradient norms of a tiny LM at initialisation: where a family's step-1 gradient
sits (issue 10 §3: Yaad's was ~50× Moneta's, carried by the embedding and the memory's k
projection, i.e. back-propagation through the inner steps).

    python scripts/probe_step1_grad.py yaad,moneta,titans [eta_max=0.1] [memory_ln_eps=1e-6] ...

Each family's ``tiny`` preset with vocabulary 2048, T = 128, chunk 16, batch 16 of uniform random
tokens (seed 0), the gradient of the mean next-token cross entropy; ``key=value`` overrides the
model config (values as Python literals). Prints the global norm and the 8 largest leaves.
"""

from __future__ import annotations

import ast
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from miras_jax.models import build_model
from miras_jax.models.presets import model_config


def main(argv):
  over = {k: ast.literal_eval(v) for k, v in (a.split('=', 1) for a in argv[1:])}
  for fam in argv[0].split(','):
    c = model_config(fam, 'tiny')
    c.vocab_size, c.chunk_size, c.max_len = 2048, 16, 128
    for k, v in over.items():
      c[k] = v
    m = build_model(c)
    tok = jnp.asarray(np.random.default_rng(0).integers(0, 2048, (16, 129)), jnp.int32)
    p = m.init(jax.random.PRNGKey(0), tok[:, :128])['params']

    def loss(p):
      logits = m.apply({'params': p}, tok[:, :-1])
      return optax.softmax_cross_entropy_with_integer_labels(logits, tok[:, 1:]).mean()

    g = jax.jit(jax.grad(loss))(p)
    print(f'== {fam} {over}: gradient norm {float(optax.global_norm(g)):.3g}')
    leaves = jax.tree_util.tree_flatten_with_path(g)[0]
    rows = sorted(((float(jnp.linalg.norm(v)), jax.tree_util.keystr(k)) for k, v in leaves))
    for n, k in rows[::-1][:8]:
      print(f'   {n:9.3g} {k}')


if __name__ == '__main__':
  main(sys.argv[1:])
