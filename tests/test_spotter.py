"""The training-free spotter: region pooling against numpy, peak/interval rules, planted video."""

import numpy as np
import pytest

from mpt_jax.spotting import metrics as sm
from mpt_jax.spotting import params
from mpt_jax.spotting import planted_video as pv
from mpt_jax.spotting import spotter

SIZE = 96


def _static(size=SIZE):
  b = spotter.region_boxes(size)
  return b, (b['nose'],) + tuple(b[r] for r in spotter.REGIONS)


def test_region_boxes_follow_the_aligned_face():
  b, _ = _static(128)
  for y0, y1, x0, x1 in b.values():
    assert 0 <= y0 < y1 <= 128 and 0 <= x0 < x1 <= 128
  centre_y = {k: (v[0] + v[1]) / 2 for k, v in b.items()}
  assert centre_y['brow_left'] < centre_y['eye_left'] < centre_y['nose'] < centre_y['mouth']
  assert b['brow_left'][3] <= 64 <= b['brow_right'][2] + 1  # left brow left of the midline


def _numpy_pool(fa, fb, boxes):
  def pooled(flow):
    ny0, ny1, nx0, nx1 = boxes['nose']
    rel = flow - flow[:, ny0:ny1, nx0:nx1].mean(axis=(1, 2), keepdims=True)
    cols = []
    for r in spotter.REGIONS:
      y0, y1, x0, x1 = boxes[r]
      mag = np.sort(np.hypot(rel[:, y0:y1, x0:x1, 0], rel[:, y0:y1, x0:x1, 1]).reshape(
          len(flow), -1), axis=1)
      top = max(1, mag.shape[1] // 3)
      cols.append(mag[:, -top:].mean(axis=1))
    return np.stack(cols, 1)
  return np.maximum(pooled(fa) - pooled(fb), 0)


def test_pool_regions_matches_numpy():
  rng = np.random.default_rng(0)
  boxes, static = _static()
  fa = rng.normal(0, 1, (3, SIZE, SIZE, 2)).astype(np.float32)
  fb = 0.5 * rng.normal(0, 1, (3, SIZE, SIZE, 2)).astype(np.float32)
  got = np.asarray(spotter._pool_regions(fa, fb, static))
  np.testing.assert_allclose(got, _numpy_pool(fa, fb, boxes), rtol=1e-5, atol=1e-6)


def test_head_translation_and_sustained_motion_score_zero():
  boxes, static = _static()
  shift = np.zeros((1, SIZE, SIZE, 2), np.float32)
  shift[..., 0], shift[..., 1] = 2.0, -1.0  # the whole head moves: the nose moves alike
  np.testing.assert_allclose(spotter._pool_regions(shift, 0 * shift, static), 0, atol=1e-5)
  local = np.zeros_like(shift)
  y0, y1, x0, x1 = boxes['mouth']
  local[0, y0:y1, x0:x1, 1] = 1.0
  s = np.asarray(spotter._pool_regions(local, 0 * local, static))[0]
  names = list(spotter.REGIONS)
  assert s[names.index('mouth')] == pytest.approx(1.0)
  assert all(s[i] == 0 for i, n in enumerate(names) if n != 'mouth')
  # A movement still there at t + k (B as large as A): not a transient, scores 0.
  assert np.all(np.asarray(spotter._pool_regions(local, local, static)) == 0)


def test_peaks_threshold_distance_and_intervals():
  t = np.arange(200, dtype=np.float64)
  score = np.exp(-(t - 50) ** 2 / 8) + 0.8 * np.exp(-(t - 140) ** 2 / 8) + 0.05
  got, thr = spotter.peaks_to_intervals(score, k=6, p=0.5)
  assert thr == pytest.approx(score.mean() + 0.5 * (score.max() - score.mean()))
  assert [g[1] for g in got] == [50, 140]
  assert [(g[0], g[2]) for g in got] == [(44, 56), (134, 146)]  # narrow peaks: peak +- k
  # a peak closer than k to a higher one is not a second peak
  two = score + 0.9 * np.exp(-(t - 54) ** 2 / 2)
  assert [g[1] for g in spotter.peaks_to_intervals(two, k=6, p=0.5)[0]] == [54, 140]
  # a wide peak: the interval is its peak-to-valley core, wider than peak +- k
  wide = np.exp(-(t - 100) ** 2 / 400)
  (lo, pk, hi, _), = spotter.peaks_to_intervals(wide, k=6, p=0.5)[0]
  assert pk == 100 and lo < 94 and hi > 106
  # the edge is where the score falls to valley + 0.33 (peak - valley)
  assert wide[lo] > 0.33 * (1 - wide[88]) + wide[88] >= wide[lo - 1] - 1e-12


def test_overlapping_micro_and_macro_candidates():
  mae = [(100, 120, 140, 1.0), (300, 320, 340, 1.0)]
  me = [(114, 120, 126, 0.9),   # a short movement seen at both lags: the ME wins
        (304, 310, 316, 0.2),   # the slow movement's onset at the micro lag: the MaE wins
        (500, 506, 512, 0.1)]   # alone: kept
  keep_me, keep_mae = spotter.resolve_overlaps(me, mae)
  assert keep_me == [me[0], me[2]] and keep_mae == [mae[1]]


def test_working_stride_and_presets():
  assert params.working_stride(200) == 7 and params.working_stride(30) == 1
  assert params.working_stride(60) == 2
  assert params.params_for('samm_longvideo', 200).me_max == 105
  own = params.params_for('my_video', 60.0)
  assert (own.me_min, own.me_max) == (14, 32)


@pytest.fixture(scope='module')
def planted():
  n = 420
  events = pv.default_events(n, seed=1, me_every=80)
  return pv.render(n, events, SIZE, seed=1), events


def test_planted_expressions_are_found(planted):
  frames, events = planted
  assert {e.type for e in events} == {'me', 'mae'}
  res = spotter.spot(frames, np.arange(1, len(frames) + 1), params.PRESETS['casme2_longvideo'])
  c = sm.spotting_counts({'v': pv.ground_truth(events)}, {'v': res.intervals})
  assert c['me'].f1 >= 0.5 and c['overall'].f1 >= 0.5, sm.format_table(c)
  assert res.score_me.shape == (len(frames),) and res.threshold_me > 0
  for iv in res.intervals:
    assert iv.onset <= iv.apex <= iv.offset


def test_intervals_in_source_frame_numbers(planted):
  """A 200 fps recording taken every 7th frame: intervals come back in its own frame numbers,
  typed by SAMM-LV's lengths (ME 47-105 source frames)."""
  frames, events = planted
  nums = 1 + 7 * np.arange(len(frames))
  res = spotter.spot(frames, nums, params.PRESETS['samm_longvideo'])
  assert res.intervals
  for iv in res.intervals:
    assert iv.onset in nums and iv.offset in nums
    if iv.type == 'me':
      assert 47 <= iv.length <= 105
    else:
      assert iv.length > 105
  gt = [sm.Interval(int(nums[e.onset - 1]), int(nums[e.offset - 1]), e.type) for e in events]
  c = sm.spotting_counts({'v': gt}, {'v': res.intervals})
  assert c['me'].tp >= 2, sm.format_table(c)


def test_bench_spot_prints_one_json_line():
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  r = subprocess.run([sys.executable, '-m', 'benchmarks.bench_spot', '--seconds=5', '--size=64'],
                     cwd=root, capture_output=True, text=True, timeout=300, check=False)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = [l for l in r.stdout.splitlines() if l.strip()]
  out = json.loads(lines[-1])
  assert out['frames'] == 150 and out['frames_per_s'] > 0 and out['cpu']
