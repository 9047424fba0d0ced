"""The learned spotter: chunked magnified-motion energy, labels, LOSO training on planted fakes,
and the held-out subject's truth never reaching its own model or threshold."""

import dataclasses

import numpy as np
import pytest

from configs import casme2_longvideo as casme2_lv_config
from mpt_jax import errors
from mpt_jax.spotting import learned
from mpt_jax.spotting import metrics as sm
from mpt_jax.spotting import params
from mpt_jax.spotting import planted_video as pv
from mpt_jax.spotting import spotter

SIZE = 96
PRESET = params.PRESETS['casme2_longvideo']


def _config(**learned_fields):
  config = casme2_lv_config.get_config()
  config.spot.learned.update(learned_fields)
  return config


def _region_energy(motion, size):
  boxes = spotter.region_boxes(size)
  return np.stack([np.mean(motion[:, y0:y1, x0:x1] ** 2, axis=(1, 2)) for y0, y1, x0, x1 in
                   [boxes[r] for r in spotter.REGIONS] + [boxes['nose']]], axis=1)


def test_chunked_energy_equals_the_magnifier_on_the_whole_video():
  """A padded, chunked computation (filter state carried over) equals the model's magnifier run
  on the whole video at once; videos of other lengths reuse the one compiled program."""
  size = 32
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (50, size, size)).astype(np.uint8)
  mag = learned.build_magnifier(_config(), size)
  assert mag.image_size == (size, size) and mag.lambda_c == 9.0 and mag.fs == 30.0
  whole = np.asarray(mag(frames[None, ..., None].astype(np.float32) / 255.0))[0, ..., 0]
  want = _region_energy(whole, size)
  got = learned.motion_energy(frames, mag, chunk=16)  # 3 full chunks and one of 2 (+14 padding)
  np.testing.assert_allclose(got, want, rtol=2e-4, atol=1e-7)
  compiled = learned._energy_chunk._cache_size()  # pylint: disable=protected-access
  shorter = learned.motion_energy(frames[:37], mag, chunk=16)
  np.testing.assert_allclose(shorter, got[:37], rtol=1e-5, atol=1e-8)  # causal: a prefix
  assert learned._energy_chunk._cache_size() == compiled  # pylint: disable=protected-access


def test_frame_labels_and_context():
  nums = np.arange(10, 30)
  truth = [sm.Interval(12, 25, 'mae'), sm.Interval(15, 17, 'me')]
  y = learned.frame_labels(nums, truth)
  want = np.zeros(20, int)
  want[2:16] = 2
  want[5:8] = 1  # the ME wins over the MaE around it; closed intervals
  np.testing.assert_array_equal(y, want)
  x = np.arange(12, dtype=np.float32).reshape(6, 2)
  s = learned.context_stack(x, 2, 2)  # offsets -2, 0, 2, the edges repeated
  np.testing.assert_array_equal(s[0], [0, 1, 0, 1, 4, 5])
  np.testing.assert_array_equal(s[5], [6, 7, 10, 11, 10, 11])


@pytest.fixture(scope='module')
def fakes():
  """Five fake subjects, one planted 14 s video each (different expressions, noise, drift)."""
  videos = {}
  for s in range(5):
    events = pv.default_events(420, seed=s + 1, me_every=80)
    videos[(f's{s}', 'v')] = (pv.render(420, events, SIZE, seed=s + 1), events)
  return videos


_FEATURES = {}


def _features(fakes, config):
  """The fakes' per-frame features, computed once per ``config.spot.learned`` (the fakes and the
  preset are the module's)."""
  key = str(config.spot.learned)
  if key not in _FEATURES:
    _FEATURES[key] = {k: learned.frame_features(f, PRESET, config) for k, (f, _) in fakes.items()}
  return _FEATURES[key]


def _loso(fakes, config, truth=None):
  feats = _features(fakes, config)
  nums = {k: np.arange(1, len(f) + 1) for k, (f, _) in fakes.items()}
  truth = truth or {k: pv.ground_truth(ev) for k, (_, ev) in fakes.items()}
  subject_of = {k: k[0] for k in fakes}
  return learned.spot_loso(feats, nums, truth, subject_of, PRESET, config)


def _counts(fakes, results):
  truth = {k: pv.ground_truth(ev) for k, (_, ev) in fakes.items()}
  return sm.spotting_counts(truth, {k: r.intervals for k, r in results.items()})


def test_learned_spotter_finds_the_held_out_subjects_planted_expressions(fakes):
  """The magnified-motion energy alone (no optical flow)."""
  results, chosen = _loso(fakes, _config(flow_features=False))
  c = _counts(fakes, results)
  # measured: MaE 5/4/0 (TP/FP/FN), ME 7/2/8, overall F1 0.632
  assert c['overall'].f1 >= 0.5 and c['mae'].f1 >= 0.5, sm.format_table(c)
  assert c['me'].tp >= 5, sm.format_table(c)
  assert set(chosen) == {k[0] for k in fakes}
  for k, r in results.items():
    assert r.threshold_me == chosen[k[0]]  # an absolute threshold on the probabilities
    for iv in r.intervals:
      assert iv.onset <= iv.apex <= iv.offset


def test_learned_spotter_with_the_flow_scores(fakes):
  results, _ = _loso(fakes, _config())  # the default: with the flow scores
  c = _counts(fakes, results)
  # measured: MaE 5/6/0, ME 10/0/5, overall F1 0.732
  assert c['me'].f1 >= 0.5 and c['overall'].f1 >= 0.5, sm.format_table(c)


def test_held_out_truth_never_reaches_its_model_or_threshold(fakes):
  """Subject s0's truth replaced by nonsense: s0's spotted intervals and threshold do not move
  (its model and p come from the other subjects only), the other subjects' do (s0 is among their
  training videos, so the test can see the truth's influence)."""
  config = _config(flow_features=False)
  base, p_base = _loso(fakes, config)
  truth = {k: pv.ground_truth(ev) for k, (_, ev) in fakes.items()}
  truth[('s0', 'v')] = [sm.Interval(o, o + 12, 'me') for o in range(5, 400, 20)]
  moved, p_moved = _loso(fakes, config, truth)
  assert moved[('s0', 'v')].intervals == base[('s0', 'v')].intervals
  np.testing.assert_array_equal(moved[('s0', 'v')].score_me, base[('s0', 'v')].score_me)
  assert p_moved['s0'] == p_base['s0']
  others = [k for k in fakes if k[0] != 's0']
  assert any(not np.array_equal(moved[k].score_me, base[k].score_me) for k in others)


def test_each_threshold_is_chosen_on_the_other_subjects_videos(fakes, monkeypatch):
  """spot_loso hands choose_p only the training subjects' videos and truth, once per fold."""
  calls = []
  real = spotter.choose_p

  def recording(signals, truth, prm, grid):
    calls.append((sorted(signals), sorted(truth)))
    return real(signals, truth, prm, grid)

  monkeypatch.setattr(spotter, 'choose_p', recording)
  _, chosen = _loso(fakes, _config(flow_features=False))
  assert len(calls) == len(fakes)
  for held_out, (videos, truth) in zip(sorted(chosen), calls):
    assert videos == truth == sorted(k for k in fakes if k[0] != held_out)


def test_threshold_is_chosen_on_the_training_videos_only():
  """choose_p scores only the videos it is given: a training set whose truth says the decoys are
  expressions picks a lower p than one whose truth does not."""
  t = np.arange(200, dtype=np.float64)
  s = sum(np.exp(-(t - p) ** 2 / 4) for p in (40, 120)) + sum(
      0.4 * np.exp(-(t - p) ** 2 / 4) for p in (80, 160))
  res = spotter.SpotResult([], s, np.zeros(200), 0.0, 0.0, np.arange(1, 201))
  me = lambda p: sm.Interval(p + 1 - 6, p + 1 + 6, 'me')  # pylint: disable=unnecessary-lambda-assignment
  q = dataclasses.replace(PRESET, threshold='absolute')
  grid = (0.2, 0.5, 0.8)
  assert spotter.choose_p({'v': res}, {'v': [me(40), me(120)]}, q, grid) == 0.5
  assert spotter.choose_p({'v': res}, {'v': [me(p) for p in (40, 80, 120, 160)]}, q, grid) == 0.2


def test_one_subject_is_refused_naming_the_setting(fakes):
  k = ('s0', 'v')
  frames, events = fakes[k]
  feats = {k: learned.frame_features(frames, PRESET, _config(flow_features=False))}
  with pytest.raises(errors.UserError, match='config.spot.method=learned.*at least 2 subjects'):
    learned.spot_loso(feats, {k: np.arange(1, 421)}, {k: pv.ground_truth(events)}, {k: 's0'},
                      PRESET, _config())


@pytest.fixture(scope='module')
def prepared_three_subjects(tmp_path_factory):
  from tests import longvideo_fixtures as lf  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  root = tmp_path_factory.mktemp('planted3')
  base, _, _ = lf.write_casme2_planted(str(root), n=420, subjects=3)
  config = casme2_lv_config.get_config()
  config.data.manual_dir = base
  config.data.data_dir = str(root / 'tfds')
  config.data.prepare_workers = 1
  prepare.prepare(config.data)
  return config


@pytest.mark.slow
def test_spot_mode_with_the_learned_spotter(prepared_three_subjects, tmp_path):
  """--mode=spot over a prepared dataset with config.spot.method='learned': LOSO over its three
  subjects, a threshold per subject, the MEGC submission and report."""
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from mpt_jax.spotting import run as spot_run  # pylint: disable=g-import-not-at-top
  config = prepared_three_subjects
  config.spot.method = 'learned'
  workdir = str(tmp_path / 'learned')
  text = spot_run.spot_dataset(config, workdir)
  print(text)
  assert '| overall |' in text
  summary = json.load(open(os.path.join(workdir, 'metrics.json')))
  assert summary['method'] == 'learned' and summary['videos'] == 3
  assert sorted(summary['p_per_subject']) == ['s15', 's16', 's17']
  # each subject's model trained on the other two videos (with the flow scores, the default)
  # measured (JPEG-stored 128 px frames): MaE 3/4/0 (TP/FP/FN), ME 5/0/4, overall F1 0.667
  assert summary['metrics']['overall']['f1'] >= 0.5 and summary['metrics']['me']['f1'] >= 0.5, text
  subs = spot_run.read_submission(os.path.join(workdir, 'spots.csv'))
  assert {k[0] for k in subs} <= {'s15', 's16', 's17'}
  assert 'Learned spotter' in open(os.path.join(workdir, 'report.md')).read()
  config.spot.method = 'deep'
  with pytest.raises(spot_run.SpotError, match="config.spot.method must be one of"):
    spot_run.spot_dataset(config, str(tmp_path / 'bad'))


@pytest.mark.slow
def test_bench_spot_learned_prints_one_json_line():
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-m', 'benchmarks.bench_spot', '--seconds=5', '--size=64',
                      '--method=learned', '--flow_features=0'],
                     cwd=root, capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  out = json.loads([l for l in r.stdout.splitlines() if l.strip()][-1])
  assert out['method'] == 'learned' and out['frames'] == 150 and out['frames_per_s'] > 0
