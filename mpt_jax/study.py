"""``--mode=study``: a grid of variants x seeds, each a resumable LOSO run, with paired statistics.

``python main.py --mode=study --config=configs/synthetic.py --study=prompts --seeds=5
--workdir=runs/study_prompts`` trains every variant of the study :data:`STUDIES` ``['prompts']``
with the seeds ``config.seed .. config.seed + seeds - 1``. Each (variant, seed) is its own LOSO run
in ``<workdir>/<variant>/seed_<s>/`` (``config.seed = s``, ``config.num_seeds = 1``), trained by
:func:`mpt_jax.loso.train_and_evaluate`: a finished run (``results.json`` present) is skipped, an
unfinished one resumes fold by fold, and a run whose saved config differs is refused, naming the
keys (as ``--mode=table`` does). ``--study=K:K_5,K_1`` runs only the named variants (the first
named is then the baseline).

It writes ``study.md`` and ``study.json``:

* per variant, Acc and UF1 (last epoch, all folds concatenated) as mean ± standard deviation over
  the seeds, with the sample standard deviation (ddof = 1);
* per variant against the baseline (the study's first variant), the paired per-seed difference
  ``variant - baseline`` over the seeds both have (same seeds, hence the same initialisation stream
  and data order, and the same LOSO folds: refused if the held-out subjects differ), its mean, and
  the 95 % Student-t interval ``mean ± t_{0.975, n-1} · sd / sqrt(n)`` (``scipy.stats.t``), which
  is the interval of the paired t-test. With one seed there is no interval (``n/a``).

A variant is a dict of config overrides: the ablation keys of :mod:`configs.ablations`
(``prompt``, ``K``, ``alpha``, ``strategy``, ...) and dotted config keys
(``model.tokenizer_init``, ``model.dtype``, ``train.num_epochs``): the value is converted to the
type of the config's current value.
"""

import math
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import ml_collections
import numpy as np
from scipy import stats

from mpt_jax import errors
from mpt_jax import workdir as wd

Variant = Tuple[str, Dict[str, Any]]

STD_DDOF = 1  # Sample standard deviation over seeds (the one the t interval uses).
CONFIDENCE = 0.95

# The study grids. The first variant of each is its baseline (the current default).
STUDIES: Dict[str, List[Variant]] = {
    # The key comparison: motion prompts against the same model without prompts.
    'prompts': [('mpt', {}), ('no_prompts', {'prompt': 'none'})],
    # The tokenizer's start: centres (spread / middle) x initial width (T/(2K), T/K, the narrow
    # ~1.19 frames of zero biases); models/tokenizer.py INITS.
    'tokenizer_init': [('middle', {'model.tokenizer_init': 'middle'}),
                       ('spread', {'model.tokenizer_init': 'spread'}),
                       ('spread_narrow', {'model.tokenizer_init': 'spread_narrow'}),
                       ('middle_half', {'model.tokenizer_init': 'middle_half'}),
                       ('spread_full', {'model.tokenizer_init': 'spread_full'})],
    # Where the tokenizer averages a frame's conv features: the paper's mean over the frame
    # against the same model without prompts and a 4 x 4 grid of cell means (models/tokenizer.py).
    'tokenizer_grid': [('mpt', {}), ('no_prompts', {'prompt': 'none'}),
                       ('grid_4', {'model.tokenizer_grid': 4})],
    'K': [('K_5', {'K': 5}), ('K_0', {'prompt': 'none'}), ('K_1', {'K': 1}), ('K_3', {'K': 3}),
          ('K_7', {'K': 7})],
    'alpha': [('alpha_20', {'alpha': 20}), ('alpha_0', {'alpha': 0}), ('alpha_10', {'alpha': 10}),
              ('alpha_30', {'alpha': 30}), ('alpha_50', {'alpha': 50})],
    'dtype': [('float32', {}), ('bfloat16', {'model.dtype': 'bfloat16'})],
    'pyr_up': [('cv2_border', {}),
               ('reflect_border', {'model.magnification.pyr_up_border': 'reflect'})],
    # Changes since an earlier MPT result that a config can undo: the motion cache (on on CPUs),
    # the epoch loop on the host (CPUs), the class-token-only last block, the pyr_up border fix,
    # the spread tokenizer start (the default from then until the tokenizer_init study). Each should be exact or nearly so; a study says whether it is.
    'regression': [('current', {}), ('motion_cache_off', {'train.motion_cache': 'off'}),
                   ('epoch_loop_device', {'train.epoch_loop': 'device'}),
                   ('full_last_block', {'model.cls_only_last_block': 'false'}),
                   ('reflect_border', {'model.magnification.pyr_up_border': 'reflect'}),
                   ('spread_init', {'model.tokenizer_init': 'spread'})],
    # A smoke grid for the tests: 2 variants that compile to the same programs (only the initial
    # tokenizer biases differ), so the persistent compilation cache serves all but the first run.
    'smoke': [('spread', {'model.tokenizer_init': 'spread'}),
              ('middle', {'model.tokenizer_init': 'middle'})],
}


class StudyError(errors.UserError):
  """A study request that cannot run (the message names the study, variant or key)."""


def parse_study_arg(arg: str) -> Tuple[str, List[Variant]]:
  """``'K'`` or ``'K:K_5,K_1'`` -> (study name, variants in order; the first is the baseline)."""
  name, _, wanted = str(arg or '').partition(':')
  name = name.strip()
  if name not in STUDIES:
    raise StudyError(f'--study: unknown study {name!r}; known: {", ".join(STUDIES)}')
  variants = STUDIES[name]
  if not wanted:
    return name, list(variants)
  ids = [v.strip() for v in wanted.split(',') if v.strip()]
  known = dict(variants)
  unknown = [v for v in ids if v not in known]
  if unknown:
    raise StudyError(f'--study={arg}: unknown variant(s) {unknown} of study {name}; '
                     f'known: {list(known)}')
  return name, [(v, known[v]) for v in ids]


def _convert(key: str, current: Any, value: Any) -> Any:
  """``value`` (often a string) as the type of the config's ``current`` value."""
  if not isinstance(value, str):
    return value
  if isinstance(current, bool):
    if value.lower() in ('true', '1', 'yes'):
      return True
    if value.lower() in ('false', '0', 'no'):
      return False
    raise StudyError(f'study override {key}={value!r}: expected true or false')
  try:
    if isinstance(current, int):
      return int(value)
    if isinstance(current, float):
      return float(value)
  except ValueError:
    raise StudyError(f'study override {key}={value!r}: expected a {type(current).__name__}') from None
  return value


def variant_config(config: ml_collections.ConfigDict, overrides: Dict[str, Any],
                   seed: int) -> ml_collections.ConfigDict:
  """``config`` with one variant's overrides, for one seed (``num_seeds = 1``)."""
  from mpt_jax import partition  # pylint: disable=g-import-not-at-top
  from mpt_jax import tables  # pylint: disable=g-import-not-at-top
  ablation = {k: v for k, v in overrides.items() if '.' not in k}
  dotted = {k: v for k, v in overrides.items() if '.' in k}
  cfg = tables.row_config(config, ablation)
  for key, value in dotted.items():
    *path, leaf = key.split('.')
    node = cfg
    for part in path:
      if part not in node or not isinstance(node[part], ml_collections.ConfigDict):
        raise StudyError(f'study override {key}: no config section {part!r} (every key is listed '
                         'in configs/common.py)')
      node = node[part]
    if leaf not in node:
      raise StudyError(f'study override {key}: no such config key (every key is listed in '
                       'configs/common.py)')
    node[leaf] = _convert(key, node[leaf], value)
  partition.resolve_architecture(cfg.model)  # a contradicting override fails here, naming keys
  cfg.seed = int(seed)
  cfg.num_seeds = 1
  return cfg


def run_dir(workdir: str, variant: str, seed: int) -> str:
  return os.path.join(workdir, variant, f'seed_{seed}')


def paired_difference(variant: Sequence[float], baseline: Sequence[float],
                      confidence: float = CONFIDENCE) -> Dict[str, Any]:
  """Mean of the paired differences ``variant - baseline`` and its Student-t interval.

  Returns:
    ``{'n', 'mean', 'sd' (ddof 1), 'low', 'high', 'confidence'}``; with one pair ``sd``, ``low``
    and ``high`` are None (no interval from one difference).
  """
  d = np.asarray(variant, np.float64) - np.asarray(baseline, np.float64)
  n = int(d.size)
  if n == 0:
    raise StudyError('paired difference of no seeds')
  mean = float(d.mean())
  if n < 2:
    return {'n': n, 'mean': mean, 'sd': None, 'low': None, 'high': None, 'confidence': confidence}
  sd = float(d.std(ddof=1))
  half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
  return {'n': n, 'mean': mean, 'sd': sd, 'low': mean - half, 'high': mean + half,
          'confidence': confidence}


def _mean_std(values: Sequence[float]) -> Dict[str, Any]:
  v = np.asarray(values, np.float64)
  std = float(v.std(ddof=STD_DDOF)) if v.size > STD_DDOF else None
  return {'mean': float(v.mean()), 'std': std, 'n': int(v.size), 'ddof': STD_DDOF}


def _seed_record(rundir: str, seed: int) -> Dict[str, Any]:
  summary = wd.read_json(os.path.join(rundir, 'results.json'))
  entry = summary['seeds'][str(seed)]
  return {'accuracy': entry['last_epoch']['accuracy'], 'uf1': entry['last_epoch']['uf1'],
          'subjects': [f['subject'] for f in entry['folds']],
          'n': int(sum(f['n'] for f in entry['folds']))}


def run_study(study_arg: str, config: ml_collections.ConfigDict, workdir: str, seeds: int,
              command: str = '') -> str:
  """Runs (or resumes) every (variant, seed) of a study and writes ``study.md`` / ``study.json``.

  Args:
    study_arg: ``'prompts'`` or ``'K:K_5,K_1'``.
    config: the base config (dataset, training settings); its ``seed`` is the first seed.
    workdir: the study's folder.
    seeds: how many seeds (``config.seed .. config.seed + seeds - 1``).
    command: the command line, recorded in ``study.md``.

  Returns:
    The markdown text.
  """
  from mpt_jax import loso  # pylint: disable=g-import-not-at-top
  name, variants = parse_study_arg(study_arg)
  if int(seeds) < 1:
    raise StudyError(f'--seeds must be at least 1, got {seeds}')
  seed_list = [int(config.seed) + s for s in range(int(seeds))]
  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  # Every config first (a bad override fails before anything trains).
  # Seed-major: every variant of a seed before the next seed, so the pairs complete early.
  cfgs = {(v, s): variant_config(config, o, s) for s in seed_list for v, o in variants}
  data_cache: Dict[str, Any] = {}
  records = {v: {} for v, _ in variants}
  total = len(cfgs)
  for i, ((variant, seed), cfg) in enumerate(cfgs.items()):
    rundir = run_dir(workdir, variant, seed)
    timing_path = os.path.join(rundir, 'study_timing.json')
    seconds = loso.run_in_sweep(cfg, rundir, data_cache,
                                f'Study {name}, {variant} seed {seed} ({i + 1}/{total})')
    if seconds is not None:
      # Wall time of this call (a resumed run counts only what it trained now).
      wd.write_json(timing_path, {'seconds': seconds, 'resumed': False})
    rec = _seed_record(rundir, seed)
    if os.path.exists(timing_path):
      rec['seconds'] = wd.read_json(timing_path)['seconds']
    records[variant][seed] = rec
  result = summarise(name, variants, records, config, seed_list)
  result['command'] = command
  md = format_markdown(result)
  wd.write_json(os.path.join(workdir, 'study.json'), result)
  with open(os.path.join(workdir, 'study.md'), 'w') as f:
    f.write(md)
  return md


def summarise(name: str, variants: Sequence[Variant], records: Dict[str, Dict[int, Dict[str, Any]]],
              config: ml_collections.ConfigDict, seed_list: Sequence[int]) -> Dict[str, Any]:
  """The ``study.json`` record: per-variant mean ± std and paired differences to the baseline."""
  base_id = variants[0][0]
  base = records[base_id]
  rows = []
  for variant, overrides in variants:
    recs = records[variant]
    row = {'variant': variant, 'overrides': {k: str(v) for k, v in overrides.items()},
           'per_seed': {str(s): {k: recs[s][k] for k in ('accuracy', 'uf1')} for s in sorted(recs)},
           'accuracy': _mean_std([recs[s]['accuracy'] for s in sorted(recs)]),
           'uf1': _mean_std([recs[s]['uf1'] for s in sorted(recs)]),
           'seconds_per_seed': [recs[s].get('seconds') for s in sorted(recs)]}
    if variant != base_id:
      common = sorted(set(recs) & set(base))
      for s in common:
        if recs[s]['subjects'] != base[s]['subjects'] or recs[s]['n'] != base[s]['n']:
          raise StudyError(f'study {name}: variant {variant} seed {s} was evaluated on other folds '
                           f'than the baseline {base_id} ({recs[s]["subjects"]} vs '
                           f'{base[s]["subjects"]}); the paired difference needs the same folds')
      row['paired_vs_baseline'] = {
          m: paired_difference([recs[s][m] for s in common], [base[s][m] for s in common])
          for m in ('accuracy', 'uf1')}
      row['paired_seeds'] = common
    rows.append(row)
  return {'study': name, 'baseline': base_id, 'dataset': config.data.name,
          'builder_config': config.data.builder_config, 'seeds': list(seed_list),
          'std_ddof': STD_DDOF, 'confidence': CONFIDENCE,
          'metric_note': ('Acc and UF1 in %, last epoch, all LOSO folds concatenated; mean ± sample '
                          'std (ddof = 1) over seeds; paired difference = variant - baseline per '
                          'seed (same seeds, same folds), mean and 95 % Student-t interval'),
          'variants': rows}


def _pct(ms: Dict[str, Any]) -> str:
  if ms['std'] is None:
    return f'{100 * ms["mean"]:.2f}'
  return f'{100 * ms["mean"]:.2f} ± {100 * ms["std"]:.2f}'


def _diff(p: Optional[Dict[str, Any]]) -> str:
  if p is None:
    return '(baseline)'
  if p['low'] is None:
    return f'{100 * p["mean"]:+.2f} [n/a]'
  return f'{100 * p["mean"]:+.2f} [{100 * p["low"]:+.2f}, {100 * p["high"]:+.2f}]'


def format_markdown(result: Dict[str, Any]) -> str:
  """The ``study.md`` text of a :func:`run_study` result."""
  ds = result['dataset'] + (f', {result["builder_config"]}' if result['builder_config'] else '')
  lines = [f'# Study {result["study"]} ({ds})', '']
  if result.get('command'):
    lines += ['Command:', '', '```', result['command'], '```', '']
  lines += [f'Seeds {result["seeds"]}. {result["metric_note"]}. Baseline: '
            f'`{result["baseline"]}`.', '',
            '| variant | overrides | seeds | Acc | UF1 | ΔAcc [95 % CI] | ΔUF1 [95 % CI] |',
            '|---|---|---|---|---|---|---|']
  for r in result['variants']:
    over = ', '.join(f'{k}={v}' for k, v in r['overrides'].items()) or '(default)'
    p = r.get('paired_vs_baseline')
    lines.append(f'| {r["variant"]} | {over} | {r["uf1"]["n"]} | {_pct(r["accuracy"])} | '
                 f'{_pct(r["uf1"])} | {_diff(p and p["accuracy"])} | {_diff(p and p["uf1"])} |')
  seeds = [str(s) for s in result['seeds']]
  lines += ['', 'UF1 (%) per seed:', '', '| variant | ' + ' | '.join(f'seed {s}' for s in seeds)
            + ' |', '|---|' + '---|' * len(seeds)]
  for r in result['variants']:
    lines.append(f'| {r["variant"]} | ' + ' | '.join(
        f'{100 * r["per_seed"][s]["uf1"]:.2f}' if s in r['per_seed'] else '-' for s in seeds)
                 + ' |')
  times = [t for r in result['variants'] for t in r['seconds_per_seed'] if t is not None]
  if times:
    lines += ['', f'Training wall time per variant and seed (runs trained by this study\'s calls): '
                  f'median {np.median(times):.0f} s, {min(times):.0f}-{max(times):.0f} s over '
                  f'{len(times)} run(s).']
  return '\n'.join(lines) + '\n'
