"""The paper's tables: published numbers, grids, and :smoke sweeps (synthetic data) beside the paper."""

import json
import os

import pytest

from configs import ablations
from configs import synthetic
from mpt_jax import figures
from mpt_jax import loso
from mpt_jax import paper_results
from mpt_jax import tables
from mpt_jax import workdir as wd


# A verbatim copy of the published-numbers sheet (every number of the paper's Tables I-XI).
PUBLISHED = os.path.join(os.path.dirname(__file__), 'data', 'published_numbers.md')


def _published_tables():
  """The sheet's markdown tables: ``{first header cell or heading: [row cells]}``."""
  out, heading, rows = {}, None, None
  for line in open(PUBLISHED, encoding='utf-8').read().splitlines():
    if line.startswith('Table ') or line.startswith('## '):
      heading, rows = line, None
    elif line.startswith('|') and not line.startswith('|---'):
      cells = [c.strip().strip('*') for c in line.strip().strip('|').split('|')]
      if rows is None:
        rows = out.setdefault(heading, [])
      else:
        rows.append(cells)
  return out


def _num(text):
  return None if text in ('-', '') else float(text)


def test_paper_results_equal_the_published_sheet():
  sheet = _published_tables()
  by_heading = {h.split(',')[0].split(':')[0]: rows for h, rows in sheet.items()}
  # Tables VI-XI: every row, in the paper's order, with its #Tparas, Acc and F1.
  prefix = {'X': 'alpha = ', 'XI': 'r = '}
  for table in ('VI', 'VII', 'VIII', 'IX', 'X', 'XI'):
    printed = by_heading[f'Table {table}']
    assert len(printed) == len(paper_results.rows(table)), table
    for cells, (row_id, label, values) in zip(printed, paper_results.rows(table)):
      assert label == prefix.get(table, '') + cells[0], (table, cells)
      if table in ('VI', 'VII', 'VIII'):
        assert values['tparas_m'] == cells[1], (table, cells)  # as printed, e.g. '0.003'
      p = paper_results.paper_row(table, row_id)
      assert (p['acc'], p['f1']) == (_num(cells[-2]), _num(cells[-1])), (table, cells)
  # Tables I-III: every method of every dataset column.
  columns = {'casme2': 2, 'samm': 3, 'smic': 4}
  for cells in by_heading['## Tables I–III']:
    method = cells[0]
    for dataset, col in columns.items():
      table = paper_results.MAIN_TABLE[dataset]
      if not cells[col]:
        assert method not in paper_results.row_ids(table), (method, dataset)
        continue
      acc, f1 = (c.strip() for c in cells[col].split('/'))
      p = paper_results.paper_row(table, method, dataset)
      assert (p['acc'], p['f1']) == (_num(acc), _num(f1)), (method, dataset)
  assert len(paper_results.rows('II')) == 14
  # Table IV and Table V.
  for cells in by_heading['## Table IV']:
    for dataset, col in columns.items():
      p = paper_results.paper_row('IV', cells[0], dataset)
      printed = [None, None] if cells[col] == '-' else [
          _num(c.strip()) for c in cells[col].split('/')]
      assert [p['acc'], p['f1']] == printed, (cells[0], dataset)
  for cells in by_heading['## Table V']:
    p = paper_results.paper_row('V', cells[0])
    assert [p['tparas_m'], p['gflops'], p['acc'], p['f1']] == [_num(c) for c in cells[1:]], cells
  # Fig. 5: only K = 5 is printed.
  assert paper_results.paper_row('fig5', 'K_5')['acc'] == 86.59
  assert paper_results.paper_row('fig5', 'K_3')['acc'] is None
  for name, entry in paper_results.PAPER.items():
    assert entry['source'].startswith('arXiv 2508.09446, '), name


def test_grids_are_the_papers_rows():
  """Every table's grid is the paper's rows, in its order, and each row's config means its label."""
  base = synthetic.get_config(None)
  for table in ('VI', 'VII', 'VIII', 'IX', 'X', 'XI', 'fig5'):
    grid = tables.TABLES[table]
    assert [r.id for r in grid if not r.ours] == paper_results.row_ids(table), table
    assert all(r.ours for r in grid[len(paper_results.row_ids(table)):])
    for row in grid:
      m = tables.row_config(base, row.overrides).model
      label = row.id if row.ours else paper_results.paper_row(table, row.id)['label']
      value = label.replace('_', ' = ').split(' = ')[-1]
      if table == 'X':
        assert m.magnification.alpha == float(value), label
      elif table == 'XI':
        assert m.adapter_reduction == int(value), label
      elif table == 'fig5':
        k = int(value)
        assert (m.prompt_type == 'none') == (k == 0), label
        assert k == 0 or m.num_prompts == k, label
  labels = {t: [paper_results.paper_row(t, r.id)['label'] for r in tables.TABLES[t] if not r.ours]
            for t in ('X', 'XI', 'fig5')}
  assert labels == {'X': [f'alpha = {a}' for a in (0, 10, 20, 30, 50)],
                    'XI': [f'r = {r}' for r in (4, 8, 12)],
                    'fig5': [f'K = {k}' for k in (0, 1, 3, 5, 7)]}
  # configs/ablations.py lists the same rows.
  assert [arg for t, _, arg in ablations.ROWS if t == 'X'][:5] == [
      f'alpha={a}' for a in (0, 10, 20, 30, 50)]
  assert len(ablations.ROWS) == sum(len(tables.TABLES[t]) for t in tables.TABLES
                                    if t not in ('main', 'V'))


@pytest.fixture(scope='module')
def smoke_config(smoke_data_dir):
  config = synthetic.get_config('smoke')
  config.data.data_dir = smoke_data_dir
  config.data.subjects = ('p01', 'p02')
  config.train.num_epochs = 1
  return config


def _md_row(md, row_id):
  line = next(l for l in md.splitlines() if l.startswith(f'| {row_id} |'))
  return [c.strip() for c in line.strip().strip('|').split('|')]


# Two rows of each table end to end (the grids' every row is checked at config level above):
# X's first alpha and a row of ours, VI's cheapest strategy and MPT.
@pytest.mark.slow
@pytest.mark.parametrize('table, rows', [('X', ['alpha_0', 'alpha_5']),
                                         ('VI', ['linear_probe', 'mpt'])])
def test_table_prints_the_papers_rows_beside_ours(smoke_config, tmp_path_factory, table, rows):
  workdir = str(tmp_path_factory.mktemp('table') / table)
  md = tables.run_table(f'{table}:{",".join(rows)}', smoke_config, workdir)
  assert md == open(os.path.join(workdir, 'table.md')).read()
  result = json.load(open(os.path.join(workdir, 'table.json')))
  assert [r['row'] for r in result['rows']] == rows
  for r in result['rows']:
    if r['row'] not in paper_results.row_ids(table):  # a row of ours runs when named, marked so
      assert r['ours_only'] and _md_row(md, f'{r["row"]} (ours)')[3] == '-'
      continue
    cells = _md_row(md, r['row'])
    p = paper_results.paper_row(table, r['row'])
    # row | paper's row | Acc | paper Acc | Δ Acc | F1 | paper F1 | Δ F1 | #Tparas | GMACs
    assert cells[1] == p['label']
    assert float(cells[3]) == p['acc'] and float(cells[6]) == p['f1']
    summary = json.load(open(os.path.join(workdir, r['row'], 'results.json')))
    ours = summary['last_epoch_over_seeds']
    assert float(cells[2]) == pytest.approx(100 * ours['accuracy']['mean'], abs=0.006)
    assert float(cells[4]) == pytest.approx(100 * ours['accuracy']['mean'] - p['acc'], abs=0.011)
    assert float(cells[7]) == pytest.approx(100 * ours['uf1']['mean'] - p['f1'], abs=0.011)
    ours_tp, paper_tp = cells[8].split(' / ')
    assert float(ours_tp) == pytest.approx(r['tparas'] / 1e6, abs=6e-4)
    assert paper_tp == ('-' if p['tparas_m'] is None else paper_tp)
    assert 'n/a' not in cells
  if table == 'X':
    assert _md_row(md, 'alpha_0')[3] == '81.10' and _md_row(md, 'alpha_0')[6] == '80.54'
    assert 'alpha_5' not in paper_results.row_ids(table)
  else:
    assert _md_row(md, 'linear_probe')[8].endswith(' / 0.003')
    assert _md_row(md, 'mpt')[9].endswith(' / 18.7')


@pytest.mark.slow
def test_main_table_lists_the_papers_methods_and_fig5_and_resume(smoke_config, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('table') / 'fig5')
  md = tables.run_table('fig5:K_0,K_5', smoke_config, workdir)
  assert 'every K >= 1 beats K = 0' in md
  assert _md_row(md, 'K_0')[3] == '-' and _md_row(md, 'K_5')[3] == '86.59'
  saved = json.load(open(os.path.join(workdir, 'K_0', 'config.json')))
  assert saved['model']['prompt_type'] == 'none'
  assert os.path.getsize(os.path.join(workdir, 'accuracy_f1_vs_K.png')) > 1000
  # Finished rows are skipped; a changed row config is refused, naming the key.
  stamp = os.path.getmtime(os.path.join(workdir, 'K_5', 'results.json'))
  tables.run_table('fig5:K_5', smoke_config, workdir)
  assert os.path.getmtime(os.path.join(workdir, 'K_5', 'results.json')) == stamp
  changed = tables.row_config(smoke_config, {})
  changed.train.num_epochs = 2
  with pytest.raises(loso.RunError, match='num_epochs'):
    tables.run_table('fig5:K_5', changed, workdir)
  # Tables I-IV: our MPT row under the paper's methods of the dataset (from a finished row, as
  # if it were a SAMM run: the listing depends on the dataset alone).
  result = json.load(open(os.path.join(workdir, 'table.json')))
  row = dict(result['rows'][-1])
  for alias, dataset, n in (('II', 'samm', 14), ('I', 'casme2', 14), ('III', 'smic', 13)):
    pt = tables.main_tables(alias, dataset)
    fake = {'table': 'main', 'title': tables.TITLES['main'], 'dataset': dataset,
            'builder_config': '', 'note': None,
            'rows': [dict(row, paper=paper_results.paper_row(pt[0], 'MPT', dataset))],
            'paper_tables': [{'table': t, 'title': paper_results.PAPER[t]['title'],
                              'source': paper_results.PAPER[t]['source'],
                              'rows': [paper_results.paper_row(t, r, dataset)
                                       for r in paper_results.row_ids(t)]} for t in pt]}
    listing = tables.format_markdown(fake).split('## Ours beside the paper')[0]
    methods = [l for l in listing.splitlines() if l.startswith('| ') and not l.startswith(
        '| method')]
    assert len(methods) == n + 1 and methods[-1].startswith('| **MPT, mpt_jax (ours)**')
    if dataset == 'samm':
      assert '| μ-BERT | - | 83.86 |' in methods
  with pytest.raises(tables.TableError, match='SAMM'):
    tables.main_tables('II', 'casme2')
  assert tables.main_tables('main', 'synthetic_me') == []


def test_bad_requests_are_user_errors(tmp_path):
  with pytest.raises(tables.TableError, match='XII'):
    tables.parse_table_arg('XII')
  with pytest.raises(tables.TableError, match='K_2'):
    tables.parse_table_arg('fig5:K_2')
  assert tables.parse_table_arg('IV') == ('main', None)
  with pytest.raises(tables.TableError, match='B_32'):
    tables.parse_pretrained(['B_32'])
  with pytest.raises(wd.WorkdirError, match='results.json: missing'):
    figures.write_figures([str(tmp_path)])


def test_backbone_rows_never_reuse_the_base_checkpoint():
  config = synthetic.get_config(None)
  config.model.pretrained_path = '/w/ViT-B_16.npz'
  cfg = tables.row_config(config, {'vit': 'clip_B_16'}, {'clip_B_16': '/w/clip/model.safetensors'})
  assert cfg.model.pretrained_path == '/w/clip/model.safetensors' and cfg.model.input_norm == 'clip'
  assert tables.row_config(config, {'vit': 'B_32'}).model.pretrained_path == ''


def _fake_run(root, name, dataset, classes, cm):
  """A workdir holding only ``results.json`` (what Fig. 4 reads)."""
  path = os.path.join(root, name)
  os.makedirs(path)
  with open(os.path.join(path, 'results.json'), 'w') as f:
    json.dump({'dataset': dataset, 'classes': classes,
               'seeds': {'3': {'last_epoch': {'confusion_matrix': cm}}}}, f)
  return path


def test_fig4_confusions_in_the_papers_class_order(tmp_path):
  smic = _fake_run(str(tmp_path), 'smic_run', 'smic', ['negative', 'positive', 'surprise'],
                   [[5, 1, 0], [2, 7, 1], [0, 0, 4]])
  title, classes, cm = figures.paper_confusion(smic)
  # The paper lists SMIC as positive, negative, surprise; rows stay true classes.
  assert classes == ['positive', 'negative', 'surprise'] and 'SMIC-HS' in title and 'seed 3' in title
  assert cm.tolist() == [[7, 2, 1], [1, 5, 0], [0, 0, 4]]
  samm = _fake_run(str(tmp_path), 'samm_run', 'samm',
                   ['other', 'anger', 'contempt', 'happiness', 'surprise'], [[1] * 5] * 5)
  assert figures.paper_confusion(samm)[1] == ['anger', 'contempt', 'happiness', 'surprise', 'other']
  casme2 = _fake_run(str(tmp_path), 'casme2_run', 'casme2',
                     ['happiness', 'surprise', 'disgust', 'repression', 'others'],
                     [[2, 0, 0, 0, 0]] * 5)
  paths = figures.write_figures([casme2, samm, smic], str(tmp_path / 'figs'))
  assert [os.path.basename(p) for p in paths] == ['confusion_casme2_run_vs_samm_run_vs_smic_run.png']
  assert os.path.getsize(paths[0]) > 5000
