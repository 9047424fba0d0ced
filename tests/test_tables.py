"""A :smoke table sweep (synthetic data, 2 rows, 2 subjects, 1 epoch), resumed, then figures."""

import json
import os

import pytest

from configs import synthetic
from mpt_jax import figures
from mpt_jax import loso
from mpt_jax import paper_results
from mpt_jax import tables

pytestmark = pytest.mark.slow  # a table sweep of LOSO runs


@pytest.fixture(scope='module')
def sweep(tmp_path_factory, smoke_data_dir):
  config = synthetic.get_config('smoke')
  config.data.data_dir = smoke_data_dir
  config.data.subjects = ('p01', 'p02')
  config.train.num_epochs = 1
  workdir = str(tmp_path_factory.mktemp('table') / 'fig5')
  md = tables.run_table('fig5:K_1,K_3', config, workdir)
  return config, workdir, md


def test_table_rows_are_loso_runs_with_metrics(sweep):
  config, workdir, md = sweep
  result = json.load(open(os.path.join(workdir, 'table.json')))
  assert [r['row'] for r in result['rows']] == ['K_1', 'K_3']
  for r in result['rows']:
    summary = json.load(open(os.path.join(workdir, r['row'], 'results.json')))
    saved = json.load(open(os.path.join(workdir, r['row'], 'config.json')))
    assert saved['model']['num_prompts'] == int(r['row'][2:])
    assert r['accuracy'] == summary['last_epoch_over_seeds']['accuracy']
    assert r['f1'] == summary['last_epoch_over_seeds']['uf1']
    assert r['tparas'] > 0 and r['gmacs'] > 0
  assert '| K_1 | K=1 |' in md and 'n/a' in md
  assert os.path.exists(os.path.join(workdir, 'table.md'))
  assert os.path.exists(os.path.join(workdir, 'accuracy_f1_vs_K.png'))


def test_finished_rows_are_skipped_and_changed_rows_refused(sweep):
  config, workdir, _ = sweep
  stamp = os.path.getmtime(os.path.join(workdir, 'K_1', 'results.json'))
  tables.run_table('fig5:K_1', config, workdir)
  assert os.path.getmtime(os.path.join(workdir, 'K_1', 'results.json')) == stamp
  changed = tables.row_config(config, {})
  changed.train.num_epochs = 2
  with pytest.raises(loso.RunError, match='num_epochs'):
    tables.run_table('fig5:K_1', changed, workdir)


def test_figures_mode_on_the_sweep_runs(sweep):
  _, workdir, _ = sweep
  runs = [os.path.join(workdir, 'K_1'), os.path.join(workdir, 'K_3')]
  out = os.path.join(workdir, 'figs')
  paths = figures.write_figures(runs, out)
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(['gradcam_K_1.png', 'gradcam_K_3.png', 'tsne_K_1_vs_K_3.png',
                          'per_class_accuracy_K_1_vs_K_3.png',
                          'examples_probabilities_K_1_vs_K_3.png', 'accuracy_f1_vs_K.png'])
  for p in paths:
    assert os.path.getsize(p) > 1000
  with pytest.raises(figures.FigureError, match='p09/nothing'):
    figures.write_figures(runs[:1], out, clip_names=['p09/nothing'])
  # Per-class accuracy read back from the fold results matches the run's summary.
  summary = json.load(open(os.path.join(runs[0], 'results.json')))
  acc = figures.per_class_accuracy(runs[0])
  assert acc == summary['seeds']['0']['last_epoch']['per_class_accuracy']


def test_bad_requests_are_user_errors(tmp_path):
  with pytest.raises(tables.TableError, match='XII'):
    tables.parse_table_arg('XII')
  with pytest.raises(tables.TableError, match='K_2'):
    tables.parse_table_arg('fig5:K_2')
  with pytest.raises(tables.TableError, match='B_32'):
    tables.parse_pretrained(['B_32'])
  with pytest.raises(figures.FigureError, match='config.json'):
    figures.write_figures([str(tmp_path)])


def test_backbone_rows_never_reuse_the_base_checkpoint():
  config = synthetic.get_config(None)
  config.model.pretrained_path = '/w/ViT-B_16.npz'
  cfg = tables.row_config(config, {'vit': 'clip_B_16'}, {'clip_B_16': '/w/clip/model.safetensors'})
  assert cfg.model.pretrained_path == '/w/clip/model.safetensors' and cfg.model.input_norm == 'clip'
  assert tables.row_config(config, {'vit': 'B_32'}).model.pretrained_path == ''


def test_paper_numbers_are_only_the_known_ones():
  for table, rows in tables.TABLES.items():
    for row_id, _ in rows:
      p = paper_results.paper_row(table, row_id)
      assert p['acc'] is None and p['f1'] is None  # the paper's Acc/F1 were not available
  assert paper_results.paper_row('VI', 'mpt') == {'acc': None, 'f1': None, 'tparas_m': 5.5,
                                                  'gflops': 18.7}
  # Every table's default-MPT row named in paper_results exists in the table.
  for table, row in paper_results._DEFAULT_ROWS.items():  # pylint: disable=protected-access
    assert row in [r for r, _ in tables.TABLES[table]]
