"""``--mode=table``: the paper's tables (and Fig. 5) as resumable LOSO sub-runs, beside the paper.

``python main.py --mode=table --table=X --config=configs/smic.py --workdir=runs/table10`` trains
every row of Table X as its own LOSO run in ``runs/table10/<row>/`` (the row's overrides applied to
``--config`` with :func:`apply_overrides`), then writes ``table.md`` and ``table.json``: our Acc and
F1 (mean ± std over seeds, last epoch), the oracle best-epoch numbers where the run recorded them,
#Tparas and GMACs (:mod:`mpt_jax.profile`), beside the paper's numbers (:mod:`mpt_jax.paper_results`)
and the difference in points.

A finished row (``results.json`` present, same config) is skipped; an unfinished one resumes fold by
fold (:mod:`mpt_jax.loso`); a row whose saved config differs is refused, naming the keys.
``--table=X:alpha_5,alpha_40`` runs only the named rows.

The grids are the paper's rows (:data:`TABLES`, built from :mod:`mpt_jax.paper_results`, so the two
cannot drift), in the paper's order; rows of ours (alpha 5 / 40, r 16 / 32, K 9) follow, marked
"ours", and run only when named. Tables V-XI and Fig. 5 are on SMIC-HS in the paper.

* ``main`` (aliases ``I``, ``II``, ``III`` for CASME II, SAMM, SMIC, and ``IV``, the
  transfer-learning methods): our MPT row on the dataset of ``--config``, under the paper's full
  list of methods for that dataset.
* ``V``: our MPT (#Tparas, GMACs, Acc, F1) beside the paper's six other methods and its MPT.
* ``VI`` strategies, ``VII`` prompts, ``VIII`` adapters, ``IX`` backbones (checkpoints per
  backbone through ``--pretrained=B_32=/p/ViT-B_32.npz,clip_B_16=/p/model.safetensors``; ``B_16``
  uses ``config.model.pretrained_path``), ``X`` alpha, ``XI`` r, ``fig5`` K (also writes
  ``accuracy_f1_vs_K.png`` with the paper's one printed point, K = 5).
"""

import json
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import ml_collections

from mpt_jax import errors
from mpt_jax import paper_results
from mpt_jax import partition
from mpt_jax import workdir as wd


class TableRow(NamedTuple):
  id: str  # row id, also the row's folder name
  overrides: Dict[str, Any]  # ablation overrides (:func:`apply_overrides` keys)
  ours: bool  # a row of ours beyond the paper's grid (runs only when named)


# Ablation key of each table's rows (the part of the row id before ``_`` for X, XI and Fig. 5).
_KEY = {'VI': 'strategy', 'VII': 'prompt', 'VIII': 'adapter', 'IX': 'vit', 'X': 'alpha',
        'XI': 'r', 'fig5': 'K'}
# Rows of ours, after the paper's.
_OURS = {'X': ('alpha_5', 'alpha_40'), 'XI': ('r_16', 'r_32'), 'fig5': ('K_9',)}
# Tables of our MPT row under the paper's list of methods (the dataset comes from --config).
MAIN_ALIASES = ('I', 'II', 'III', 'IV')


def _overrides(table: str, row_id: str) -> Dict[str, Any]:
  key = _KEY[table]
  if key in ('alpha', 'r', 'K'):
    return {key: int(row_id.rsplit('_', 1)[1])}
  return {key: row_id}


def _grid(table: str) -> List[TableRow]:
  paper = [TableRow(r, _overrides(table, r), False) for r in paper_results.row_ids(table)]
  return paper + [TableRow(r, _overrides(table, r), True) for r in _OURS.get(table, ())]


TABLES: Dict[str, List[TableRow]] = {
    'main': [TableRow('mpt', {}, False)],
    'V': [TableRow('mpt', {}, False)],
    **{t: _grid(t) for t in ('VI', 'VII', 'VIII', 'IX', 'X', 'XI', 'fig5')},
}
TITLES = {'main': 'Tables I-IV: state of the art', **{
    t: paper_results.PAPER[t]['title'] for t in ('V', 'VI', 'VII', 'VIII', 'IX', 'X', 'XI', 'fig5')}}

# Ablation keys (``--config=configs/ablations.py:key=value,...`` and the rows above).
ABLATION_KEYS = ('strategy', 'prompt', 'adapter', 'vit', 'alpha', 'r', 'K', 'input')


class TableError(errors.UserError):
  """A table request that cannot run (the message names the table, row or key)."""


def apply_overrides(config: ml_collections.ConfigDict, values: Dict[str, Any]):
  """Applies ablation ``key=value`` overrides (:data:`ABLATION_KEYS`) to a config, in place.

  ``K=0`` means no motion prompts (``prompt_type='none'``; the group adapter keeps its class and
  patch branches). A row whose settings contradict each other fails here, naming the keys.
  """
  m = config.model
  if 'strategy' in values:
    # The strategy brings its architecture; a dataset config's explicit prompt/adapter choice
    # (the synthetic demo's full MPT model) gives way to the row's strategy.
    m.training_strategy = values['strategy']
    m.prompt_type, m.adapter_type = '', ''
  if 'prompt' in values:
    m.prompt_type = values['prompt']
  if 'adapter' in values:
    m.adapter_type = values['adapter']
  if 'vit' in values:
    m.vit = values['vit']
    if str(values['vit']).startswith('clip_'):
      m.input_norm = 'clip'  # CLIP's own mean/std normalisation
  if 'alpha' in values:
    m.magnification.alpha = float(values['alpha'])
  if 'r' in values:
    m.adapter_reduction = int(values['r'])
  if 'K' in values:
    if int(values['K']) == 0:
      m.prompt_type = 'none'
    else:
      m.num_prompts = int(values['K'])
  if 'input' in values:
    m.input_modality = values['input']
  partition.resolve_architecture(m)  # a contradicting row fails here, naming the keys
  return config


def parse_table_arg(arg: str) -> Tuple[str, Optional[List[str]]]:
  """``'VI'`` or ``'X:alpha_5,alpha_40'`` -> (table, rows or None); I-IV -> ``main``."""
  name, _, rows = str(arg).partition(':')
  name = name.strip()
  if name in MAIN_ALIASES:
    name = 'main'
  if name not in TABLES:
    raise TableError(f'--table: unknown table {name!r}; known: '
                     f'{", ".join(list(TABLES) + list(MAIN_ALIASES))}')
  if not rows:
    return name, None
  wanted = [r.strip() for r in rows.split(',') if r.strip()]
  known = [r.id for r in TABLES[name]]
  unknown = [r for r in wanted if r not in known]
  if unknown:
    raise TableError(f'--table={arg}: unknown row(s) {unknown} of table {name}; known: {known}')
  return name, wanted


def main_tables(arg: str, dataset: str) -> List[str]:
  """The paper tables whose methods a ``main`` request lists for ``dataset`` (refuses a mismatch)."""
  alias = str(arg).partition(':')[0].strip()
  own = paper_results.MAIN_TABLE.get(dataset)
  if alias in ('I', 'II', 'III') and alias != own:
    expected = paper_results.PAPER[alias]['dataset']
    raise TableError(f'--table={alias} is the paper\'s {paper_results.DATASETS[expected]["name"]} '
                     f'table, but --config is dataset {dataset!r}: use --table=main (or '
                     f'{own or "none: the paper has no table for it"})')
  if own is None:
    return []
  return ['IV'] if alias == 'IV' else [own]


def _paper_for(name: str, row_id: str, paper_tables: Sequence[str],
               dataset: str) -> Optional[Dict[str, Any]]:
  """The paper's numbers for one of our rows (its MPT row for ``main`` and ``V``)."""
  if name not in ('main', 'V'):
    return paper_results.paper_row(name, row_id)
  if not paper_tables:
    return None
  row = paper_results.paper_row(paper_tables[0], 'MPT', dataset)
  cost = paper_results.paper_row('V', 'MPT')  # the same model's #Tparas and GFLOPs (Table V)
  return {**row, 'tparas_m': cost['tparas_m'], 'gflops': cost['gflops']}


def row_config(config: ml_collections.ConfigDict, overrides: Dict[str, Any],
               pretrained: Optional[Dict[str, str]] = None) -> ml_collections.ConfigDict:
  """``config`` with one row's ablation overrides (and, for a backbone row, its checkpoint)."""
  cfg = ml_collections.ConfigDict(json.loads(config.to_json()))
  cfg.data.subjects = tuple(cfg.data.subjects)
  apply_overrides(cfg, overrides)
  vit_name = overrides.get('vit')
  if vit_name is not None and vit_name != config.model.vit:
    # Another backbone needs its own checkpoint; never reuse the base one (wrong shapes or family).
    cfg.model.pretrained_path = (pretrained or {}).get(vit_name, '')
  return cfg


def _profile(cfg: ml_collections.ConfigDict, rowdir: str) -> Dict[str, Any]:
  """The row's profile (cached in ``<row>/profile.json``)."""
  from mpt_jax import profile  # pylint: disable=g-import-not-at-top
  path = os.path.join(rowdir, 'profile.json')
  if os.path.exists(path):
    cached = wd.read_json(path)
    if cached.get('config_json') == cfg.model.to_json():
      return cached
  prof = profile.profile(cfg)
  prof['config_json'] = cfg.model.to_json()
  wd.write_json(path, prof)
  return prof


def run_table(table_arg: str, config: ml_collections.ConfigDict, workdir: str,
              pretrained: Optional[Dict[str, str]] = None) -> str:
  """Runs (or resumes) every row of a table and writes ``table.md`` / ``table.json``.

  Args:
    table_arg: ``'VI'``, ``'X:alpha_5'``, ``'main'`` or ``'I'``..``'IV'``.
    config: the base config (dataset, paths, training settings).
    workdir: the table's folder; row ``r`` runs in ``workdir/r``.
    pretrained: checkpoint per backbone for Table IX rows (``{'B_32': path, ...}``).

  Returns:
    The markdown table.
  """
  # pylint: disable=g-import-not-at-top
  from mpt_jax import figures
  from mpt_jax import loso
  name, wanted = parse_table_arg(table_arg)
  dataset = config.data.name
  paper_tables: List[str] = []  # the paper's tables listed in full above our rows
  if name == 'main':
    paper_tables = main_tables(table_arg, dataset)
  elif name == 'V':
    paper_tables = ['V']
  rows = [r for r in TABLES[name] if (r.id in wanted if wanted is not None else not r.ours)]
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  data_cache: Dict[str, Any] = {}
  records = []
  for i, row in enumerate(rows):
    cfg = row_config(config, row.overrides, pretrained)
    rowdir = os.path.join(workdir, row.id)
    loso.run_in_sweep(cfg, rowdir, data_cache, f'Table {name} row {row.id} ({i + 1}/{len(rows)})')
    summary = wd.read_results(rowdir)
    prof = _profile(cfg, rowdir)
    records.append({
        'row': row.id, 'ours_only': row.ours, 'overrides': row.overrides, 'workdir': rowdir,
        'accuracy': summary['last_epoch_over_seeds']['accuracy'],
        'f1': summary['last_epoch_over_seeds']['uf1'],
        'oracle': summary.get('oracle_best_epoch_over_seeds'),
        'tparas': prof['trainable_params'], 'gmacs': prof['gmacs'], 'gflops_xla': prof['gflops'],
        'paper': None if row.ours else _paper_for(name, row.id, paper_tables, dataset)})
  result = {'table': name, 'title': TITLES[name], 'dataset': dataset,
            'builder_config': config.data.builder_config,
            'paper_tables': [{'table': t, 'title': paper_results.PAPER[t]['title'],
                              'source': paper_results.PAPER[t]['source'],
                              'rows': [paper_results.paper_row(t, r, dataset)
                                       for r in paper_results.row_ids(t)]}
                             for t in paper_tables],
            'note': paper_results.PAPER.get(name, {}).get('note'),
            'rows': records}
  if name == 'fig5' and len(records) > 1:
    path = os.path.join(workdir, 'accuracy_f1_vs_K.png')
    figures.plot_k_sweep([r['workdir'] for r in records], path)
    result['figure'] = path
  md = format_markdown(result)
  wd.write_json(os.path.join(workdir, 'table.json'), result)
  with open(os.path.join(workdir, 'table.md'), 'w') as f:
    f.write(md)
  return md


def _pct(v: Optional[float]) -> str:
  return '-' if v is None else f'{v:.2f}'


def _ours(ms: Optional[Dict[str, float]]) -> str:
  """Mean (± std over seeds when there are several) in %."""
  if not ms:
    return '-'
  if ms.get('n', 1) > 1:
    return f'{100 * ms["mean"]:.2f} ± {100 * ms["std"]:.2f}'
  return f'{100 * ms["mean"]:.2f}'


def _delta(ms: Optional[Dict[str, float]], paper: Optional[float]) -> str:
  if not ms or paper is None:
    return '-'
  return f'{100 * ms["mean"] - paper:+.2f}'


def _pair(ours: str, paper: Optional[float], digits: int) -> str:
  return f'{ours} / {"-" if paper is None else f"{paper:.{digits}f}"}'


def _seeds_note(rows: Sequence[Dict[str, Any]]) -> str:
  seeds = sorted({int(r['accuracy'].get('n', 1)) for r in rows})
  if seeds == [1]:
    return 'one seed'
  ddof = rows[0]['accuracy'].get('ddof', 0)
  return (f'mean ± std over {" or ".join(map(str, seeds))} seeds (standard deviation with '
          f'ddof = {ddof})')


def format_markdown(result: Dict[str, Any]) -> str:
  """The ``table.md`` text of a :func:`run_table` result."""
  rows = result['rows']
  where = result['dataset'] + (f', {result["builder_config"]}' if result['builder_config'] else '')
  lines = [f'# {result["title"]}', '',
           f'Ours: mpt_jax on {where}; Acc and F1 (UF1) in %, LOSO, all folds concatenated, model '
           f'after the last epoch, {_seeds_note(rows)}. Δ = ours − paper, in points. GMACs: '
           'multiply-accumulates per clip (what the paper calls GFLOPs). #Tparas in millions.']
  if result['table'] not in ('main',):
    paper_ds = paper_results.DATASETS['smic']['name']
    lines.append(f'Paper: {paper_results.PAPER[result["table"]]["source"]}, on {paper_ds}'
                 + ('' if result['dataset'] == 'smic' else
                    f' (this run is on {result["dataset"]}: compare with care)') + '.')
  if result.get('note'):
    lines += ['', result['note']]
  for pt in result['paper_tables']:
    lines += ['', f'## {pt["title"]} ({pt["source"]}), with ours', '']
    ours = rows[0]
    if pt['table'] == 'V':
      lines += ['| method | #Tparas (M) | GFLOPs | Acc | F1 |', '|---|---|---|---|---|']
      lines += [f'| {p["label"]} | {p["tparas_m"]} | {p["gflops"]} | {_pct(p["acc"])} | '
                f'{_pct(p["f1"])} |' for p in pt['rows']]
      lines.append(f'| **MPT, mpt_jax (ours)** | {ours["tparas"] / 1e6:.3f} | '
                   f'{ours["gmacs"]:.3g} (GMACs) | {_ours(ours["accuracy"])} | '
                   f'{_ours(ours["f1"])} |')
    else:
      lines += ['| method | Acc | F1 |', '|---|---|---|']
      lines += [f'| {p["label"]} | {_pct(p["acc"])} | {_pct(p["f1"])} |' for p in pt['rows']]
      lines.append(f'| **MPT, mpt_jax (ours)** | {_ours(ours["accuracy"])} | '
                   f'{_ours(ours["f1"])} |')
  if result['table'] == 'main' and not result['paper_tables']:
    lines += ['', f'The paper reports no result on {result["dataset"]}: ours alone.']
  has_oracle = any(r.get('oracle') for r in rows)
  head = ['row', "paper's row", 'Acc', 'paper Acc', 'Δ Acc', 'F1', 'paper F1', 'Δ F1']
  head += ['ORACLE best-epoch Acc / F1 (peeks at the test subject)'] if has_oracle else []
  head += ['#Tparas ours / paper', 'GMACs ours / paper']
  lines += ['', '## Ours beside the paper' if result['paper_tables'] or result['table'] != 'main'
            else '## Ours', '', '| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head)]
  for r in rows:
    p = r['paper'] or {}
    label = f'{r["row"]} (ours)' if r['ours_only'] else r['row']
    if result['table'] in ('main', 'V'):
      label = 'MPT, mpt_jax'
    cells = [label, p.get('label', '-' if r['ours_only'] else 'n/a'),
             _ours(r['accuracy']), _pct(p.get('acc')), _delta(r['accuracy'], p.get('acc')),
             _ours(r['f1']), _pct(p.get('f1')), _delta(r['f1'], p.get('f1'))]
    if has_oracle:
      cells.append(f'{_ours(r["oracle"]["accuracy"])} / {_ours(r["oracle"]["uf1"])}'
                   if r.get('oracle') else '-')
    cells += [_pair(f'{r["tparas"] / 1e6:.3f}', p.get('tparas_m'), 3 if (p.get('tparas_m') or 1) < 0.1
                    else 1),
              _pair(f'{r["gmacs"]:.3g}', p.get('gflops'), 1)]
    lines.append('| ' + ' | '.join(cells) + ' |')
  if result['table'] == 'fig5':
    lines += ['', 'Rows whose paper value is "n/a": the paper draws them only as bars (see above).']
  if result.get('figure'):
    lines += ['', f'![accuracy and F1 vs K]({os.path.basename(result["figure"])})']
  return '\n'.join(lines) + '\n'


def parse_pretrained(items: Sequence[str]) -> Dict[str, str]:
  """``['B_32=/p/a.npz', 'clip_B_16=/p/model.safetensors']`` -> dict (for ``--pretrained``)."""
  out = {}
  for item in items:
    key, sep, path = item.partition('=')
    if not sep or not key.strip() or not path.strip():
      raise TableError(f'--pretrained: expected BACKBONE=PATH, got {item!r}')
    out[key.strip()] = path.strip()
  return out
