"""The training-free spotter (MDMD / optical-flow family) over one face-aligned long video.

Input: a video's frames aligned with one transform (:mod:`mpt_jax.face_align` geometry: eyes level,
``target_eye_distance`` apart, at ``target_eye_midpoint``), grayscale, at a working rate of about
30 fps (a 200 fps recording is taken every 7th frame), with each frame's number in the source.

For each lag k (one for micro-, one for macro-expressions, in working-rate frames):

1. Dense optical flow (OpenCV Farneback) from frame t-k to t (A) and from t-k to t+k (B).
2. The mean flow of a nose patch is subtracted from every pixel: what remains is the face's own
   motion, not the head's translation.
3. Per region (both brows, both eyes, the mouth), the magnitude pooled as the mean of its largest
   third (as MDMD pools its blocks): ``a_r(t)``, ``b_r(t)``.
4. ``s_r(t) = max(a_r(t) - b_r(t), 0)``: a movement that leaves and comes back within about 2k
   frames has a large A (onset -> apex) and a small B (onset -> offset) at its apex; a slow drift
   or a sustained change has B >= A and scores 0. The frame's score is the largest region's.
5. A moving mean over ``k // 2 + 1`` frames; the threshold ``T = mean + p (max - mean)`` of the
   video; peaks above T at least k frames apart (``scipy.signal.find_peaks``).
6. Each peak's interval by peak-to-valley: walk out from the peak until the score falls to
   ``valley + 0.33 (peak - valley)`` (the valleys: the minima within 2k frames on each side); the
   expression spans at least k frames on each side of its apex (the flow lag), so the interval is
   that core widened to ``peak +- k`` where narrower.
7. Intervals in source frame numbers; the type by length: ME when ``me_min <= length <= me_max``,
   MaE when longer, dropped when shorter (CAS(ME)^2 ME 7-16 frames at 30 fps, SAMM-LV 47-105 at
   200 fps, as the MEGC2020 baseline filters). Where a micro-lag peak lies inside a macro-lag
   interval, the movement is one or the other: the micro-lag candidate wins when its score is at
   least half the macro-lag one (a short movement scores about equally at both lags, a slow one
   much less at the short lag), else the macro-lag one.

Steps 2-4 (the per-pixel work after the flow) run as one jitted program over fixed-size chunks of
flow fields; the flow fields themselves come from OpenCV on all cores (threads: OpenCV releases
the GIL). The macro lag is evaluated every ``k_mae // k_me`` frames and interpolated (its score
changes over k_mae frames), which keeps the cost near 2 + 2 / ratio flows per frame.
"""

import concurrent.futures
import dataclasses
import functools
import os
from typing import Dict, List, Sequence, Tuple

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from scipy import signal as sp_signal

from mpt_jax import face_align
from mpt_jax.spotting import metrics
from mpt_jax.spotting import params as params_lib

CHUNK = 64  # flow fields per call of the jitted pooling (fixed shape: one compilation)
# Regions relative to the eye midpoint, in inter-ocular distances: (dx, dy, width, height).
REGIONS = {
    'brow_left': (-0.5, -0.38, 0.7, 0.34),
    'brow_right': (0.5, -0.38, 0.7, 0.34),
    'eye_left': (-0.5, 0.0, 0.6, 0.3),
    'eye_right': (0.5, 0.0, 0.6, 0.3),
    'mouth': (0.0, 1.12, 1.2, 0.5),
}
NOSE = (0.0, 0.55, 0.3, 0.3)  # the head-motion reference
FLOW_PAD = 8  # pixels of context around the regions' bounding box where the flow is computed
# Farneback settings (pyramid scale, levels, window, iterations, poly_n, poly_sigma): small
# motions on a ~128 px face need few levels; 3 iterations.
FARNEBACK = (0.5, 2, 15, 3, 7, 1.5)


def region_boxes(size: int, margin: float = face_align.DEFAULT_MARGIN
                 ) -> Dict[str, Tuple[int, int, int, int]]:
  """``name -> (y0, y1, x0, x1)`` pixel boxes of the regions and ``'nose'`` in an aligned face."""
  d = face_align.target_eye_distance(size, margin)
  cx, cy = face_align.target_eye_midpoint(size, margin)
  out = {}
  for name, (dx, dy, w, h) in list(REGIONS.items()) + [('nose', NOSE)]:
    x0 = int(round(cx + (dx - w / 2) * d))
    x1 = int(round(cx + (dx + w / 2) * d)) + 1
    y0 = int(round(cy + (dy - h / 2) * d))
    y1 = int(round(cy + (dy + h / 2) * d)) + 1
    out[name] = (max(0, y0), min(size, y1), max(0, x0), min(size, x1))
  return out


@functools.partial(jax.jit, static_argnames=('boxes',))
def _pool_regions(flow_a: jnp.ndarray, flow_b: jnp.ndarray, boxes: Tuple) -> jnp.ndarray:
  """(B, S, S, 2) flows A and B -> (B, R) scores ``max(a_r - b_r, 0)`` (steps 2-4)."""
  (ny0, ny1, nx0, nx1), regions = boxes[0], boxes[1:]

  def pooled(flow):
    nose = flow[:, ny0:ny1, nx0:nx1].mean(axis=(1, 2), keepdims=True)
    rel = flow - nose
    cols = []
    for y0, y1, x0, x1 in regions:
      mag = jnp.sqrt(jnp.sum(rel[:, y0:y1, x0:x1] ** 2, axis=-1)).reshape(flow.shape[0], -1)
      top = max(1, mag.shape[1] // 3)
      cols.append(jax.lax.top_k(mag, top)[0].mean(axis=1))
    return jnp.stack(cols, axis=1)

  return jnp.maximum(pooled(flow_a) - pooled(flow_b), 0.0)


def _flow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return cv2.calcOpticalFlowFarneback(a, b, None, *FARNEBACK, 0)


def lag_scores(frames: np.ndarray, k: int, step: int = 1, workers: int = 0,
               margin: float = face_align.DEFAULT_MARGIN) -> np.ndarray:
  """(n, R) region scores ``s_r(t)`` of lag ``k`` (0 where t-k or t+k is outside the video).

  Evaluated at every ``step``-th frame and linearly interpolated in between.
  """
  n, size = frames.shape[0], frames.shape[1]
  boxes = region_boxes(size, margin)
  # The flow is computed on the part of the face the regions cover (plus FLOW_PAD pixels): about
  # 40 % of the aligned square, so 2.5x fewer pixels.
  y0 = max(0, min(b[0] for b in boxes.values()) - FLOW_PAD)
  y1 = min(size, max(b[1] for b in boxes.values()) + FLOW_PAD)
  x0 = max(0, min(b[2] for b in boxes.values()) - FLOW_PAD)
  x1 = min(size, max(b[3] for b in boxes.values()) + FLOW_PAD)
  frames = frames[:, y0:y1, x0:x1]
  static = tuple((a - y0, b - y0, c - x0, d - x0) for a, b, c, d in
                 [boxes['nose']] + [boxes[r] for r in REGIONS])
  out = np.zeros((n, len(REGIONS)), np.float32)
  times = np.arange(k, n - k, step)
  if k < 1 or times.size == 0:
    return out
  workers = workers or len(os.sched_getaffinity(0))

  def pair(t):
    return _flow(frames[t - k], frames[t]), _flow(frames[t - k], frames[t + k])

  got = np.zeros((times.size, len(REGIONS)), np.float32)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for c0 in range(0, times.size, CHUNK):
      ts = times[c0:c0 + CHUNK]
      flows = list(pool.map(pair, ts))
      fa = np.zeros((CHUNK, y1 - y0, x1 - x0, 2), np.float32)
      fb = np.zeros_like(fa)
      fa[:len(ts)] = [f[0] for f in flows]
      fb[:len(ts)] = [f[1] for f in flows]
      got[c0:c0 + len(ts)] = np.asarray(_pool_regions(fa, fb, static))[:len(ts)]
  for r in range(len(REGIONS)):
    out[k:n - k, r] = np.interp(np.arange(k, n - k), times, got[:, r])
  return out


def smooth(x: np.ndarray, width: int) -> np.ndarray:
  """Centred moving mean over ``width`` frames (edges: the mean of what is inside the video)."""
  width = max(1, int(width))
  kernel = np.ones(width)
  num = np.convolve(x, kernel, mode='same')
  den = np.convolve(np.ones_like(x), kernel, mode='same')
  return num / den


def threshold(score: np.ndarray, p: float) -> float:
  """``mean + p (max - mean)`` of a video's score."""
  m = float(np.mean(score))
  return m + p * (float(np.max(score)) - m)


def peaks_to_intervals(score: np.ndarray, k: int, p: float, valley_ratio: float = 0.33,
                       absolute: bool = False) -> Tuple[List[Tuple[int, int, int, float]], float]:
  """Peaks of ``score`` above its threshold, at least ``k`` apart, as ``(onset, peak, offset,
  height)`` in frame indices (steps 5-6), and the threshold: :func:`threshold` of the video, or
  ``p`` itself when ``absolute`` (a score with a meaning of its own, e.g. a probability)."""
  n = score.size
  if n == 0 or not np.any(score > 0):
    return [], 0.0
  thr = float(p) if absolute else threshold(score, p)
  peaks, props = sp_signal.find_peaks(score, height=thr, distance=max(1, k))
  out = []
  for pk, h in zip(peaks, props['peak_heights']):
    lo, hi = max(0, pk - 2 * k), min(n, pk + 2 * k + 1)
    left_v, right_v = score[lo:pk + 1].min(), score[pk:hi].min()
    l = pk
    while l > lo and score[l - 1] > left_v + valley_ratio * (h - left_v):
      l -= 1
    r = pk
    while r < hi - 1 and score[r + 1] > right_v + valley_ratio * (h - right_v):
      r += 1
    out.append((max(0, min(l, pk - k)), int(pk), min(n - 1, max(r, pk + k)), float(h)))
  return out, thr


ME_WINS = 0.5  # a micro-lag peak inside a macro-lag interval wins at this fraction of its height


def resolve_overlaps(cands_me, cands_mae, me_wins: float = ME_WINS):
  """``(micro, macro)`` candidates after deciding each macro-lag interval that holds micro-lag
  peaks: the micro ones win (the macro one is dropped) when the highest reaches ``me_wins`` of the
  macro peak, else they are dropped. Candidates are :func:`peaks_to_intervals` tuples."""
  keep_me, keep_mae = list(cands_me), []
  for lo, pk, hi, h in cands_mae:
    rivals = [c for c in keep_me if lo <= c[1] <= hi]
    if rivals and max(c[3] for c in rivals) >= me_wins * h:
      continue  # a short movement: the macro lag sees it too, the micro lag sees it as strongly
    keep_me = [c for c in keep_me if c not in rivals]
    keep_mae.append((lo, pk, hi, h))
  return keep_me, keep_mae


@dataclasses.dataclass
class SpotResult:
  """A video's spotted intervals and the signals they came from (for plots and the report)."""
  intervals: List[metrics.Interval]
  score_me: np.ndarray  # smoothed micro-lag score per stored frame
  score_mae: np.ndarray  # smoothed macro-lag score per stored frame
  threshold_me: float
  threshold_mae: float
  frame_numbers: np.ndarray


def spot(frames: np.ndarray, frame_numbers: Sequence[int], params: params_lib.SpotterParams,
         workers: int = 0) -> SpotResult:
  """Spots MaE and ME intervals in one aligned video.

  Args:
    frames: (n, S, S) uint8 grayscale (or (n, S, S, 3)/(n, S, S, 1), converted), at the working
      rate, aligned with one transform.
    frame_numbers: the source frame number of each frame (intervals are reported in these).
    params: the dataset's :class:`mpt_jax.spotting.params.SpotterParams`.
    workers: threads computing optical flow (0 = every core).
  """
  frames = np.asarray(frames)
  if frames.ndim == 4:
    frames = frames[..., 0] if frames.shape[-1] == 1 else np.stack(
        [cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
  frames = np.ascontiguousarray(frames, np.uint8)
  nums = np.asarray(frame_numbers, np.int64)
  if nums.shape != (frames.shape[0],):
    raise ValueError(f'{frames.shape[0]} frames but {nums.size} frame numbers')
  s_me, s_mae = flow_scores(frames, params, workers)
  return intervals_from_scores(s_me, s_mae, nums, params)


def flow_scores(frames: np.ndarray, params: params_lib.SpotterParams, workers: int = 0
                ) -> Tuple[np.ndarray, np.ndarray]:
  """Steps 1-5 up to the threshold: the smoothed micro- and macro-lag scores, (n,) each, of
  (n, S, S) uint8 grayscale frames."""
  ratio = max(1, params.k_mae // max(1, params.k_me))
  s_me = smooth(lag_scores(frames, params.k_me, 1, workers).max(axis=1), params.k_me // 2 + 1)
  s_mae = smooth(lag_scores(frames, params.k_mae, ratio, workers).max(axis=1),
                 params.k_mae // 2 + 1)
  return s_me, s_mae


def choose_p(signals: Dict, truth: Dict, params: params_lib.SpotterParams,
             grid: Sequence[float]) -> float:
  """The threshold ``p`` of ``grid`` with the best overall F1 (MEGC counts pooled over the
  videos of ``signals``: ``{video: SpotResult}``, scored against ``truth``); ties: the smaller p.
  Callers pass only training videos (the held-out subject's are never among them)."""
  if not grid:
    raise ValueError('choose_p needs a non-empty grid of thresholds')
  grid = sorted(float(p) for p in grid)
  f1 = []
  for p in grid:
    q = dataclasses.replace(params, p=p)
    spotted = {k: intervals_from_scores(r.score_me, r.score_mae, r.frame_numbers, q).intervals
               for k, r in signals.items()}
    f1.append(metrics.spotting_counts({k: truth[k] for k in signals}, spotted)['overall'].f1)
  return grid[int(np.argmax(f1))]


def intervals_from_scores(s_me: np.ndarray, s_mae: np.ndarray, frame_numbers: Sequence[int],
                          params: params_lib.SpotterParams) -> SpotResult:
  """Steps 5-7 on a video's smoothed micro- and macro-lag scores (cheap: a threshold ``p`` can be
  chosen by trying several on scores computed once)."""
  nums = np.asarray(frame_numbers, np.int64)
  absolute = params.threshold == 'absolute'
  cands_me, t_me = peaks_to_intervals(s_me, params.k_me, params.p, params.valley_ratio, absolute)
  cands_mae, t_mae = peaks_to_intervals(s_mae, params.k_mae, params.p, params.valley_ratio,
                                        absolute)
  keep_me, keep_mae = resolve_overlaps(cands_me, cands_mae)
  intervals = []
  for cands, scale in ((keep_mae, t_mae), (keep_me, t_me)):
    for lo, pk, hi, h in cands:
      onset, offset = int(nums[lo]), int(nums[hi])
      length = offset - onset + 1
      if length < params.me_min:
        continue
      kind = 'me' if length <= params.me_max else 'mae'
      intervals.append(metrics.Interval(onset, offset, kind, apex=int(nums[pk]),
                                        score=float(h / scale) if scale > 0 else 0.0))
  intervals.sort(key=lambda iv: (iv.onset, iv.offset))
  return SpotResult(intervals, s_me, s_mae, t_me, t_mae, nums)
