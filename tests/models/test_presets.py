"""Model presets (configs/models.py): every family builds; parameter counts (from
``jax.eval_shape`` of ``init``: nothing allocated) are within 10 % of the nominal sizes."""

import pytest

from configs.models import SIZES, families, model_config
from miras_jax.models import LMConfig, build_model

NOMINAL = {'170m': 170e6, '340m': 340e6, '760m': 760e6, '1.3b': 1.3e9}
CHECKED = ('transformer', 'moneta', 'yaad', 'memora', 'titans', 'gated_deltanet',
           'hybrid_moneta', 'titans_mag', 'titans_mal')


@pytest.mark.parametrize('size', sorted(NOMINAL))
def test_param_counts_near_nominal(size):
    for family in CHECKED:
        n = build_model(model_config(family, size)).num_params()
        assert abs(n / NOMINAL[size] - 1) < 0.10, (family, size, n)


def test_every_family_and_size_is_a_valid_config():
    for family in families():
        for size in SIZES:
            cfg = LMConfig.from_config(model_config(family, size))
            assert cfg.n_heads * cfg.head_dim == cfg.d_model
            assert cfg.n_layers % len(cfg.pattern) == 0
    c = model_config('moneta', '1.3b')
    assert (c.n_layers, c.d_model, c.n_heads, c.vocab_size, c.max_len) == (18, 2048, 8, 32000,
                                                                           4096)


def test_unknown_family_or_size():
    with pytest.raises(ValueError, match='unknown model family'):
        model_config('lstm', 'tiny')
    with pytest.raises(ValueError, match='unknown size'):
        model_config('moneta', '7b')
