"""``--mode=spot``: over a prepared long-video dataset (MEGC submission + metrics) and on one video
classified by a recogniser; ``--mode=predict`` refuses a long recording."""

import csv
import json
import os

import cv2
import numpy as np
import pytest

from configs import casme2_longvideo as casme2_lv_config
from mpt_jax import predict
from mpt_jax.spotting import metrics as sm
from mpt_jax.spotting import run as spot_run
from tests import longvideo_fixtures as lf
from tfds_builders import prepare


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  root = tmp_path_factory.mktemp('planted')
  base, frames, events = lf.write_casme2_planted(str(root))
  return root, base, frames, events


def test_spot_over_a_prepared_dataset(prepared_planted, tmp_path):
  config, events = prepared_planted
  workdir = str(tmp_path / 'spot')
  text = spot_run.spot_dataset(config, workdir)
  assert '| overall |' in text
  summary = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert summary['metrics']['overall']['f1'] >= 0.5 and summary['metrics']['me']['f1'] >= 0.5
  # spots.csv is the MEGC submission format; scoring it again gives the same counts
  with open(os.path.join(workdir, 'spots.csv')) as f:
    header = next(csv.reader(f))
  assert header == ['subject', 'video', 'onset', 'offset', 'type', 'emotion']
  subs = spot_run.read_submission(os.path.join(workdir, 'spots.csv'))
  truth = {('s15', '15_0101disgustingteeth'): [sm.Interval(e.onset, e.offset, e.type)
                                               for e in events]}
  again = sm.spotting_metrics(truth, subs)
  assert again == summary['metrics']
  # frames are the sheet's 1-based numbers: the planted MEs come back almost exactly (a frame off
  # would leave IoU 12/14 < 0.9)
  assert sm.spotting_counts(truth, subs, threshold=0.9)['me'].tp >= 2
  assert {iv.type for ivs in subs.values() for iv in ivs} <= {'me', 'mae'}
  report = open(os.path.join(workdir, 'report.md')).read()
  assert '## MEGC metric' in report and 'MDMD' in report
  pngs = os.listdir(os.path.join(workdir, 'timelines'))
  assert pngs == ['s15_15_0101disgustingteeth.png']


@pytest.fixture(scope='module')
def prepared_planted(planted):
  root, base, _, events = planted
  config = casme2_lv_config.get_config()
  config.data.manual_dir = base
  config.data.data_dir = str(root / 'tfds')
  config.data.prepare_workers = 1
  prepare.prepare(config.data)
  return config, events


class FakeRecogniser:
  """What spot_input needs of predict.Recogniser; records the clips it is given."""
  stored_size = 32
  classes = ['negative', 'positive', 'surprise']
  finished = ['p01', 'p02']
  workdir = '/fake/run'

  def __init__(self, subjects=('p01', 'p02')):
    self.lengths = []
    self.subjects = list(subjects)
    self.folds = []

  def preprocess(self, frames):
    self.lengths.append(len(frames))
    assert frames[0].shape == (32, 32, 3)
    return np.zeros((4, 8, 8, 3), np.float16), ''

  def probabilities(self, clips, folds=None):
    self.folds.append(folds)
    n = len(clips)
    p = np.tile(np.array([[0.2, 0.7, 0.1]]), (n, 1))
    return p, {s: p for s in self.finished}


def test_spot_in_a_video_and_classify_the_mes(planted, tmp_path):
  _, _, frames, events = planted
  video = str(tmp_path / 'long.avi')
  writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'MJPG'), 30, (128, 128))
  for f in frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
  writer.release()
  rec = FakeRecogniser()
  out = str(tmp_path / 'out')
  text = spot_run.spot_input('/fake/run', video, out, recogniser=rec)
  assert 'Results:' in text
  result = json.load(open(os.path.join(out, 'spots.json')))
  assert result['fps'] == 30.0 and result['frames'] == len(frames)
  ivs = result['intervals']
  mes = [r for r in ivs if r['type'] == 'me']
  assert mes and all(r['prediction'] == 'positive' for r in mes)
  assert all(r['prediction'] == '' for r in ivs if r['type'] == 'mae')
  # each ME is classified from exactly its own frames
  assert rec.lengths == [r['offset'] - r['onset'] + 1 for r in mes]
  with open(os.path.join(out, 'spots.csv')) as f:
    rows = list(csv.DictReader(f))
  assert list(rows[0]) == ['onset', 'apex', 'offset', 'type', 'score', 'prediction',
                           'p_negative', 'p_positive', 'p_surprise']
  assert os.path.getsize(os.path.join(out, 'timeline.png')) > 1000
  truth = {0: [sm.Interval(e.onset, e.offset, e.type) for e in events]}
  got = {0: [sm.Interval(r['onset'], r['offset'], r['type']) for r in ivs]}
  assert sm.spotting_counts(truth, got)['me'].f1 >= 0.5


def test_a_frame_folder_needs_its_frame_rate(tmp_path):
  folder = tmp_path / 'frames'
  folder.mkdir()
  cv2.imwrite(str(folder / 'img1.png'), np.zeros((8, 8), np.uint8))
  with pytest.raises(spot_run.SpotError, match='--fps'):
    spot_run.spot_input('/fake/run', str(folder), recogniser=FakeRecogniser())


def test_predict_refuses_a_long_recording(tmp_path):
  folder = tmp_path / 'long'
  folder.mkdir()
  img = np.zeros((4, 4), np.uint8)
  for i in range(predict.LONG_INPUT_FRAMES + 1):
    cv2.imwrite(str(folder / f'f{i}.png'), img)
  with pytest.raises(predict.PredictError, match='--mode=spot'):
    predict.predict(str(tmp_path / 'run'), str(folder))


@pytest.mark.parametrize('run_subjects, folds', [(('s15', 's16'), ['s15']),
                                                  (('p01', 'p02'), ['p01', 'p02'])])
def test_spot_then_recognise_uses_the_fold_without_the_subject(prepared_planted, tmp_path,
                                                               run_subjects, folds):
  """The STR task: every spotted ME classified by the fold model trained without the video's
  subject (or every fold when the run never saw the subject); STRS in metrics.json."""
  config, _ = prepared_planted
  rec = FakeRecogniser(run_subjects)
  rec.finished = list(run_subjects)
  workdir = str(tmp_path / 'str')
  text = spot_run.spot_dataset(config, workdir, recogniser=rec)
  assert rec.folds == [folds]
  assert 'STRS' in text
  summary = json.load(open(os.path.join(workdir, 'metrics.json')))
  r = summary['str']
  # every planted ME's truth is 'positive' and the recogniser says positive: analysis F1 1
  assert r['analysis']['f1'] == 1.0 and r['analysis']['pairs'] >= 2
  assert r['strs'] == pytest.approx(r['spotting']['f1'])
  subs = spot_run.read_submission(os.path.join(workdir, 'spots.csv'))
  assert {iv.emotion for ivs in subs.values() for iv in ivs if iv.type == 'me'} == {'positive'}
  assert {iv.emotion for ivs in subs.values() for iv in ivs if iv.type == 'mae'} <= {''}
  assert '## Spot, then recognise (STRS)' in open(os.path.join(workdir, 'report.md')).read()


def _signal_video(true_peaks, decoy_peaks, n=200):
  from mpt_jax.spotting import spotter  # pylint: disable=g-import-not-at-top
  t = np.arange(n, dtype=np.float64)
  s = np.zeros(n)
  for p in true_peaks:
    s += np.exp(-(t - p) ** 2 / 4)
  for p in decoy_peaks:
    s += 0.4 * np.exp(-(t - p) ** 2 / 4)
  return spotter.SpotResult([], s, np.zeros(n), 0.0, 0.0, np.arange(1, n + 1))


def test_threshold_chosen_on_the_other_subjects_only():
  from mpt_jax.spotting import params  # pylint: disable=g-import-not-at-top
  me = lambda p: sm.Interval(p + 1 - 6, p + 1 + 6, 'me')  # pylint: disable=unnecessary-lambda-assignment
  signals, truth, subject_of = {}, {}, {}
  for s in ('a', 'b', 'c'):
    signals[(s, 'v')] = _signal_video([40, 120], [80, 160])
    truth[(s, 'v')] = [me(40), me(120)]  # the 0.4 decoys are not expressions
    subject_of[(s, 'v')] = s
  grid = (0.1, 0.5, 0.9)
  preset = params.PRESETS['casme2_longvideo']
  chosen = spot_run.choose_p_loso(signals, truth, subject_of, preset, grid)
  assert chosen == {'a': 0.5, 'b': 0.5, 'c': 0.5}  # p 0.1 spots the decoys too; ties: smaller
  # subject a's own truth says the decoys are expressions: its threshold does not move, the
  # others' (chosen with a's videos among their training videos) may
  for v in ('v', 'w', 'x'):
    signals[('a', v)] = _signal_video([40, 120], [80, 160])
    truth[('a', v)] = [me(40), me(80), me(120), me(160)]
    subject_of[('a', v)] = 'a'
  again = spot_run.choose_p_loso(signals, truth, subject_of, preset, grid)
  assert again['a'] == 0.5
  assert again['b'] == again['c'] == 0.1  # a's three videos now dominate b's and c's training
  with pytest.raises(spot_run.SpotError, match='at least 2 subjects'):
    spot_run.choose_p_loso({('a', 'v'): signals[('a', 'v')]}, truth, {('a', 'v'): 'a'}, preset,
                           grid)
