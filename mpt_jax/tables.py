"""``--mode=table``: a paper table (or Fig. 5) as resumable LOSO sub-runs, beside the paper.

``python main.py --mode=table --table=VI --config=configs/smic.py --workdir=runs/table6`` trains
every row of Table VI as its own LOSO run in ``runs/table6/<row>/`` (the row's overrides applied to
``--config`` with :func:`configs.ablations.apply_overrides`), then writes ``table.md`` and
``table.json`` with our Acc and F1 (mean ± std over seeds, last epoch), #Tparas and GFLOPs (from
:mod:`mpt_jax.profile`; the paper's GFLOPs are multiply-accumulates, so our ``gmacs`` is printed)
beside the paper's published numbers (:mod:`mpt_jax.paper_results`; ``n/a`` where unknown).

A finished row (``results.json`` present, same config) is skipped; an unfinished one resumes fold by
fold (see :mod:`mpt_jax.loso`); a row whose saved config differs is refused, naming the keys.
``--table=VI:mpt,linear_probe`` runs only the named rows.

Rows (the paper's Tables V-XI and Fig. 5 are on SMIC-HS; ``main`` is the MPT row of Tables I-IV for
the dataset of ``--config``). The grids of Tables X, XI and Fig. 5 are ours: the paper's full text,
and hence its exact grids, were not available.

* ``V`` efficiency: ``mpt``, ``full_finetune``, ``linear_probe``
* ``VI`` strategies: ``scratch``, ``full_finetune``, ``linear_probe``, ``prompt_only``,
  ``adapter_only``, ``mpt``
* ``VII`` prompts: ``none``, ``vpt_shallow``, ``vpt_deep``, ``motion``
* ``VIII`` adapters: ``none``, ``shared``, ``group``
* ``IX`` backbones: ``B_16``, ``B_32``, ``clip_B_16``, ``clip_B_32`` (checkpoints per backbone: the
  ``pretrained`` argument / ``--pretrained=B_32=/p/ViT-B_32.npz,clip_B_16=/p/model.safetensors``;
  ``B_16`` uses ``config.model.pretrained_path``)
* ``X`` alpha: ``alpha_5``, ``alpha_10``, ``alpha_20``, ``alpha_30``, ``alpha_40``
* ``XI`` r: ``r_4``, ``r_8``, ``r_16``, ``r_32``
* ``fig5`` K: ``K_1``, ``K_3``, ``K_5``, ``K_7``, ``K_9`` (also writes ``accuracy_f1_vs_K.png``)
* ``main``: ``mpt``
"""

import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ml_collections
from absl import logging

from mpt_jax import errors
from mpt_jax import paper_results
from mpt_jax import workdir as wd

Row = Tuple[str, Dict[str, Any]]

TABLES: Dict[str, List[Row]] = {
    'V': [('mpt', {}), ('full_finetune', {'strategy': 'full_finetune'}),
          ('linear_probe', {'strategy': 'linear_probe'})],
    'VI': [(s, {'strategy': s}) for s in ('scratch', 'full_finetune', 'linear_probe',
                                         'prompt_only', 'adapter_only', 'mpt')],
    'VII': [(p, {'prompt': p}) for p in ('none', 'vpt_shallow', 'vpt_deep', 'motion')],
    'VIII': [(a, {'adapter': a}) for a in ('none', 'shared', 'group')],
    'IX': [(v, {'vit': v}) for v in ('B_16', 'B_32', 'clip_B_16', 'clip_B_32')],
    'X': [(f'alpha_{a}', {'alpha': a}) for a in (5, 10, 20, 30, 40)],
    'XI': [(f'r_{r}', {'r': r}) for r in (4, 8, 16, 32)],
    'fig5': [(f'K_{k}', {'K': k}) for k in (1, 3, 5, 7, 9)],
    'main': [('mpt', {})],
}
TITLES = {'V': 'Table V: efficiency', 'VI': 'Table VI: training strategies',
          'VII': 'Table VII: prompts', 'VIII': 'Table VIII: adapters',
          'IX': 'Table IX: backbones', 'X': 'Table X: amplification alpha',
          'XI': 'Table XI: adapter reduction r', 'fig5': 'Fig. 5: number of motion prompts K',
          'main': 'Tables I-IV: main result'}


class TableError(errors.UserError):
  """A table request that cannot run (the message names the table, row or key)."""


def parse_table_arg(arg: str) -> Tuple[str, Optional[List[str]]]:
  """``'VI'`` or ``'VI:mpt,linear_probe'`` -> (table, rows or None)."""
  name, _, rows = str(arg).partition(':')
  name = name.strip()
  if name not in TABLES:
    raise TableError(f'--table: unknown table {name!r}; known: {", ".join(TABLES)}')
  if not rows:
    return name, None
  wanted = [r.strip() for r in rows.split(',') if r.strip()]
  known = [r for r, _ in TABLES[name]]
  unknown = [r for r in wanted if r not in known]
  if unknown:
    raise TableError(f'--table={arg}: unknown row(s) {unknown} of table {name}; known: {known}')
  return name, wanted


def row_config(config: ml_collections.ConfigDict, overrides: Dict[str, Any],
               pretrained: Optional[Dict[str, str]] = None) -> ml_collections.ConfigDict:
  """``config`` with one row's ablation overrides (and, for a backbone row, its checkpoint)."""
  from configs import ablations  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict(json.loads(config.to_json()))
  cfg.data.subjects = tuple(cfg.data.subjects)
  ablations.apply_overrides(cfg, {k: str(v) for k, v in overrides.items()})
  vit_name = overrides.get('vit')
  if vit_name is not None and vit_name != config.model.vit:
    # Another backbone needs its own checkpoint; never reuse the base one (wrong shapes or family).
    cfg.model.pretrained_path = (pretrained or {}).get(vit_name, '')
  return cfg


def _fmt(ms: Optional[Dict[str, float]]) -> str:
  if not ms:
    return 'n/a'
  if ms.get('n', 1) > 1:
    return f'{100 * ms["mean"]:.2f} ± {100 * ms["std"]:.2f}'
  return f'{100 * ms["mean"]:.2f}'


def _na(v: Optional[float], digits: int = 1) -> str:
  return 'n/a' if v is None else f'{v:.{digits}f}'


def _profile(cfg: ml_collections.ConfigDict, rowdir: str) -> Dict[str, Any]:
  """The row's profile (cached in ``<row>/profile.json``)."""
  from mpt_jax import loso  # pylint: disable=g-import-not-at-top
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
    table_arg: ``'VI'`` or ``'VI:row,row'``.
    config: the base config (dataset, paths, training settings).
    workdir: the table's folder; row ``r`` runs in ``workdir/r``.
    pretrained: checkpoint per backbone for Table IX rows (``{'B_32': path, ...}``).

  Returns:
    The markdown table.
  """
  # pylint: disable=g-import-not-at-top
  from mpt_jax import figures
  from mpt_jax import input_pipeline
  from mpt_jax import loso
  name, wanted = parse_table_arg(table_arg)
  rows = [(r, o) for r, o in TABLES[name] if wanted is None or r in wanted]
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  data_cache: Dict[str, Any] = {}
  records = []
  for i, (row_id, overrides) in enumerate(rows):
    cfg = row_config(config, overrides, pretrained)
    rowdir = os.path.join(workdir, row_id)
    os.makedirs(rowdir, exist_ok=True)
    wd.compare_config(cfg, rowdir)  # refuses a changed row config, naming the keys
    if os.path.exists(os.path.join(rowdir, 'results.json')):
      logging.info('Table %s row %s (%d/%d): finished, skipped', name, row_id, i + 1, len(rows))
    else:
      logging.info('Table %s row %s (%d/%d): LOSO in %s', name, row_id, i + 1, len(rows), rowdir)
      key = repr((cfg.data.to_json(), int(cfg.model.num_frames), int(cfg.model.image_size)))
      if key not in data_cache:
        data_cache[key] = input_pipeline.load(cfg)
      loso.train_and_evaluate(cfg, rowdir, data=data_cache[key])
    ours = figures.run_metrics(rowdir)
    prof = _profile(cfg, rowdir)
    records.append({
        'row': row_id, 'overrides': overrides, 'workdir': rowdir,
        'accuracy': ours.get('accuracy'), 'f1': ours.get('uf1'),
        'tparas': prof['trainable_params'], 'gmacs': prof['gmacs'], 'gflops_xla': prof['gflops'],
        'paper': paper_results.paper_row(name, row_id)})
  result = {'table': name, 'title': TITLES[name], 'dataset': config.data.name,
            'builder_config': config.data.builder_config, 'paper_source': paper_results.SOURCE,
            'metric_note': 'Acc and F1 (UF1) in %, last epoch, all folds concatenated, mean ± std '
                           'over seeds; GFLOPs are multiply-accumulates (the paper\'s convention)',
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


def format_markdown(result: Dict[str, Any]) -> str:
  """The ``table.md`` text of a :func:`run_table` result."""
  lines = [f'# {result["title"]} ({result["dataset"]}'
           + (f', {result["builder_config"]}' if result['builder_config'] else '') + ')', '',
           'The paper reports Tables V-XI and Fig. 5 on SMIC-HS. ' + result['metric_note'] + '.',
           f'Paper numbers: {result["paper_source"]}.', '',
           '| row | overrides | Acc | F1 | #Tparas (M) | GFLOPs | paper Acc | paper F1 | '
           'paper #Tparas (M) | paper GFLOPs |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    p = r['paper']
    over = ', '.join(f'{k}={v}' for k, v in r['overrides'].items()) or '(default)'
    lines.append(f'| {r["row"]} | {over} | {_fmt(r["accuracy"])} | {_fmt(r["f1"])} | '
                 f'{r["tparas"] / 1e6:.3f} | {r["gmacs"]:.2f} | {_na(p["acc"], 2)} | '
                 f'{_na(p["f1"], 2)} | {_na(p["tparas_m"])} | {_na(p["gflops"])} |')
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
