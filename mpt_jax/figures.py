"""``--mode=figures``: the paper's Figs. 4-9 for finished LOSO runs.

``python main.py --mode=figures --workdir=A [--compare=B,C]`` writes, into ``A/paper_figures/``:

* ``confusion_<run>.png`` (Fig. 4), for every run: the confusion matrix in the paper's style
  (classes in the order of the paper's datasets section, colours row-normalised, percentage and
  count in each cell; last epoch, first seed). Runs on different datasets (``--workdir`` given
  once per dataset, e.g. CASME II, SAMM and SMIC) give one figure with the three side by side,
  ``confusion_<runs>.png``, and nothing else;
* ``gradcam_<run>.png`` (Fig. 8), for every run: the gradient map (see below) of the first clip of
  each class, overlaid
  on the apex frame and on the dynamic image. Each clip is explained by the fold model that held it
  out (its subject's fold);
* ``tsne_<runs>.png`` (Fig. 9): scikit-learn t-SNE of the held-out class-token features of every
  fold (each clip's feature from the fold model that did not train on it), coloured by class, one
  panel per run;
* ``per_class_accuracy_<runs>.png`` (Fig. 6): per-class accuracy of the runs side by side;
* ``examples_probabilities_<runs>.png`` (Fig. 7): the apex frame of example clips beside each
  run's class probabilities for them (the stored held-out probabilities);
* ``accuracy_f1_vs_K.png`` (Fig. 5): accuracy and UF1 against K when the runs differ in
  ``config.model.num_prompts`` (e.g. the workdirs of ``--mode=table --table=fig5``).

Maps (Fig. 8) are :mod:`mpt_jax.gradcam`'s (``grad_norm`` by default).

The run files are read through the small readers at the top (``read_*``), so a change of the
workdir format written by :mod:`mpt_jax.loso` is fixed in one place.
"""

import os
import re
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
from absl import logging

from mpt_jax import errors
from mpt_jax import gradcam
from mpt_jax import metrics as metrics_lib
from mpt_jax import paper_results
from mpt_jax import workdir as wd

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position


class FigureError(errors.UserError):
  """A workdir that cannot give the requested figure (the message names the file)."""


def read_fold_results(workdir: str, seed: Optional[int] = None) -> List[Dict[str, Any]]:
  """The finished folds' ``result.json`` (default: the run's first seed); none is an error."""
  if seed is None:
    seed = int(wd.load_run_config(workdir).seed)
  out = wd.finished_results(workdir, seed, wd.read_run_info(workdir)['subjects'])
  if not out:
    raise FigureError(f'{workdir}: no finished fold (no seed_{seed}/fold_*/result.json)')
  return out


def run_metrics(workdir: str) -> Dict[str, Dict[str, float]]:
  """``{'accuracy': {'mean', 'std', 'n'}, 'uf1': ...}`` over seeds (last epoch) of a run."""
  summary = wd.read_results(workdir)
  if 'last_epoch_over_seeds' not in summary:
    raise FigureError(f'{workdir}/results.json has no last_epoch_over_seeds entry')
  return summary['last_epoch_over_seeds']


def run_label(workdir: str) -> str:
  """A short name of a run for legends and file names (its folder name)."""
  return os.path.basename(os.path.normpath(workdir))


def _slug(names: Sequence[str]) -> str:
  return re.sub(r'[^A-Za-z0-9_.-]+', '-', '_vs_'.join(names))[:120]


class RunView:
  """A finished run: its config, data, and the fold models restored from their checkpoints."""

  def __init__(self, workdir: str, data_cache: Optional[Dict[str, Any]] = None):
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    self.label = run_label(self.workdir)
    self.config = wd.load_run_config(self.workdir)
    self.info = wd.read_run_info(self.workdir)
    self.classes = list(self.info['classes'])
    self.seed = int(self.config.seed)
    self._data_cache = data_cache if data_cache is not None else {}
    self._model = None

  @property
  def data(self):
    """The run's dataset in memory (shared between runs with the same data settings)."""
    from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    key = repr((self.config.data.to_json(), int(self.config.model.num_frames),
                int(self.config.model.image_size)))
    if key not in self._data_cache:
      self._data_cache[key] = input_pipeline.load(self.config)
    return self._data_cache[key]

  @property
  def model(self):
    from mpt_jax.models import mpt as mpt_lib  # pylint: disable=g-import-not-at-top
    if self._model is None:
      self._model = mpt_lib.build_model(self.config.model, len(self.classes))
    return self._model

  def fold_params(self) -> Iterator[Tuple[str, Any]]:
    """Yields ``(held-out subject, params)`` of every fold with a checkpoint (first seed)."""
    # pylint: disable=g-import-not-at-top
    from mpt_jax import partition
    from mpt_jax import pretrained
    from mpt_jax import train as train_lib
    params = pretrained.init_params(self.model, self.config.model, jax.random.PRNGKey(self.seed))
    try:  # the same initial parameters (pretrained file) as the trained run
      wd.check_init_fingerprint(self.info, self.seed, partition.tree_fingerprint(params),
                                self.workdir)
    except errors.UserError as e:
      raise FigureError(str(e)) from e
    template = train_lib.state_template(self.config, params)
    found = False
    for subject in wd.finished_subjects(self.workdir, self.seed, self.info['subjects']):
      if not os.path.isdir(wd.checkpoint_dir(self.workdir, self.seed, subject)):
        continue
      try:
        state = wd.restore_fold(self.workdir, self.seed, subject, template,
                                self.config.model.training_strategy)
      except train_lib.CheckpointDamagedError as e:
        raise FigureError(f'Fold {subject} (seed {self.seed}) cannot be explained: {e}') from e
      found = True
      yield subject, state.params
    if not found:
      raise FigureError(f'{self.workdir}: no fold checkpoints under seed_{self.seed}/fold_*/')

  def explain(self, picked: Sequence[int], batch: int = 8,
              method: str = 'grad_norm') -> Dict[str, Any]:
    """Held-out features of every clip and Grad-CAM maps of the ``picked`` clip indices.

    Every clip is passed through the fold model that held its subject out.

    Returns:
      dict with ``features`` (N, D) (NaN rows for folds without a checkpoint), ``cams``
      {index: (g, g)}, ``predicted`` {index: class}.
    """
    data = self.data
    n = len(data)
    feats = np.full((n, self.model.backbone.hidden_size), np.nan, np.float32)
    cams, predicted = {}, {}
    fn = gradcam.make_gradcam_fn(self.model, method)
    model = self.model
    apply = jax.jit(lambda p, x, a: model.apply({'params': p}, x, a))
    picked = set(int(i) for i in picked)
    for subject, params in self.fold_params():
      idx = np.nonzero(data.subjects == subject)[0]
      for lo in range(0, len(idx), batch):
        part = idx[lo:lo + batch]
        pad = np.concatenate([part, np.repeat(part[-1:], batch - len(part))])  # one compiled shape
        clips = jnp.asarray(data.clips[pad], jnp.float32)
        apex = jnp.asarray(data.apex[pad], jnp.int32)
        logits = apply(params, clips, apex)
        pred = jnp.argmax(logits, -1)
        cam, _, f = fn(params, clips, apex, pred.astype(jnp.int32))
        cam, f, pred = np.asarray(cam), np.asarray(f), np.asarray(pred)
        for j, i in enumerate(part):
          feats[i] = f[j]
          if i in picked:
            cams[int(i)], predicted[int(i)] = cam[j], int(pred[j])
    return {'features': feats, 'cams': cams, 'predicted': predicted, 'method': method}


def first_clips_per_class(labels: np.ndarray, num_classes: int, per_class: int = 1) -> List[int]:
  """Indices of the first ``per_class`` clips of every class (dataset order)."""
  out = []
  for c in range(num_classes):
    out.extend(np.nonzero(labels == c)[0][:per_class].tolist())
  return out


# ---------------------------------------------------------------------------------------------
# Figures.

def plot_gradcam(view: RunView, explained: Dict[str, Any], picked: Sequence[int],
                 path: str) -> None:
  """Fig. 8: rows of (apex, apex + CAM, dynamic image, dynamic image + CAM)."""
  from mpt_jax.models import dynamic_image  # pylint: disable=g-import-not-at-top
  data = view.data
  picked = [i for i in picked if i in explained['cams']]
  if not picked:
    raise FigureError(f'{view.workdir}: none of the chosen clips has a trained fold model')
  clips = jnp.asarray(data.clips[picked], jnp.float32)
  apex = jnp.asarray(data.apex[picked], jnp.int32)
  di = np.asarray(dynamic_image.rgb_input(clips, 'dynamic_image', apex))
  fig, axes = plt.subplots(len(picked), 4, figsize=(8, 2.1 * len(picked)), squeeze=False)
  for r, i in enumerate(picked):
    frame = np.clip(np.asarray(data.clips[i, int(data.apex[i])], np.float32), 0, 1)
    cam = gradcam.upsample(explained['cams'][i], frame.shape[0])
    title = (f'{data.names[i].split("/", 1)[-1]}\ntrue {view.classes[int(data.labels[i])]}, '
             f'pred {view.classes[explained["predicted"][i]]}')
    for c, (img, overlay) in enumerate([(frame, False), (frame, True), (di[r], False),
                                        (di[r], True)]):
      ax = axes[r, c]
      ax.imshow(np.clip(img, 0, 1))
      if overlay:
        ax.imshow(cam, cmap='jet', alpha=0.45, vmin=0, vmax=1)
      ax.set_xticks([])
      ax.set_yticks([])
      if r == 0:
        ax.set_title(['apex', 'apex + map', 'dynamic image', 'DI + map'][c], fontsize=8)
    axes[r, 0].set_ylabel(title, fontsize=6)
  fig.suptitle(f'{explained["method"]} of the predicted class at the last block (held-out fold '
               f'models): {view.label}', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def tsne_embed(features: np.ndarray, seed: int = 0) -> np.ndarray:
  """2-D scikit-learn t-SNE (PCA init, perplexity min(30, (n - 1) / 3))."""
  from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  n = len(features)
  if n < 4:
    raise FigureError(f't-SNE needs at least 4 held-out clips, got {n}')
  perplexity = float(min(30.0, max(1.0, (n - 1) / 3.0)))
  return TSNE(n_components=2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(
      np.asarray(features, np.float64))


def plot_tsne(panels: Sequence[Tuple[str, np.ndarray, np.ndarray, List[str]]], path: str) -> None:
  """Fig. 9: one t-SNE panel per run; ``panels`` are (label, features, labels, classes)."""
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
  for ax, (label, feats, labels, classes) in zip(axes[0], panels):
    ok = np.all(np.isfinite(feats), axis=1)
    emb = tsne_embed(feats[ok])
    for c, name in enumerate(classes):
      sel = labels[ok] == c
      ax.scatter(emb[sel, 0], emb[sel, 1], s=12, label=name)
    ax.set_title(f'{label} ({int(ok.sum())} held-out clips)', fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def per_class_accuracy(workdir: str) -> Dict[str, Optional[float]]:
  """Per-class accuracy (recall) of a run's first seed, all folds concatenated."""
  classes = wd.read_run_info(workdir)['classes']
  results = read_fold_results(workdir)
  labels = [l for r in results for l in r['labels']]
  preds = [p for r in results for p in r['predictions']]
  return metrics_lib.compute(labels, preds, classes)['per_class_accuracy']


def plot_per_class(workdirs: Sequence[str], path: str) -> None:
  """Fig. 6: per-class accuracy of several runs side by side (grouped bars)."""
  accs = [per_class_accuracy(w) for w in workdirs]
  classes = list(accs[0])
  width = 0.8 / len(workdirs)
  fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(classes) * max(1, len(workdirs) / 2), 3.2))
  for j, (w, acc) in enumerate(zip(workdirs, accs)):
    vals = [acc.get(c) or 0.0 for c in classes]
    ax.bar(np.arange(len(classes)) + (j - (len(workdirs) - 1) / 2) * width, vals, width,
           label=run_label(w))
  ax.set_xticks(range(len(classes)))
  ax.set_xticklabels(classes, rotation=20, fontsize=8)
  ax.set_ylim(0, 1)
  ax.set_ylabel('accuracy')
  ax.set_title('per-class accuracy (held-out, last epoch)', fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def held_out_probabilities(workdir: str) -> Dict[str, List[float]]:
  """``{clip name: class probabilities}`` of a run's first seed (from its fold results)."""
  out = {}
  for r in read_fold_results(workdir):
    for name, p in zip(r['clips'], r['probabilities']):
      out[name] = p
  return out


def plot_examples(view: RunView, workdirs: Sequence[str], picked: Sequence[int], path: str) -> None:
  """Fig. 7: example clips (apex frame) with every run's held-out class probabilities."""
  data = view.data
  probs = [held_out_probabilities(w) for w in workdirs]
  picked = [i for i in picked if all(str(data.names[i]) in p for p in probs)]
  if not picked:
    raise FigureError('Fig. 7: no clip has held-out probabilities in every run')
  fig, axes = plt.subplots(len(picked), 2, figsize=(7, 1.8 * len(picked)), squeeze=False,
                           gridspec_kw={'width_ratios': [1, 2.5]})
  width = 0.8 / len(workdirs)
  classes = view.classes
  for r, i in enumerate(picked):
    axes[r, 0].imshow(np.clip(np.asarray(data.clips[i, int(data.apex[i])], np.float32), 0, 1))
    axes[r, 0].set_xticks([])
    axes[r, 0].set_yticks([])
    axes[r, 0].set_title(f'true: {classes[int(data.labels[i])]}', fontsize=7)
    ax = axes[r, 1]
    for j, (w, p) in enumerate(zip(workdirs, probs)):
      ax.bar(np.arange(len(classes)) + (j - (len(workdirs) - 1) / 2) * width,
             p[str(data.names[i])], width, label=run_label(w))
    ax.set_ylim(0, 1)
    ax.set_xticks(range(len(classes)))
    ax.set_xticklabels(classes if r == len(picked) - 1 else [''] * len(classes), fontsize=7)
  axes[0, 1].legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def k_of(workdir: str) -> int:
  """K of a run (0 when it has no prompts)."""
  m = wd.load_run_config(workdir).model
  return 0 if m.prompt_type == 'none' else int(m.num_prompts)


def plot_k_sweep(workdirs: Sequence[str], path: str) -> None:
  """Fig. 5: accuracy and UF1 (mean ± std over seeds) against K, with the paper's printed points.

  The paper prints only K = 5 as numbers (a star per metric); its other bars are not printed.
  """
  paper = {int(rid.split('_')[1]): (p['acc'], p['f1'])
           for rid, p in ((rid, paper_results.paper_row('fig5', rid))
                          for rid in paper_results.row_ids('fig5')) if p['acc'] is not None}
  rows = sorted((k_of(w), run_metrics(w)) for w in workdirs)
  ks = [k for k, _ in rows]
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  for i, (key, name) in enumerate((('accuracy', 'Acc'), ('uf1', 'F1'))):
    mean = [100 * m[key]['mean'] for _, m in rows]
    std = [100 * m[key]['std'] for _, m in rows]
    ax.errorbar(ks, mean, yerr=std, marker='o', capsize=3, label=f'{name} (ours)', color=f'C{i}')
    for k, values in paper.items():
      ax.plot([k], [values[i]], marker='*', markersize=12, ls='none', color=f'C{i}',
              markeredgecolor='k', label=f'{name} (paper)')
  ax.set_xlabel('number of motion prompts K')
  ax.set_ylabel('%')
  ax.set_xticks(sorted(set(ks) | set(paper)))
  ax.legend(fontsize=7)
  ax.set_title('accuracy and F1 vs K', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def paper_confusion(workdir: str) -> Tuple[str, List[str], np.ndarray]:
  """Fig. 4's data of a run: (title, classes in the paper's order, counts of the first seed).

  The classes are ordered as the paper's datasets section lists them (classes the paper does not
  list follow in the run's order); rows are true classes, columns predicted, last epoch, all folds.
  """
  summary = wd.read_results(workdir)
  classes = list(summary['classes'])
  seed = sorted(summary['seeds'], key=int)[0]
  cm = np.asarray(summary['seeds'][seed]['last_epoch']['confusion_matrix'], np.int64)
  dataset = summary['dataset']
  listed = [c for c, _ in paper_results.DATASETS.get(dataset, {}).get('classes', ())]
  order = [classes.index(c) for c in listed if c in classes]
  order += [i for i in range(len(classes)) if i not in order]
  name = paper_results.DATASETS.get(dataset, {}).get('name', dataset)
  title = f'{name} ({run_label(workdir)}, seed {seed})'
  return title, [classes[i] for i in order], cm[np.ix_(order, order)]


def plot_confusions(workdirs: Sequence[str], path: str) -> None:
  """Fig. 4: each run's confusion matrix, row-normalised colours, percentage and count per cell."""
  panels = [paper_confusion(w) for w in workdirs]
  width = sum(0.9 * len(c) + 1.8 for _, c, _ in panels)
  height = 0.9 * max(len(c) for _, c, _ in panels) + 2.0
  fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False)
  for ax, (title, classes, cm) in zip(axes[0], panels):
    totals = cm.sum(axis=1, keepdims=True)
    rate = np.divide(cm, totals, out=np.zeros(cm.shape, np.float64), where=totals > 0)
    ax.imshow(rate, cmap='Blues', vmin=0.0, vmax=1.0)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha='right', fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    for i in range(len(classes)):
      for j in range(len(classes)):
        ax.text(j, i, f'{100 * rate[i, j]:.0f}%\n({cm[i, j]})', ha='center', va='center',
                fontsize=7, color='white' if rate[i, j] > 0.5 else 'black')
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def pick_clips(names: np.ndarray, wanted: Sequence[str]) -> List[int]:
  """Indices of clips given by name (``dataset/subject/clip`` or ``subject/clip``)."""
  names = [str(n) for n in names]
  out = []
  for w in wanted:
    hits = [i for i, n in enumerate(names) if n == w or n.split('/', 1)[-1] == w]
    if not hits:
      raise FigureError(f'--clips: no clip named {w!r} in the run\'s data (names look like '
                        f'{names[0]!r})')
    out.append(hits[0])
  return out


def write_figures(workdirs: Sequence[str], out_dir: Optional[str] = None,
                  per_class: int = 1, method: str = 'grad_norm',
                  clip_names: Sequence[str] = ()) -> List[str]:
  """Writes Figs. 4-9 for ``workdirs`` (the first is the main run); returns the PNG paths.

  Args:
    workdirs: finished LOSO run folders.
    out_dir: where the PNGs go (default ``<first workdir>/paper_figures``).
    per_class: without ``clip_names``, the first ``per_class`` clips of every class are shown.
    method: map of Fig. 8, ``grad_norm`` or ``gradcam``.
    clip_names: clips for Figs. 7-8 (``subject/clip`` or ``dataset/subject/clip``).
  """
  workdirs = [os.path.abspath(os.path.expanduser(w)) for w in workdirs]
  out_dir = out_dir or os.path.join(workdirs[0], 'paper_figures')
  os.makedirs(out_dir, exist_ok=True)
  labels = [run_label(w) for w in workdirs]
  if len(set(labels)) != len(labels):  # e.g. the `mpt` rows of several tables: add the parent
    labels = ['_'.join(os.path.normpath(w).split(os.sep)[-2:]) for w in workdirs]
  if len(set(labels)) != len(labels):
    raise FigureError(f'Runs must have distinct folder names (they label the figures): {labels}')
  if len({wd.read_results(w)['dataset'] for w in workdirs}) > 1:
    # Runs on different datasets (e.g. CASME II, SAMM, SMIC): Fig. 4 with their confusion
    # matrices side by side; the other figures compare runs of one protocol.
    p = os.path.join(out_dir, f'confusion_{_slug(labels)}.png')
    plot_confusions(workdirs, p)
    return [p]
  paths = []
  for w, label in zip(workdirs, labels):
    p = os.path.join(out_dir, f'confusion_{_slug([label])}.png')
    plot_confusions([w], p)
    paths.append(p)
  cache: Dict[str, Any] = {}
  views = [RunView(w, cache) for w in workdirs]
  for v, label in zip(views, labels):
    v.label = label
  for v in views[1:]:
    if v.classes != views[0].classes:
      raise FigureError(f'{v.workdir} has classes {v.classes}, {views[0].workdir} has '
                        f'{views[0].classes}; compare runs of one protocol')
  paths = []
  if clip_names:
    picked = pick_clips(views[0].data.names, clip_names)
  else:
    picked = first_clips_per_class(views[0].data.labels, len(views[0].classes), per_class)
  panels = []
  for v in views:
    logging.info('Explaining %s (features of every held-out clip, gradient maps of %d clips)',
                 v.label, len(picked))
    ex = v.explain(picked, method=method)
    p = os.path.join(out_dir, f'gradcam_{_slug([v.label])}.png')
    plot_gradcam(v, ex, picked, p)
    paths.append(p)
    panels.append((v.label, ex['features'], v.data.labels, v.classes))
  p = os.path.join(out_dir, f'tsne_{_slug(labels)}.png')
  plot_tsne(panels, p)
  paths.append(p)
  p = os.path.join(out_dir, f'per_class_accuracy_{_slug(labels)}.png')
  plot_per_class(workdirs, p)
  paths.append(p)
  p = os.path.join(out_dir, f'examples_probabilities_{_slug(labels)}.png')
  plot_examples(views[0], workdirs, picked, p)
  paths.append(p)
  if len({k_of(w) for w in workdirs}) > 1:
    p = os.path.join(out_dir, 'accuracy_f1_vs_K.png')
    plot_k_sweep(workdirs, p)
    paths.append(p)
  return paths
