"""A synthetic long video with planted expressions: the spotter's tests and speed benchmark.

A real face (scikit-image's ``astronaut`` photo, aligned as the preparation aligns faces) is shown
for ``n`` frames at 30 fps with sensor noise and a slow head drift (a sub-pixel translation of the
whole face); each planted expression moves one facial region (a brow, the mouth corners) by a
smooth local displacement that rises from its onset to its apex and falls back by its offset.
Micro-expressions move about a pixel over ~13 frames, macro-expressions a few pixels over ~2 s.
"""

import dataclasses
import functools
from typing import List, Sequence, Tuple

import cv2
import numpy as np

from mpt_jax import face_align
from mpt_jax.spotting import metrics

FPS = 30.0
# Region centres relative to the eye midpoint (inter-ocular distances) and their movement direction.
MOVES = {
    'brows': (((-0.5, -0.38), (0.0, -1.0)), ((0.5, -0.38), (0.0, -1.0))),   # both brows raised
    'mouth': (((-0.45, 1.12), (-0.7, -0.7)), ((0.45, 1.12), (0.7, -0.7))),  # corners up and out
    'brow_left': (((-0.5, -0.38), (0.3, 0.95)),),                          # one brow lowered
}


@dataclasses.dataclass(frozen=True)
class Planted:
  onset: int  # frame numbers, 1-based (frame index + 1)
  apex: int
  offset: int
  type: str  # 'me' | 'mae'
  region: str  # a key of MOVES
  amplitude: float  # peak displacement in pixels at the video's size


@functools.lru_cache(maxsize=4)
def face(size: int) -> np.ndarray:
  """The astronaut's face aligned at ``size`` (grayscale uint8)."""
  from skimage import data  # pylint: disable=g-import-not-at-top
  aligned, _ = face_align.align_clip([data.astronaut()], size)
  return cv2.cvtColor(aligned[0], cv2.COLOR_RGB2GRAY)


def _profile(t: np.ndarray, e: Planted) -> np.ndarray:
  """0 outside onset..offset, 1 at the apex, raised-cosine ramps in between."""
  up = np.clip((t - e.onset) / max(1, e.apex - e.onset), 0, 1)
  down = np.clip((e.offset - t) / max(1, e.offset - e.apex), 0, 1)
  ramp = np.where(t <= e.apex, up, down)
  return 0.5 - 0.5 * np.cos(np.pi * ramp)


def default_events(n: int, seed: int = 0, me_every: int = 150, mae_every: int = 4) -> List[Planted]:
  """An ME every ``me_every`` frames (13 frames, 1.2 px), every ``mae_every``-th one a MaE
  (61 frames, 3 px) instead, regions alternating."""
  rng = np.random.default_rng(seed)
  out = []
  for j, start in enumerate(range(60, n - 90, me_every)):
    start += int(rng.integers(-20, 20))
    region = ('mouth', 'brows', 'brow_left')[j % 3]
    if (j + 1) % mae_every == 0:
      out.append(Planted(start, start + 20, start + 60, 'mae', region, 3.0))
    else:
      out.append(Planted(start, start + 5, start + 12, 'me', region, 1.2))
  return out


def render(n: int, events: Sequence[Planted], size: int = 128, seed: int = 0,
           noise: float = 1.5, drift_px: float = 0.6) -> np.ndarray:
  """(n, size, size) uint8 frames of the face with ``events`` planted (frame i is number i + 1)."""
  base = face(size).astype(np.float32)
  rng = np.random.default_rng(seed)
  d = face_align.target_eye_distance(size)
  cx, cy = face_align.target_eye_midpoint(size)
  yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
  sigma = 0.22 * d
  fields = {}
  for name, parts in MOVES.items():
    f = np.zeros((size, size, 2), np.float32)
    for (dx, dy), (ux, uy) in parts:
      g = np.exp(-((xx - cx - dx * d) ** 2 + (yy - cy - dy * d) ** 2) / (2 * sigma ** 2))
      f[..., 0] += ux * g
      f[..., 1] += uy * g
    fields[name] = f
  t_all = np.arange(1, n + 1, dtype=np.float64)
  profiles = [(_profile(t_all, e) * e.amplitude, fields[e.region]) for e in events]
  phase = rng.uniform(0, 2 * np.pi, 2)
  out = np.empty((n, size, size), np.uint8)
  for i in range(n):
    disp = np.zeros((size, size, 2), np.float32)
    for prof, field in profiles:
      if prof[i]:
        disp += prof[i] * field
    # slow head drift: a translation with periods of about 10 and 7 s
    disp[..., 0] += drift_px * np.sin(2 * np.pi * i / (10 * FPS) + phase[0])
    disp[..., 1] += drift_px * np.sin(2 * np.pi * i / (7 * FPS) + phase[1])
    # content moves by disp: sample the base at (x - disp)
    img = cv2.remap(base, xx - disp[..., 0], yy - disp[..., 1], cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE)
    img += rng.normal(0, noise, img.shape).astype(np.float32)
    out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
  return out


def ground_truth(events: Sequence[Planted]) -> List[metrics.Interval]:
  return [metrics.Interval(e.onset, e.offset, e.type, apex=e.apex) for e in events]


def video(n: int, size: int = 128, seed: int = 0) -> Tuple[np.ndarray, List[Planted]]:
  """``(frames, events)``: :func:`render` of :func:`default_events`."""
  events = default_events(n, seed)
  return render(n, events, size, seed), events
