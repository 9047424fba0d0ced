"""The MEGC spotting metric and STRS: hand-computed cases, published counts, reference-code bugs."""

import numpy as np
import pytest

from mpt_jax.spotting import metrics as sm

I = sm.Interval


def _numpy_iou(a, b):
  """IoU by explicit frame sets (the definition), independent of the closed-form one."""
  fa, fb = np.arange(a[0], a[1] + 1), np.arange(b[0], b[1] + 1)
  return np.intersect1d(fa, fb).size / np.union1d(fa, fb).size


def test_iou_closed_intervals_hand_cases():
  assert sm.iou((1, 10), (1, 5)) == 0.5          # 5 of 10 frames: a match (>= 0.5)
  assert sm.iou((1, 3), (2, 4)) == 0.5           # 2 shared frames of 4; without the +1: 1/3
  assert sm.iou((1, 4), (3, 6)) == pytest.approx(2 / 6)
  assert sm.iou((1, 4), (5, 9)) == 0.0           # adjacent, no shared frame
  assert sm.iou((7, 7), (7, 7)) == 1.0           # one-frame intervals


def test_iou_matches_frame_sets():
  rng = np.random.default_rng(0)
  for _ in range(300):
    a0, b0 = rng.integers(0, 40, 2)
    a = (int(a0), int(a0 + rng.integers(0, 20)))
    b = (int(b0), int(b0 + rng.integers(0, 20)))
    assert sm.iou(a, b) == pytest.approx(_numpy_iou(a, b))


def test_counts_per_type_and_pooled():
  gt = {('s1', 'v1'): [I(10, 50, 'mae'), I(100, 110, 'me'), I(200, 212, 'me')],
        ('s2', 'v1'): [I(5, 40, 'mae')]}
  pred = {('s1', 'v1'): [I(12, 50, 'mae'),      # TP MaE (IoU 39/41)
                         I(101, 110, 'me'),     # TP ME
                         I(102, 111, 'me'),     # same expression again: FP, not a 2nd TP
                         I(200, 212, 'mae')],   # right place, wrong type: MaE FP, ME FN
          ('s3', 'v9'): [I(1, 5, 'me')]}        # a video without ground truth: FP
  c = sm.spotting_counts(gt, pred)
  assert (c['mae'].tp, c['mae'].fp, c['mae'].fn) == (1, 1, 1)
  assert (c['me'].tp, c['me'].fp, c['me'].fn) == (1, 2, 1)
  assert (c['overall'].tp, c['overall'].fp, c['overall'].fn) == (2, 3, 2)
  assert c['overall'].precision == pytest.approx(2 / 5)
  assert c['overall'].recall == pytest.approx(2 / 4)
  assert c['overall'].f1 == pytest.approx(2 * 0.4 * 0.5 / 0.9)


def test_counts_are_pooled_not_averaged_per_video():
  gt = {'a': [I(1, 10, 'me')], 'b': [I(1, 10, 'me')]}
  pred = {'a': [I(1, 10, 'me')], 'b': [I(30, 40, 'me'), I(50, 60, 'me'), I(70, 80, 'me')]}
  c = sm.spotting_counts(gt, pred)['me']
  assert (c.tp, c.fp, c.fn) == (1, 3, 1)
  assert c.f1 == pytest.approx(2 * 1 / (2 * 1 + 3 + 1))  # 0.333, not the per-video mean 0.5


def test_one_prediction_matches_one_ground_truth():
  # [1,10] has IoU exactly 0.5 with both [1,5] and [6,10]: one TP, the other GT an FN.
  c = sm.spotting_counts({'v': [I(1, 5, 'me'), I(6, 10, 'me')]}, {'v': [I(1, 10, 'me')]})['me']
  assert (c.tp, c.fp, c.fn) == (1, 0, 1)


def test_best_overlap_is_taken():
  # The first prediction overlaps GT 0 with IoU 0.5 and GT 1 with 11/12: it takes GT 1, so the
  # second prediction (IoU 6/7 with GT 0, 5/13 with GT 1) still finds GT 0 and both count.
  gt = {'v': [I(6, 11, 'me'), I(0, 10, 'me')]}
  pred = {'v': [I(0, 11, 'me'), I(6, 12, 'me')]}
  c = sm.spotting_counts(gt, pred)['me']
  assert (c.tp, c.fp, c.fn) == (2, 0, 0)


def _mdmd_like(n_gt, n_tp, n_fp, kind, start):
  """n_gt disjoint GT intervals, n_tp of them hit exactly, and n_fp predictions far from all."""
  gt = [I(start + 100 * k, start + 100 * k + 20, kind) for k in range(n_gt)]
  pred = [I(g.onset, g.offset, kind) for g in gt[:n_tp]]
  far = start + 100 * n_gt + 1000
  pred += [I(far + 30 * k, far + 30 * k + 10, kind) for k in range(n_fp)]
  return gt, pred


def test_mdmd_published_counts_on_casme2():
  """MDMD on CAS(ME)^2 (MEGC2020 baseline): MaE TP 109 FP 1414, ME TP 21 FP 5014, 300 + 57 GT;
  published F1 0.1196 / 0.0082 / 0.0376."""
  g1, p1 = _mdmd_like(300, 109, 1414, 'mae', 0)
  g2, p2 = _mdmd_like(57, 21, 5014, 'me', 10 ** 6)
  c = sm.spotting_counts({'v': g1 + g2}, {'v': p1 + p2})
  assert (c['overall'].tp, c['overall'].fp, c['overall'].fn) == (130, 6428, 227)
  assert round(c['mae'].f1, 4) == 0.1196
  assert round(c['me'].f1, 4) == 0.0082
  assert round(c['overall'].f1, 4) == 0.0376


def test_mean_published_spotting_f1():
  """MEAN on CAS(ME)^2 ME: TP 17, FP 206, FN 40 -> F1 0.1214 (its STRS 0.0809 = 0.1214 x its
  analysis F1 0.6667)."""
  assert round(sm.Counts(17, 206, 40).f1, 4) == 0.1214


def test_analysis_hand_case():
  pairs = [('negative', 'negative'), ('negative', 'positive'), ('positive', 'positive'),
           ('surprise', 'negative')]
  a = sm.analysis_scores(pairs)
  # negative: TP 1 FP 1 FN 1 (P .5 R .5); positive: TP 1 FP 1 FN 0 (P .5 R 1); surprise: all 0.
  assert a['per_class']['negative']['tp'] == 1 and a['per_class']['negative']['fn'] == 1
  assert a['precision'] == pytest.approx(1 / 3)
  assert a['recall'] == pytest.approx(1 / 2)
  assert a['f1'] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # 0.4
  assert a['uf1'] == pytest.approx((0.5 + 2 / 3 + 0) / 3)


def test_uar_is_mean_recall_not_the_reference_codes_mean_precision():
  # negative: P 1/1, R 1/2; positive: P 1/2, R 1/1 (equal means by symmetry); surprise never occurs
  a = sm.analysis_scores([('negative', 'negative'), ('negative', 'positive'),
                          ('positive', 'positive')])
  assert a['uar'] == pytest.approx(np.mean([0.5, 1.0]))
  # an asymmetric case tells them apart: negative P 0/0 R 0/2; positive P 1/3 R 1/1
  b = sm.analysis_scores([('negative', 'positive'), ('negative', 'positive'),
                          ('positive', 'positive')])
  assert b['uar'] == pytest.approx(np.mean([0.0, 1.0]))          # mean recall: 1/2
  assert b['uar'] != pytest.approx(np.mean([0.0, 1 / 3]))         # the buggy mean precision


def _reference_fn_loop(pairs, emotion):
  """The reference script's per-class analysis FN loop: pairs *predicted* ``emotion`` that are
  not a TP (so it counts the false positives a second time)."""
  return sum(1 for t, p in pairs if p == emotion and not (t == p == emotion))


def test_analysis_fn_is_truth_c_predicted_otherwise_not_the_reference_loop():
  pairs = [('negative', 'positive'), ('negative', 'positive'), ('positive', 'positive')]
  a = sm.analysis_scores(pairs)
  assert a['per_class']['negative']['fn'] == 2     # two negatives missed
  assert _reference_fn_loop(pairs, 'negative') == 0
  assert a['per_class']['positive']['fn'] == 0
  assert _reference_fn_loop(pairs, 'positive') == 2


def test_strs_only_on_spotted_tps_with_a_3_class_truth():
  gt = {'v': [I(10, 20, 'me', emotion='negative'), I(40, 50, 'me', emotion='others'),
              I(70, 80, 'me', emotion='positive'), I(100, 300, 'mae', emotion='positive')]}
  pred = {'v': [I(10, 20, 'me', emotion='negative'),   # TP, analysed, right
                I(40, 50, 'me', emotion='negative'),   # TP, truth 'others': not analysed
                I(120, 130, 'me', emotion='positive'),  # FP
                I(100, 300, 'mae', emotion='positive')]}  # MaE: not in the ME-only STRS
  r = sm.strs(gt, pred)
  s = r['spotting']
  assert (s['tp'], s['fp'], s['fn']) == (2, 1, 1)
  assert r['analysis']['pairs'] == 1
  # one right 'negative', the only class that occurs: analysis F1 1.
  assert r['analysis']['f1'] == pytest.approx(1.0)
  assert r['strs'] == pytest.approx(s['f1'])
  # a wrong class on it: negative P 0/0, R 0/1; surprise P 0/1, R 0/0 -> F1 0.
  pred['v'][0] = I(10, 20, 'me', emotion='surprise')
  assert sm.strs(gt, pred)['strs'] == 0.0
  assert s['f1'] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))


def test_interval_validation():
  with pytest.raises(ValueError, match='offset before onset'):
    I(10, 9, 'me')
  with pytest.raises(ValueError, match='type'):
    I(1, 2, 'micro')
