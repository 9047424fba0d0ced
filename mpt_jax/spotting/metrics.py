"""The MEGC spotting metric and the spot-then-recognise score (STRS), implemented from their
definitions (MEGC 2020 interval spotting; STRS of MEGC 2024/2025).

Intervals are closed frame ranges ``[onset, offset]`` (both ends count). A predicted interval
matches a ground-truth interval of the same type (``mae`` or ``me``) in the same video when

    IoU = |P ∩ G| / |P ∪ G| >= 0.5     (counted in frames).

Counting, per type and video (MEGC 2020 onwards): TP = the ground-truth intervals hit by a
prediction, FP = the predictions that hit none, FN = the ground-truth intervals hit by none. Each
ground-truth interval counts once and each prediction counts once: predictions are taken in onset
order, and each takes the unmatched ground-truth interval it overlaps most (IoU >= 0.5), so a
second prediction on an already found expression is a false positive, never a second TP. The
counts are pooled over the whole dataset (never averaged per video); "overall" pools the MaE and ME
counts. P = TP / (TP + FP), R = TP / (TP + FN), F1 = 2PR / (P + R) (0 where a denominator is 0).

STRS (MEGC 2024/2025) = spotting F1 x analysis F1. The analysis is scored on the spotting TPs whose
ground-truth emotion is one of the classes (default negative / positive / surprise): per class c,
TP_c = pairs predicted c with truth c, FP_c = predicted c with truth not c, FN_c = truth c predicted
not c; P̄ and R̄ are the means of P_c and R_c over the classes that occur (as truth or prediction)
among those pairs, and analysis F1 = 2 P̄ R̄ / (P̄ + R̄).
We also give UF1 (mean per-class F1) and UAR (mean per-class *recall*).

Deliberate differences from the public STRS reference script, which we do not reproduce: its
"UAR" is the mean precision; its per-class analysis FN count takes the pairs *predicted* c that are
wrong (the FP count again) instead of the pairs whose truth is c; and its spotting loop adds one TP
per (prediction, ground truth) pair, so two predictions on one expression give two TPs.
"""

import dataclasses
from typing import Dict, Hashable, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

TYPES = ('mae', 'me')
IOU_THRESHOLD = 0.5
STR_CLASSES = ('negative', 'positive', 'surprise')
# Coarse emotion of a detailed one (SAMM's estimated emotions, CAS(ME)^3's labels, a recogniser's
# classes), as MEGC's STR task groups them.
COARSE = {'anger': 'negative', 'angry': 'negative', 'contempt': 'negative',
          'disgust': 'negative', 'fear': 'negative', 'sadness': 'negative', 'sad': 'negative',
          'happiness': 'positive', 'happy': 'positive', 'surprise': 'surprise',
          'other': 'others', 'others': 'others', 'negative': 'negative',
          'positive': 'positive', 'repression': 'negative'}


def coarse_emotion(text: str) -> str:
  """The STR group of an emotion as written (case and spaces ignored), '' when it has none."""
  return COARSE.get(' '.join(str(text).split()).lower(), '')


@dataclasses.dataclass(frozen=True)
class Interval:
  """One expression interval in a video's frame numbers (closed: both ends belong to it)."""
  onset: int
  offset: int
  type: str  # 'mae' | 'me'
  apex: Optional[int] = None
  emotion: str = ''  # coarse emotion (ground truth) or the recognised class (prediction); '' = none
  score: float = 0.0  # the spotter's confidence (predictions)

  def __post_init__(self):
    if self.type not in TYPES:
      raise ValueError(f'interval type {self.type!r}; expected one of {TYPES}')
    if int(self.offset) < int(self.onset):
      raise ValueError(f'interval {self.onset}..{self.offset}: offset before onset')

  @property
  def length(self) -> int:
    return int(self.offset) - int(self.onset) + 1


def iou(a: Tuple[int, int], b: Tuple[int, int]) -> float:
  """IoU of two closed frame intervals ``(onset, offset)``, counted in frames."""
  inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
  if inter <= 0:
    return 0.0
  union = (a[1] - a[0] + 1) + (b[1] - b[0] + 1) - inter
  return inter / union


@dataclasses.dataclass
class Counts:
  """TP / FP / FN, with precision, recall and F1 (0 where a denominator is 0)."""
  tp: int = 0
  fp: int = 0
  fn: int = 0

  def __add__(self, other: 'Counts') -> 'Counts':
    return Counts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

  @property
  def precision(self) -> float:
    return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

  @property
  def recall(self) -> float:
    return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

  @property
  def f1(self) -> float:
    p, r = self.precision, self.recall
    return 2 * p * r / (p + r) if p + r else 0.0

  def as_dict(self) -> Dict[str, float]:
    return {'tp': self.tp, 'fp': self.fp, 'fn': self.fn, 'precision': self.precision,
            'recall': self.recall, 'f1': self.f1}


def match(gt: Sequence[Interval], pred: Sequence[Interval], threshold: float = IOU_THRESHOLD
          ) -> List[Tuple[int, int]]:
  """One-to-one matches ``(pred index, gt index)`` of one video and one type.

  Predictions in onset order each take the not yet matched ground truth they overlap most
  (IoU >= ``threshold``; ties: the earlier ground truth).
  """
  taken = set()
  pairs = []
  for i in sorted(range(len(pred)), key=lambda k: (pred[k].onset, pred[k].offset, k)):
    p = pred[i]
    best, best_iou = None, -1.0
    for j, g in enumerate(gt):
      if j in taken:
        continue
      v = iou((p.onset, p.offset), (g.onset, g.offset))
      if v >= threshold and v > best_iou:
        best, best_iou = j, v
    if best is not None:
      taken.add(best)
      pairs.append((i, best))
  return pairs


def _by_type(intervals: Iterable[Interval], kind: str) -> List[Interval]:
  return [iv for iv in intervals if iv.type == kind]


def spotting_counts(gt: Mapping[Hashable, Sequence[Interval]],
                    pred: Mapping[Hashable, Sequence[Interval]],
                    threshold: float = IOU_THRESHOLD) -> Dict[str, Counts]:
  """Pooled counts ``{'mae': Counts, 'me': Counts, 'overall': Counts}`` over every video.

  ``gt`` and ``pred`` map a video key (e.g. ``(subject, video)``) to its intervals. A video with
  predictions and no ground truth contributes false positives; one without predictions, FNs.
  """
  out = {t: Counts() for t in TYPES}
  for key in set(gt) | set(pred):
    g_all, p_all = list(gt.get(key, ())), list(pred.get(key, ()))
    for t in TYPES:
      g, p = _by_type(g_all, t), _by_type(p_all, t)
      tp = len(match(g, p, threshold))
      out[t] = out[t] + Counts(tp, len(p) - tp, len(g) - tp)
  out['overall'] = out['mae'] + out['me']
  return out


def spotting_metrics(gt, pred, threshold: float = IOU_THRESHOLD) -> Dict[str, Dict[str, float]]:
  """:func:`spotting_counts` as plain dicts (counts, precision, recall, F1 per type)."""
  return {k: v.as_dict() for k, v in spotting_counts(gt, pred, threshold).items()}


def analysis_scores(pairs: Sequence[Tuple[str, str]], classes: Sequence[str] = STR_CLASSES
                    ) -> Dict[str, float]:
  """Analysis metrics of ``(truth, predicted)`` emotion pairs, truths within ``classes``.

  Returns per-class counts and the means: ``precision`` (P̄), ``recall`` (R̄), ``f1``
  (2 P̄ R̄ / (P̄ + R̄)), ``uf1`` (mean per-class F1) and ``uar`` (mean per-class recall). The means
  run over the classes that occur among the pairs (as truth or prediction), as the reference
  script averages over the emotions that occur: a class that never occurs has no precision or
  recall.
  """
  per_class = {}
  ps, rs, fs = [], [], []
  present = [c for c in classes if any(c in pair for pair in pairs)]
  for c in present:
    k = Counts(sum(1 for t, p in pairs if t == c and p == c),
               sum(1 for t, p in pairs if p == c and t != c),
               sum(1 for t, p in pairs if t == c and p != c))
    per_class[c] = k.as_dict()
    ps.append(k.precision)
    rs.append(k.recall)
    fs.append(k.f1)
  if not present:
    return {'precision': 0.0, 'recall': 0.0, 'f1': 0.0, 'uf1': 0.0, 'uar': 0.0, 'pairs': 0,
            'per_class': {}}
  p, r = float(np.mean(ps)), float(np.mean(rs))
  return {'precision': p, 'recall': r, 'f1': 2 * p * r / (p + r) if p + r else 0.0,
          'uf1': float(np.mean(fs)), 'uar': r, 'pairs': len(pairs), 'per_class': per_class}


def strs(gt: Mapping[Hashable, Sequence[Interval]], pred: Mapping[Hashable, Sequence[Interval]],
         classes: Sequence[str] = STR_CLASSES, types: Sequence[str] = ('me',),
         threshold: float = IOU_THRESHOLD) -> Dict[str, object]:
  """STRS = spotting F1 (over ``types``, pooled) x analysis F1 on the spotted TPs.

  The analysis takes the matched pairs whose ground-truth emotion is in ``classes``; a prediction's
  ``emotion`` outside ``classes`` (e.g. '' = not recognised) is wrong for every class.
  """
  spot = Counts()
  pairs = []
  for key in set(gt) | set(pred):
    for t in types:
      g, p = _by_type(gt.get(key, ()), t), _by_type(pred.get(key, ()), t)
      m = match(g, p, threshold)
      spot = spot + Counts(len(m), len(p) - len(m), len(g) - len(m))
      pairs += [(g[j].emotion, p[i].emotion) for i, j in m if g[j].emotion in classes]
  analysis = analysis_scores(pairs, classes)
  return {'strs': spot.f1 * analysis['f1'], 'spotting': spot.as_dict(), 'analysis': analysis}


def format_table(counts: Mapping[str, Counts]) -> str:
  """A markdown table of :func:`spotting_counts`."""
  lines = ['| | TP | FP | FN | precision | recall | F1 |', '|---|---|---|---|---|---|---|']
  for name, label in (('mae', 'MaE'), ('me', 'ME'), ('overall', 'overall')):
    k = counts[name]
    lines.append(f'| {label} | {k.tp} | {k.fp} | {k.fn} | {k.precision:.4f} | {k.recall:.4f} | '
                 f'{k.f1:.4f} |')
  return '\n'.join(lines)
