"""scripts/bench_bptt.py's ``--variants``: the layer-gate rows with other MirasLayer options."""

import pytest

from tests._scripts import load_file


def _script():
  return load_file('scripts/bench_bptt.py')


def test_variants_parse_and_rule_no_ops():
  m = _script()
  got = m.parse_variants('step_scale=implicit_chunk,momentum_form=ema+eta_max=10')
  assert got == [
    ('step_scale=implicit_chunk', {'step_scale': 'implicit_chunk'}),
    ('momentum_form=ema+eta_max=10', {'momentum_form': 'ema', 'eta_max': 10}),
  ]
  # Memora's softmax map does not define the step scale (rules.py with_options drops it);
  # Titans' identity map does; a gate option is never a rule no-op.
  assert m.rule_unchanged('memora', {'step_scale': 'implicit_chunk'})
  assert not m.rule_unchanged('titans', {'step_scale': 'implicit_chunk'})
  assert not m.rule_unchanged('memora', {'eta_max': 0.5})


def _main(m, out, rules):
  m.main(
    [
      f'--rules={rules}',
      '--lengths=32',
      '--horizons=0',
      '--presets=0',
      '--memora_w0_std=',
      '--head_dim=4',
      '--heads=1',
      '--variants=step_scale=implicit_chunk',
      f'--out={out}',
    ]
  )
  text = out.read_text()
  return text, [ln.split() for ln in text.splitlines() if not ln.startswith(('#', 'rule'))]


def test_variant_rows_and_their_options(tmp_path, monkeypatch):
  """One 'layer' row and one 'layer:<variant>' row per rule, the variant's options reaching the
  layer; Memora's no-op variant is a comment, not a row. ``measure`` stubbed (no compile)."""
  m = _script()
  seen = []

  def fake_measure(rule, T, h, D, eta_max, alpha_init, w0, eps, heads, **options):
    seen.append((rule, m.MirasLayer(rule=rule, **options).memory_rule.step_scale))
    return 1.0, 2.0 if options else 1.0

  monkeypatch.setattr(m, 'measure', fake_measure)
  text, rows = _main(m, tmp_path / 'bptt.txt', 'titans,memora')
  assert [r[:2] for r in rows] == [
    ['titans', 'layer'],
    ['titans', 'layer:step_scale=implicit_chunk'],
    ['memora', 'layer'],
  ]
  assert seen == [('titans', 'none'), ('titans', 'implicit_chunk'), ('memora', 'none')]
  assert [float(r[7]) for r in rows] == [1.0, 2.0, 1.0]  # "vs first row": per rule
  assert '# memora: step_scale=implicit_chunk leaves its memory rule unchanged' in text
  # A gate in a variant goes where measure() takes it (a MirasLayer option would clash).
  name, eta_max, alpha_init, horizons, eps, w0, opts = m.variant_setting(
    'eta_max=0.1+step_scale=implicit_chunk',
    {'eta_max': 0.1, 'step_scale': 'implicit_chunk'},
    [0],
    1.0,
  )
  assert (name, eta_max, horizons, eps) == (
    'layer:eta_max=0.1+step_scale=implicit_chunk',
    0.1,
    [0],
    1.0,
  )
  assert opts == {'step_scale': 'implicit_chunk'}


@pytest.mark.slow
def test_variant_row_differs_from_the_layer_row(tmp_path):
  """The real measurement at T = 32 (two compiles, ~30 s of CPU): implicit_chunk changes
  Titans' gradient."""
  m = _script()
  _, rows = _main(m, tmp_path / 'bptt.txt', 'titans')
  g_default, g_variant = float(rows[0][6]), float(rows[1][6])
  assert 0 < g_default < float('inf') and 0 < g_variant < float('inf')
  assert abs(g_variant - g_default) > 1e-3 * g_default
