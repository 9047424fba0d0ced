"""``report.md`` and figures of a finished LOSO run: a pure function of the results.

Nothing here reads checkpoints or builds an experiment; the caller passes what the figures need.
The table follows the paper's format (Acc and F1 in %, plus UAR and WF1), with the honest
last-epoch numbers first and, only when enabled, the oracle best-epoch numbers labelled as such.
Figures (PNG, in ``figures/``): confusion matrix, per-class accuracy, training curves of every fold,
and for a few clips the dynamic image, the magnified motion and the learned temporal Gaussians.
"""

import os
from typing import Any, Dict, List, Optional

import jax.numpy as jnp
import matplotlib
import numpy as np

from mpt_jax.models import mpt as mpt_lib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


METRICS_NOTE = ('UF1 and UAR average per-class F1 and recall over the classes present in the '
                'evaluated labels (a class with no clip there is left out of both).')
SEEDS_NOTE = '± is the population standard deviation over seeds (ddof = 0).'


def provenance_lines(info: Dict[str, Any], num_clips: int, num_subjects: int) -> List[str]:
  """The report's opening: what produced the run (from ``run_info.json``'s provenance)."""
  p = info.get('provenance')
  if not p:
    return []
  w = p.get('weights') or {}
  weights = (f'{w["path"]} (SHA-256 {w["sha256"][:16]}...)' if w.get('sha256') else
             w.get('path') or 'none (random initialisation)')
  seeds = p.get('seeds') or []
  return ['| produced by | |', '|---|---|',
          f'| dataset | {p["dataset"]}, builder config `{p["builder_config"] or "default"}` |',
          f'| clips, subjects | {num_clips}, {num_subjects} |',
          f'| backbone | {p["backbone"]} ({p["training_strategy"]}) |',
          f'| weights | {weights} |',
          f'| epochs | {p["epochs"]} |',
          f'| seed{"" if len(seeds) == 1 else "s"} | {", ".join(map(str, seeds))} |',
          f'| mpt_jax commit | {p["commit"]} |', f'| date | {p["date"]} |', '']


def _fmt(ms: Dict[str, float], pct: bool = True) -> str:
  scale = 100.0 if pct else 1.0
  if ms['n'] > 1:
    return f"{ms['mean'] * scale:.2f} ± {ms['std'] * scale:.2f}"
  return f"{ms['mean'] * scale:.2f}"


def results_table(summary: Dict[str, Any]) -> str:
  """Markdown table: method, Acc (%), F1 (%), UAR (%), WF1 (%)."""
  rows = ['| Method | Acc (%) | F1 / UF1 (%) | UAR (%) | WF1 (%) |', '|---|---|---|---|---|']
  for mode, label in (('last_epoch', 'MPT (mpt_jax), last epoch'),
                      ('oracle_best_epoch', 'MPT (mpt_jax), ORACLE best epoch per subject')):
    ms = summary.get(f'{mode}_over_seeds')
    if ms:
      rows.append(f"| {label} | {_fmt(ms['accuracy'])} | {_fmt(ms['uf1'])} | {_fmt(ms['uar'])} | "
                  f"{_fmt(ms['wf1'])} |")
  return '\n'.join(rows)


def plot_confusion(cm: np.ndarray, classes: List[str], path: str, title: str) -> None:
  cm = np.asarray(cm)
  fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
  ax.imshow(cm, cmap='Blues')
  ax.set_xticks(range(len(classes)), classes, rotation=45, ha='right')
  ax.set_yticks(range(len(classes)), classes)
  for i in range(cm.shape[0]):
    for j in range(cm.shape[1]):
      ax.text(j, i, str(cm[i, j]), ha='center', va='center',
              color='white' if cm[i, j] > cm.max() / 2 else 'black')
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_per_class(per_class: Dict[str, Any], path: str) -> None:
  names = list(per_class)
  vals = [per_class[n] if per_class[n] is not None else 0.0 for n in names]
  fig, ax = plt.subplots(figsize=(1.0 * len(names) + 2, 3))
  ax.bar(names, vals, color='tab:blue')
  ax.set_ylim(0, 1)
  ax.set_ylabel('accuracy (recall)')
  ax.set_title('per-class accuracy (all folds)')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_curves(results: List[Dict[str, Any]], path: str) -> None:
  fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
  for r in results:
    h = r['history']
    axes[0].plot(h['epoch'], h['train_loss'], alpha=0.5)
    pts = [(e, a) for e, a in zip(h['epoch'], h['test_accuracy']) if a is not None]
    if pts:
      axes[1].plot(*zip(*pts), alpha=0.5)
  axes[0].set_title('training loss per fold')
  axes[1].set_title('held-out subject accuracy per fold')
  for ax in axes:
    ax.set_xlabel('epoch')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_motion(example: Dict[str, Any], path: str) -> None:
  """For a few clips: first frame, dynamic image, magnified motion at the apex, Gaussians.

  Args:
    example: ``model``, ``params``, ``clips`` (N, T, S, S, 3), ``apex`` (N,), ``names`` (N,).
    path: the PNG to write.
  """
  clips = jnp.asarray(example['clips'], jnp.float32)
  apex = jnp.asarray(example['apex'])
  aux = mpt_lib.motion_inputs(example['model'], example['params'], clips, apex)
  n = len(clips)
  fig, axes = plt.subplots(n, 4, figsize=(12, 3 * n), squeeze=False)
  for i in range(n):
    axes[i, 0].imshow(np.asarray(clips[i, 0]))
    axes[i, 0].set_title(example['names'][i].split('/', 1)[-1], fontsize=8)
    axes[i, 1].imshow(np.asarray(aux['rgb_input'][i]))
    axes[i, 1].set_title('dynamic image')
    if 'motion' in aux:
      mo = np.asarray(aux['motion'][i, int(apex[i])])
      lim = np.abs(mo).max() + 1e-8
      axes[i, 2].imshow(0.5 + 0.5 * mo / lim)
      axes[i, 2].set_title(f'motion at apex (|M| max {lim:.3f})')
      w = np.asarray(aux['weights'][i])
      for k in range(w.shape[0]):
        axes[i, 3].plot(w[k], label=f'k={k + 1}')
      axes[i, 3].axvline(int(apex[i]), color='k', ls='--', lw=0.8)
      axes[i, 3].set_title('temporal Gaussians (dashed: apex)')
      axes[i, 3].legend(fontsize=6)
    for j in range(3):
      axes[i, j].axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def write_report(config, workdir: str, summary: Dict[str, Any],
                 results_by_seed: Dict[int, List[Dict[str, Any]]],
                 motion_example: Optional[Dict[str, Any]] = None,
                 run_info: Optional[Dict[str, Any]] = None) -> str:
  """Writes ``report.md`` and ``figures/``; returns the report text.

  Args:
    config: the run's config.
    workdir: the run directory.
    summary: :func:`mpt_jax.loso.summarise`'s output.
    results_by_seed: the fold records per seed.
    motion_example: inputs of :func:`plot_motion`, or None to skip that figure.
    run_info: the run's ``run_info.json`` (its provenance opens the report).
  """
  figdir = os.path.join(workdir, 'figures')
  os.makedirs(figdir, exist_ok=True)
  classes = list(summary['classes'])
  first_seed = sorted(results_by_seed)[0]
  seed_entry = summary['seeds'][str(first_seed)]
  last = seed_entry['last_epoch']
  plot_confusion(last['confusion_matrix'], classes, os.path.join(figdir, 'confusion_matrix.png'),
                 f'{summary["dataset"]}, last epoch, seed {first_seed}')
  plot_per_class(last['per_class_accuracy'], os.path.join(figdir, 'per_class_accuracy.png'))
  plot_curves(results_by_seed[first_seed], os.path.join(figdir, 'training_curves.png'))
  if motion_example is not None:
    plot_motion(motion_example, os.path.join(figdir, 'motion_examples.png'))
  num_clips = sum(f['n'] for f in seed_entry['folds'])
  lines = [f'# MPT LOSO results: {summary["dataset"]}', '']
  lines += provenance_lines(run_info or {}, num_clips, len(seed_entry['folds']))
  lines += [f'{len(seed_entry["folds"])} folds (one per subject), '
           f'{num_clips} clips, classes: {", ".join(classes)}; '
           f'seeds: {", ".join(summary["seeds"])}. Metrics over the concatenated predictions of '
           'all folds; model after the last epoch' +
           (' (the oracle row picks the best epoch per held-out subject on its own test accuracy; '
            'it peeks at the test set and is shown only for comparison with papers that do so)'
            if config.train.oracle_best_epoch else '') + '.', '',
           results_table(summary), '',
           '## Per-class accuracy (seed %d, last epoch)' % first_seed, '',
           '| class | support | accuracy | F1 |', '|---|---|---|---|']
  for c in classes:
    acc = last['per_class_accuracy'][c]
    lines.append(f"| {c} | {last['support'][c]} | "
                 f"{'-' if acc is None else f'{100 * acc:.1f}'} | "
                 f"{100 * last['per_class_f1'][c]:.1f} |")
  per_ds = seed_entry.get('last_epoch_per_dataset')
  per_ds_seeds = summary.get('last_epoch_per_dataset_over_seeds')
  if per_ds and per_ds_seeds:
    lines += ['', '## Per source dataset (last epoch, over seeds)', '',
              '| dataset | n | Acc (%) | UF1 (%) | UAR (%) |', '|---|---|---|---|---|']
    lines += [f"| {ds} | {per_ds[ds]['n']} | {_fmt(m['accuracy'])} | {_fmt(m['uf1'])} | "
              f"{_fmt(m['uar'])} |" for ds, m in per_ds_seeds.items()]
  lines += ['', '## Per fold (seed %d)' % first_seed, '', '| subject | n | accuracy |', '|---|---|---|']
  lines += [f"| {f['subject']} | {f['n']} | {100 * f['accuracy']:.1f} |" for f in seed_entry['folds']]
  lines += ['', METRICS_NOTE + (' ' + SEEDS_NOTE if len(summary['seeds']) > 1 else '')]
  lines += ['', '![confusion](figures/confusion_matrix.png)',
            '![per class](figures/per_class_accuracy.png)',
            '![curves](figures/training_curves.png)']
  if motion_example is not None:
    lines.append('![motion](figures/motion_examples.png)')
  lines.append('')
  text = '\n'.join(lines)
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(text)
  return text
