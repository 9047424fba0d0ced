"""The realistic synthetic benchmark: only the motion separates its classes; it prepares and loads."""

import numpy as np
import pytest
from scipy import stats
from sklearn import linear_model
from sklearn import model_selection

from tfds_builders import synthetic_faces as sf


@pytest.fixture(scope='module')
def clips():
  config = [c for c in sf.SyntheticFaces.BUILDER_CONFIGS if c.name == 'small'][0]
  return sf.generate(config)


def _loso_accuracy(features, data):
  """Leave-one-subject-out accuracy of a ridge classifier (sklearn) on per-clip features."""
  pred = model_selection.cross_val_predict(
      linear_model.RidgeClassifier(alpha=1.0), features, data['labels'], groups=data['subjects'],
      cv=model_selection.LeaveOneGroupOut())
  hits = int((pred == data['labels']).sum())
  # One-sided binomial test against chance (1/3).
  return hits / len(pred), stats.binomtest(hits, len(pred), 1 / 3, alternative='greater').pvalue


def _frames_16px(data, pick):
  import cv2  # pylint: disable=g-import-not-at-top
  out = []
  for f, apex in zip(data['frames'], data['apex']):
    g = f.astype(np.float32).mean(-1) / 255.0
    out.append(cv2.resize(pick(g, apex), (16, 16), interpolation=cv2.INTER_AREA).ravel())
  return np.asarray(out)


def test_no_motion_input_stays_at_chance_while_the_motion_separates_the_classes(clips):
  assert len(clips['frames']) == 12 * 3 * 2 and sorted(set(clips['subjects'])) == list(range(12))
  # A model of the onset frame (no motion input) cannot beat chance under LOSO...
  acc, p = _loso_accuracy(_frames_16px(clips, lambda g, a: g[0]), clips)
  assert p > 0.05, (acc, p)
  # ...while the same model of the apex-minus-onset difference (the motion) does.
  acc, p = _loso_accuracy(_frames_16px(clips, lambda g, a: g[a] - g[0]), clips)
  assert acc > 0.5 and p < 1e-4, (acc, p)


def test_motion_is_small_and_regional():
  # The apex field's largest displacement is the amplitude; it is near zero away from the regions.
  for emotion in sf.CLASSES:
    field = sf.displacement(emotion, 1.5)
    mag = np.sqrt((field ** 2).sum(-1))
    assert mag.max() == pytest.approx(1.5)
    assert mag[0:6, :].max() < 0.01 and mag[:, 0:4].max() < 0.05  # forehead top, left edge
  # The warp moves content by the field: a shifted photo matches OpenCV's integer translation.
  face = sf.face_photo(0)
  moved = sf.warp(face, np.zeros((sf.SIZE, sf.SIZE, 2)), (2.0, 0.0))
  np.testing.assert_allclose(moved[:, 10:50], face[:, 8:48], atol=1e-5)


def test_prepares_and_loads_as_a_dataset(tmp_path):
  from configs import synthetic_faces  # pylint: disable=g-import-not-at-top
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  config = synthetic_faces.get_config('smoke')
  config.data.data_dir = str(tmp_path)
  prepare.prepare(config.data)
  data = input_pipeline.load(config)
  assert len(data) == 72 and tuple(data.classes) == sf.CLASSES
  assert len(set(data.subjects.tolist())) == 12
