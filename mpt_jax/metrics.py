"""Micro-expression recognition metrics over the concatenated predictions of all LOSO folds (SPEC §8).

As in the reference codes (STSTNet, HTNet, MEB, MOL): predictions of every fold are concatenated and
the metrics are computed once. UF1 is the mean over classes of ``2TP / (2TP + FP + FN)`` (sklearn's
macro F1), UAR the mean per-class recall (sklearn's balanced accuracy), WF1 the support-weighted F1.
A class absent from both labels and predictions has an undefined F1; it counts as 0 (sklearn's
``zero_division=0``) and is named in ``undefined_classes``.
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
      'uf1': float(f1.mean()),
      'uar': float(recall[present].mean()) if present.any() else float('nan'),
      'wf1': float((f1 * support).sum() / support.sum()) if support.sum() else float('nan'),
      'per_class_accuracy': {n: float(r) if s else None for n, r, s in zip(names, recall, support)},
      'per_class_f1': {n: float(v) for n, v in zip(names, f1)},
      'support': {n: int(s) for n, s in zip(names, support)},
      'undefined_classes': [n for n, d in zip(names, denom_f1) if d == 0],
      'confusion_matrix': cm.astype(int).tolist(),
  }


def compute(labels: Sequence[int], preds: Sequence[int], class_names: Sequence[str]) -> Dict[str, Any]:
  """All metrics of concatenated ``labels`` and ``preds``."""
  return from_confusion(confusion_matrix(labels, preds, len(class_names)), class_names)


def mean_std(values: Sequence[float]) -> Dict[str, float]:
  """Mean and (population, ddof=0) standard deviation over seeds."""
  v = np.asarray(values, np.float64)
  return {'mean': float(v.mean()), 'std': float(v.std()), 'n': int(v.size)}
