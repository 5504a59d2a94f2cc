"""Pallas attention backends on a device mesh: under ``jax.set_mesh`` with the trainer's logical
rules they run per device under ``shard_map`` (rows over data/fsdp, heads over tensor) and equal
the single-device XLA reference, outputs and gradients. Runs in a subprocess with 8 simulated
CPU devices (the device count is fixed when JAX starts).

Only splash runs here: flash's TPU interpret mode (``force_tpu_interpret_mode``) hangs under
``shard_map`` on several simulated CPU devices (it waits on cross-device barriers). Both kernels'
sharded programs are compiled for a real TPU topology by scripts/aot_tpu_compile.py."""

import textwrap

from tests.layers._util import run_on_cpu_devices

SCRIPT = textwrap.dedent("""
    import functools
    import flax.linen as nn
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from miras_jax.layers.attention import Attention
    from miras_jax.train.sharding import LOGICAL_AXIS_RULES, make_mesh
    from miras_jax.testing import assert_close
    from tests.layers._util import numpy_params

    jax.config.update('jax_default_matmul_precision', 'highest')
    # rows and heads split (2, 2, 2); heads that cannot split over 8 (1, 1, 8): replicated heads
    CASES = {'splash': [('pallas_tpu_splash', 6, (2, 2, 2)), ('pallas_tpu_splash', 6, (1, 1, 8))]}
    assert jax.device_count() == 8
    b, t, e = 4, 40, 32
    rng = np.random.default_rng(0)
    x = rng.standard_normal((b, t, e)).astype(np.float32)
    seg = np.repeat(np.array([[1] * 25 + [2] * 15]), b, 0).astype(np.int32)
    seg[1] = 3

    def run(backend, window, mesh):
        layer = Attention(num_heads=4, num_kv_heads=2, head_dim=16, window_size=window,
                          backend=backend)
        params = numpy_params(layer, x, std=0.2)
        f = jax.jit(jax.value_and_grad(
            lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x, None, seg))), argnums=(0, 1)))
        if mesh is None:
            return f(params, x), None
        with jax.set_mesh(mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
            xs = jax.device_put(x, NamedSharding(mesh, P(('data', 'fsdp'))))
            return f(params, xs), str(f.lower(params, xs).as_text())

    import sys, time
    for backend, window, shape in CASES[sys.argv[1]]:
            t0 = time.time()
            ref, _ = run('xla', window, None)
            got, hlo = run(backend, window, make_mesh(*shape))
            assert 'shard_map' in hlo or 'manual' in hlo, 'kernel not under shard_map'
            assert_close(got[0], ref[0], 1e-5, atol=1e-6)
            for r, g in zip(jax.tree.leaves(ref[1]), jax.tree.leaves(got[1])):
                assert_close(g, r, 1e-4, atol=1e-6)
            print('ok', backend, shape, f'{time.time() - t0:.0f}s', flush=True)
""")


def _run(which, n_ok):
  out = run_on_cpu_devices(SCRIPT, which, timeout=1200)
  assert out.count('ok ') == n_ok, out


def test_splash_on_an_8_device_mesh():
  _run('splash', 2)
