"""Metrics against hand-computed confusion matrices and scikit-learn."""

import numpy as np
import pytest
from sklearn import metrics as skm

from mpt_jax import metrics


def test_hand_computed_example():
  labels = [0, 0, 0, 1, 1, 2]
  preds = [0, 0, 1, 1, 2, 2]
  m = metrics.compute(labels, preds, ['neg', 'pos', 'sur'])
  assert m['confusion_matrix'] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
  assert m['accuracy'] == pytest.approx(4 / 6)
  # F1: neg 2*2/(4+0+1) = 0.8; pos 2/(2+1+1) = 0.5; sur 2/(2+1+0) = 2/3
  assert m['uf1'] == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)
  assert m['uar'] == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)
  assert m['wf1'] == pytest.approx((0.8 * 3 + 0.5 * 2 + 2 / 3 * 1) / 6)
  assert m['per_class_accuracy'] == pytest.approx({'neg': 2 / 3, 'pos': 0.5, 'sur': 1.0})


@pytest.mark.parametrize('seed', range(5))
def test_against_sklearn(seed):
  rng = np.random.default_rng(seed)
  k = 5
  labels = rng.integers(0, k, 200)
  preds = np.where(rng.random(200) < 0.6, labels, rng.integers(0, k, 200))
  m = metrics.compute(labels, preds, [str(i) for i in range(k)])
  assert m['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds))
  assert m['uf1'] == pytest.approx(skm.f1_score(labels, preds, average='macro', labels=range(k)))
  assert m['uar'] == pytest.approx(skm.balanced_accuracy_score(labels, preds))
  assert m['wf1'] == pytest.approx(skm.f1_score(labels, preds, average='weighted'))
  np.testing.assert_array_equal(m['confusion_matrix'], skm.confusion_matrix(labels, preds))


def test_absent_class_and_bad_input():
  m = metrics.compute([0, 0, 1], [0, 1, 1], ['a', 'b', 'c'])
  assert m['undefined_classes'] == ['c'] and m['per_class_accuracy']['c'] is None
  assert m['uf1'] == pytest.approx(skm.f1_score([0, 0, 1], [0, 1, 1], average='macro',
                                                labels=[0, 1]))
  with pytest.raises(ValueError, match='outside'):
    metrics.compute([0, 3], [0, 1], ['a', 'b'])
  assert metrics.mean_std([0.5, 0.7]) == pytest.approx({'mean': 0.6, 'std': 0.1, 'n': 2,
                                                        'ddof': 0})
  assert metrics.mean_std([0.5, 0.7])['std'] == pytest.approx(np.std([0.5, 0.7], ddof=0))


@pytest.mark.parametrize('seed', range(6))
def test_uf1_and_uar_share_one_definition_on_subsets(seed):
  """A subset (one source dataset of the composite) may lack classes, in the labels, the
  predictions or both: UF1 and UAR both average over the classes present in the labels."""
  rng = np.random.default_rng(seed)
  k = 4
  labels = rng.integers(0, 3, 60)  # class 3 never occurs in the labels
  labels[labels == seed % 3] = (seed + 1) % 3  # and one more class is absent
  preds = np.where(rng.random(60) < 0.5, labels, rng.integers(0, k, 60))  # may predict 3
  m = metrics.compute(labels, preds, [str(i) for i in range(k)])
  present = np.unique(labels)
  assert len(present) == 2
  assert m['uf1'] == pytest.approx(skm.f1_score(labels, preds, average='macro', labels=present))
  assert m['uar'] == pytest.approx(skm.recall_score(labels, preds, average='macro',
                                                    labels=present))
  assert sorted(m['undefined_classes']) == sorted(str(c) for c in set(range(k)) - set(present))
