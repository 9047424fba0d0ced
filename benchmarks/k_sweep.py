"""Accuracy against the number of motion prompts K (paper Fig. 5) on a LOSO config, over seeds.

Runs ``main.py`` once per (K, seed), each in its own workdir ``<root>/K<k>_seed<s>`` (so runs can be
resumed, and split over machines or processes with ``--jobs``), then prints a markdown table of
accuracy and UF1 (last epoch, all folds' predictions concatenated) as mean ± std over the seeds.
A finished run (its ``results.json`` exists) is not run again.

  python benchmarks/k_sweep.py --ks=1,3,5 --seeds=0,1,2 --root=runs/k_sweep \\
      --data_dir=/tmp/tfds [--config=configs/synthetic.py] [--smoke] [--jobs=1] \\
      [-- --config.model.tokenizer_init=middle ...]

Arguments after ``--`` go to every ``main.py`` call (e.g. ``--config.model.tokenizer_init=middle``
for the symmetric initialisation that issue 12 compares against). The default config is the
``make demo`` one (configs/synthetic.py); the dataset is prepared into ``--data_dir`` first
(idempotent). The std is the population std (ddof = 0) unless ``--ddof=1``.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
from typing import Dict, List, Sequence

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _ints(text: str) -> List[int]:
  return [int(v) for v in text.split(',') if v.strip()]


def workdir_for(root: str, k: int, seed: int) -> str:
  return os.path.join(root, f'K{k}_seed{seed}')


def _main_args(args, extra: Sequence[str]) -> List[str]:
  config = args.config + (':smoke' if args.smoke else '')
  return [sys.executable, os.path.join(ROOT, 'main.py'), f'--config={config}',
          f'--config.data.data_dir={args.data_dir}', *extra]


def run_one(args, extra: Sequence[str], k: int, seed: int) -> str:
  """Trains and evaluates one (K, seed) LOSO run (resuming it if interrupted); returns its workdir."""
  workdir = workdir_for(args.root, k, seed)
  if os.path.exists(os.path.join(workdir, 'results.json')):
    return workdir
  cmd = _main_args(args, extra) + [f'--workdir={workdir}', f'--config.model.num_prompts={k}',
                                   f'--config.seed={seed}']
  log = os.path.join(args.root, f'K{k}_seed{seed}.log')
  os.makedirs(args.root, exist_ok=True)
  with open(log, 'w') as f:
    proc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False)
  if proc.returncode != 0:
    raise SystemExit(f'K={k} seed={seed} failed (exit {proc.returncode}); see {log}')
  return workdir


def read_metrics(workdir: str, seed: int) -> Dict[str, float]:
  """Last-epoch accuracy and UF1 of one finished run."""
  with open(os.path.join(workdir, 'results.json')) as f:
    summary = json.load(f)
  m = summary['seeds'][str(seed)]['last_epoch']
  return {'accuracy': float(m['accuracy']), 'uf1': float(m['uf1'])}


def table(results: Dict[int, Dict[int, Dict[str, float]]], ddof: int) -> str:
  """Markdown table: K, seeds, accuracy and UF1 in % as mean ± std, per-seed accuracies."""
  lines = ['| K | seeds | Acc (%) | UF1 (%) | Acc per seed (%) |', '|---|---|---|---|---|']
  for k in sorted(results):
    seeds = sorted(results[k])
    acc = np.array([results[k][s]['accuracy'] for s in seeds]) * 100
    uf1 = np.array([results[k][s]['uf1'] for s in seeds]) * 100
    std = lambda v: float(v.std(ddof=ddof)) if len(v) > ddof else float('nan')  # pylint: disable=unnecessary-lambda-assignment
    lines.append(f'| {k} | {",".join(map(str, seeds))} | {acc.mean():.1f} ± {std(acc):.1f} | '
                 f'{uf1.mean():.1f} ± {std(uf1):.1f} | '
                 f'{", ".join(f"{a:.1f}" for a in acc)} |')
  lines.append(f'\nstd over seeds with ddof = {ddof}; last epoch, predictions of all LOSO folds '
               'concatenated.')
  return '\n'.join(lines)


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if '--' in argv:
    i = argv.index('--')
    argv, extra = argv[:i], argv[i + 1:]
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--ks', type=_ints, default=[1, 3, 5], help='K values, e.g. 1,3,5')
  parser.add_argument('--seeds', type=_ints, default=[0, 1, 2], help='seeds, e.g. 0,1,2')
  parser.add_argument('--root', required=True, help='folder of the per-(K, seed) workdirs')
  parser.add_argument('--data_dir', required=True, help='TFDS data dir (prepared if needed)')
  parser.add_argument('--config', default='configs/synthetic.py', help='config file')
  parser.add_argument('--smoke', action='store_true', help='use the config\'s :smoke variant')
  parser.add_argument('--jobs', type=int, default=1, help='runs in parallel')
  parser.add_argument('--ddof', type=int, default=0, choices=(0, 1), help='std ddof')
  args = parser.parse_args(argv)
  args.root = os.path.abspath(os.path.expanduser(args.root))
  args.data_dir = os.path.abspath(os.path.expanduser(args.data_dir))
  prep = subprocess.run(_main_args(args, extra) + ['--mode=prepare'], cwd=ROOT,
                        capture_output=True, text=True, check=False)
  if prep.returncode != 0:
    raise SystemExit(f'preparing the dataset failed:\n{prep.stderr[-2000:]}')
  jobs = [(k, s) for k in args.ks for s in args.seeds]
  with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
    done = dict(zip(jobs, pool.map(lambda ks: run_one(args, extra, *ks), jobs)))
  results: Dict[int, Dict[int, Dict[str, float]]] = {}
  for (k, s), workdir in done.items():
    results.setdefault(k, {})[s] = read_metrics(workdir, s)
  print(table(results, args.ddof))


if __name__ == '__main__':
  main()
