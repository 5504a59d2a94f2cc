"""The Miras layer's memory on a data x tensor mesh: its state stays split over batch x heads.

Compiles the forward and backward of a tiny Moneta layer for 8 simulated CPU devices (mesh
data 2 x tensor 4, the trainer's rules table) and reads the partitioned HLO: every loop over
chunks carries the state as the per-device block [B/2, H/4, ...], never the whole [B, H, ...],
and no loop body gathers or exchanges activations (all-gather, all-to-all, collective-permute,
reduce-scatter). The only collectives inside loops are all-reduces of per-head parameter
gradients ([H/4, ...], no batch dimension). Runs in a subprocess (the device count is fixed when
JAX starts).
"""

import textwrap

from tests.layers._util import run_on_cpu_devices

SCRIPT = textwrap.dedent("""
    import re
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from miras_jax.layers.miras import MirasLayer
    from miras_jax.train.sharding import LOGICAL_AXIS_RULES, logical_shardings, make_mesh

    B, T, E, H, D = 4, 32, 16, 4, 8  # Moneta's MLP memory: W1 [H, 4D, D], W2 [H, D, 4D]
    layer = MirasLayer(rule='moneta', num_heads=H, head_dim=D, chunk_size=16, gate_rank=4)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((B, T, E)), jnp.float32)
    boxed = jax.jit(layer.init)(jax.random.key(0), x)
    mesh = make_mesh(2, 1, 4)
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES):
      params = jax.device_put(nn.meta.unbox(boxed), logical_shardings(jax.eval_shape(lambda: boxed), mesh))
    with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
      xs = jax.device_put(x, NamedSharding(mesh, P(('data', 'fsdp'))))
      loss = lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)))
      hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, xs).compile().as_text()

    comps = dict(re.findall(r'\\n(?:ENTRY )?%?([\\w.\\-]+) [^\\n]*\\{\\n(.*?)\\n\\}', hlo, re.S))
    def reach(name, seen):
      if name in comps and name not in seen:
        seen.add(name)
        for c in re.findall(r'(?:to_apply|calls|body|condition)=%?([\\w.\\-]+)', comps[name]):
          reach(c, seen)
      return seen
    whiles = re.findall(r'= \\((.*?)\\) while\\(.*?body=%?([\\w.\\-]+)', hlo)
    assert len(whiles) >= 2, len(whiles)  # the forward scan over chunks and its backward
    full = [f'f32[{B},{H},{4 * D},{D}]', f'f32[{B},{H},{D},{4 * D}]']
    block = [f'f32[{B // 2},{H // 4},{4 * D},{D}]', f'f32[{B // 2},{H // 4},{D},{4 * D}]']
    for carry, _ in whiles:
      assert not any(s in carry for s in full), 'a loop carries the whole memory state'
    assert all(any(s in carry for s in block) for carry, _ in whiles), 'state not split B x H'
    in_loops = set().union(*(reach(body, set()) for _, body in whiles))
    bad = re.compile(r'(all-gather|all-to-all|collective-permute|reduce-scatter)(-start)?\\(')
    reduce = re.compile(r'= (\\(.*?\\)|\\S+) all-reduce(-start)?\\(')
    n_reduce = 0
    for name in in_loops:
      for line in comps[name].splitlines():
        assert not bad.search(line), line[:300]
        m = reduce.search(line)
        if m:  # per-head parameter gradients only: leading H/4 = 1, no batch dimension
          n_reduce += 1
          for shape in re.findall(r'f32\\[([\\d,]*)\\]', m.group(1)):
            dims = [int(d) for d in shape.split(',') if d]
            assert len(dims) <= 3 and (not dims or dims[0] == H // 4), line[:300]
    print('ok', len(whiles), 'loops', n_reduce, 'parameter-gradient all-reduces in loops')
""")


def test_memory_state_stays_split_over_batch_and_heads_on_a_mesh():
  assert 'ok' in run_on_cpu_devices(SCRIPT)
