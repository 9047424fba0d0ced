"""MER metrics over the concatenated predictions of all LOSO folds (docs/method.md §8).

As in the reference codes (STSTNet, HTNet, MEB, MOL): predictions of every fold are concatenated and
the metrics are computed once. One definition for UF1 and UAR, on every set of predictions (a whole
protocol, or a subset such as one source dataset of the MEGC2019 composite):

* UF1 is the mean over the classes *present in the labels* of ``2TP / (2TP + FP + FN)``
  (sklearn: ``f1_score(average='macro', labels=<classes present>)``);
* UAR is the mean over the same classes of the recall ``TP / (TP + FN)``
  (sklearn: ``recall_score(average='macro', labels=<classes present>)``, i.e. balanced accuracy);
* WF1 is the support-weighted F1; accuracy the fraction correct.

A class with no clip in the labels has no recall, so it is left out of both means (its false
positives still lower the other classes' F1 and recall); such classes are named in
``undefined_classes``. When every class is present (a full LOSO protocol) UF1 is sklearn's plain
macro F1. Over seeds, :func:`mean_std` gives the population standard deviation (ddof = 0).
"""

from typing import Any, Dict, Sequence

import numpy as np


def confusion_matrix(labels: Sequence[int], preds: Sequence[int], num_classes: int) -> np.ndarray:
  """(num_classes, num_classes) counts, rows = true class, columns = predicted class."""
  labels = np.asarray(labels, np.int64)
  preds = np.asarray(preds, np.int64)
  if labels.shape != preds.shape:
    raise ValueError(f'labels {labels.shape} and predictions {preds.shape} differ in shape')
  bad = (labels < 0) | (labels >= num_classes) | (preds < 0) | (preds >= num_classes)
  if bad.any():
    raise ValueError(f'class index outside 0..{num_classes - 1} at positions {np.nonzero(bad)[0][:5]}')
  cm = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(cm, (labels, preds), 1)
  return cm


def from_confusion(cm: np.ndarray, class_names: Sequence[str] = ()) -> Dict[str, Any]:
  """Accuracy, UF1, UAR, WF1, per-class accuracy (recall) and F1 from a confusion matrix."""
  cm = np.asarray(cm, np.float64)
  k = cm.shape[0]
  names = list(class_names) or [str(i) for i in range(k)]
  tp = np.diag(cm)
  support = cm.sum(1)
  predicted = cm.sum(0)
  total = cm.sum()
  denom_f1 = 2 * tp + (predicted - tp) + (support - tp)
  f1 = np.divide(2 * tp, denom_f1, out=np.zeros(k), where=denom_f1 > 0)
  recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
  present = support > 0
  return {
      'n': int(total),
      'accuracy': float(tp.sum() / total) if total else float('nan'),
      'uf1': float(f1[present].mean()) if present.any() else float('nan'),
      'uar': float(recall[present].mean()) if present.any() else float('nan'),
      'wf1': float((f1 * support).sum() / support.sum()) if support.sum() else float('nan'),
      'per_class_accuracy': {n: float(r) if s else None for n, r, s in zip(names, recall, support)},
      'per_class_f1': {n: float(v) for n, v in zip(names, f1)},
      'support': {n: int(s) for n, s in zip(names, support)},
      'undefined_classes': [n for n, s in zip(names, support) if s == 0],
      'confusion_matrix': cm.astype(int).tolist(),
  }


def compute(labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str]) -> Dict[str, Any]:
  """All metrics of concatenated ``labels`` and ``preds``."""
  return from_confusion(confusion_matrix(labels, preds, len(class_names)), class_names)


STD_DDOF = 0  # Over seeds: population standard deviation (numpy's default), stated in every record.


def mean_std(values: Sequence[float]) -> Dict[str, float]:
  """Mean and population (ddof = 0) standard deviation over seeds."""
  v = np.asarray(values, np.float64)
  return {'mean': float(v.mean()), 'std': float(v.std(ddof=STD_DDOF)), 'n': int(v.size),
          'ddof': STD_DDOF}
