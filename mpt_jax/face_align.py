"""The face alignment: one similarity transform per clip, applied identically to every frame.

Used by the TFDS builders at preparation (datasets released without face crops: SAMM, CAS(ME)^3,
SMIC raw, CASME II ``CASME2_RAW_selected``) and meant for ``predict --align_face`` on a raw video or
frame folder. The public entry point is :func:`align_clip`::

    aligned, info = face_align.align_clip(frames, size=224)   # frames: (n, H, W[, 3]) uint8
    info.method     # 'landmarks' | 'haar' | 'centre'
    info.transform  # (2, 3) float64: source pixel (x, y, 1) -> aligned pixel, for every frame
    info.frame      # index of the frame the transform was estimated on (-1 for 'centre')

Why one transform per clip: a detector run on every frame jitters by a pixel or more, which would
become fake motion far larger than a micro-expression. The transform is estimated on the onset frame
(the first frame), falling back to the next frames and then the apex when no face is found there:

1. ``landmarks``: dlib's HOG frontal face detector and the 5-point landmark model shipped inside the
   ``face-recognition-models`` package (``shape_predictor_5_face_landmarks.dat``; its 68-point model
   is licensed for non-commercial use only, so it is not used). The eye centres (mean of each eye's
   two corner points) give a similarity transform: eyes level, a fixed inter-ocular distance, the
   eye midpoint centred horizontally. Frames of 600 px and more (shorter side) are searched for the
   face box at half size first (:data:`HALF_SIZE_SEARCH_MIN_SIDE`); the landmarks always at full
   size.
2. ``haar``: OpenCV's bundled frontal-face Haar cascade when dlib finds nothing (or is not
   installed). The box gives scale and position only (no rotation); the eye line is placed where it
   lies in a Haar box (calibrated on scikit-image's ``astronaut`` photo against the dlib eyes:
   eye midpoint at 0.50 x 0.39 of the box, inter-ocular distance 0.45 of its width).
3. ``centre``: the largest centred square of the frame, when no face is found at all (reported).

Geometry (fixed, so that every clip of every dataset has the same face scale): the face box is a
square of ``FACE_BOX_IODS`` inter-ocular distances with the eyes at ``EYE_ROW`` of its height; the
output square adds ``margin`` times the box on every side. With the default margin 0.2 the eyes are
``size / 3.08`` apart (72.7 px at 224 px) and 40 % down the image; brows, nose and chin are inside.
Output frames are square at ``size``, never distorted in aspect. Shrinking is antialiased (area
resampling to the target scale, then a bilinear warp); pixels outside the source frame replicate its
border.

Nothing is downloaded: the detector is part of dlib, the landmark model part of its pip package, the
cascade part of OpenCV.
"""

import dataclasses
import functools
import os
from typing import Callable, Optional, Sequence, Tuple

import cv2
import numpy as np
from absl import logging

FACE_BOX_IODS = 2.2  # Side of the face box in inter-ocular distances.
EYE_ROW = 0.36  # Height of the eye line within the face box (0 = top).
DEFAULT_MARGIN = 0.2  # Fraction of the face box added on every side.
NEXT_FRAMES = 4  # Frames after the onset tried before the apex.
# Frames whose shorter side is at least this (SAMM 960 x 650, CAS(ME)^3 1280 x 720) are searched for
# a face at half size first (the HOG detector finds faces of 80 px and more: 160 px and more here).
HALF_SIZE_SEARCH_MIN_SIDE = 600
# Haar box -> eyes, calibrated on skimage's astronaut (Haar box 177,66,95,95; dlib eyes 203.5,102
# and 246.5,104.5): eye midpoint at (0.505, 0.393) of the box, inter-ocular distance 0.45 of its
# width.
HAAR_EYE_X, HAAR_EYE_Y, HAAR_IOD = 0.505, 0.393, 0.45
METHODS = ('landmarks', 'haar', 'centre')


@dataclasses.dataclass(frozen=True)
class AlignInfo:
  """How a clip was aligned.

  Attributes:
    method: 'landmarks' (dlib 5-point eyes), 'haar' (OpenCV face box) or 'centre' (no face found).
    transform: (2, 3) float64 affine map from source pixel coordinates (x, y, 1), pixel centres at
      integers, to aligned pixel coordinates; the same for every frame of the clip.
    frame: index in the clip of the frame the transform was estimated on; -1 for 'centre'.
    eyes: ((x, y) of the image-left eye, (x, y) of the image-right eye) in source pixels, as
      estimated (None for 'centre').
    tried: the frame indices searched for a face, in order.
  """
  method: str
  transform: np.ndarray
  frame: int
  eyes: Optional[Tuple[Tuple[float, float], Tuple[float, float]]]
  tried: Tuple[int, ...]

  def to_dict(self):
    return {'method': self.method, 'transform': np.asarray(self.transform).round(6).tolist(),
            'frame': int(self.frame),
            'eyes': None if self.eyes is None else [list(map(float, e)) for e in self.eyes]}


def target_eye_distance(size: int, margin: float = DEFAULT_MARGIN) -> float:
  """Inter-ocular distance (pixels) of an aligned face in a ``size`` square."""
  return size / (FACE_BOX_IODS * (1.0 + 2.0 * margin))


def target_eye_midpoint(size: int, margin: float = DEFAULT_MARGIN) -> Tuple[float, float]:
  """(x, y) pixel position of the eye midpoint in the aligned square (pixel centres at integers)."""
  box = FACE_BOX_IODS * target_eye_distance(size, margin)
  return size / 2.0 - 0.5, (margin + EYE_ROW) * box - 0.5


def similarity_from_eyes(left, right, size: int, margin: float = DEFAULT_MARGIN) -> np.ndarray:
  """The (2, 3) similarity that puts the eye centres ``left``, ``right`` (image left/right) level,
  ``target_eye_distance`` apart, at ``target_eye_midpoint``."""
  left, right = np.asarray(left, np.float64), np.asarray(right, np.float64)
  d = right - left
  dist = float(np.hypot(d[0], d[1]))
  if dist <= 1e-6:
    raise ValueError('eye centres coincide')
  k = target_eye_distance(size, margin) / dist
  cos, sin = d[0] / dist, d[1] / dist  # rotation of the eye line; undo it
  rot = k * np.array([[cos, sin], [-sin, cos]])
  mid = (left + right) / 2.0
  out = np.asarray(target_eye_midpoint(size, margin))
  return np.concatenate([rot, (out - rot @ mid)[:, None]], axis=1)


def centre_transform(height: int, width: int, size: int) -> np.ndarray:
  """Maps the largest centred square of a ``height`` x ``width`` frame onto ``size`` x ``size``."""
  side = min(height, width)
  x0, y0 = (width - side) / 2.0, (height - side) / 2.0
  k = size / side
  # continuous coordinates: out = (src + 0.5 - origin) * k, pixel centres at -0.5.
  return np.array([[k, 0.0, (0.5 - x0) * k - 0.5], [0.0, k, (0.5 - y0) * k - 0.5]])


def resize_transform(height: int, width: int, out_h: int, out_w: int) -> np.ndarray:
  """The map of a plain resize (used to record how an unaligned, as-released frame was stored)."""
  kx, ky = out_w / width, out_h / height
  return np.array([[kx, 0.0, 0.5 * kx - 0.5], [0.0, ky, 0.5 * ky - 0.5]])


def to_gray(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 3 and frame.shape[2] == 1:
    frame = frame[..., 0]
  if frame.ndim == 2:
    return np.ascontiguousarray(frame, np.uint8)
  return cv2.cvtColor(np.ascontiguousarray(frame[..., :3], np.uint8), cv2.COLOR_RGB2GRAY)


# ----------------------------------------------------------------------------------- detectors
# Where a pool worker finds the face detector its parent built (:func:`use_shared_detector`):
# (file path, multiprocessing Event set once the file is written or the parent gave up); None in a
# process that builds its own.
_shared_detector = None
SHARED_DETECTOR_WAIT_S = 120.0  # a worker builds its own detector if its parent takes longer


def share_detector(path: str) -> bool:
  """Writes dlib's frontal face detector to ``path`` for pool workers (:func:`use_shared_detector`).

  ``dlib.get_frontal_face_detector()`` unpacks the detector from a compressed string inside dlib:
  about 0.3 s of CPU per process here (1 s of wall clock per worker when two workers do it at once
  on two busy cores), while loading the same detector from its saved file takes 1 ms. The parent
  builds it once and every worker loads the file; the loaded detector is the same one (dlib saves
  its weights exactly: identical boxes and scores). Returns False (nothing written) when dlib or
  its landmark model is unavailable; the workers then fall back as the parent does.
  """
  try:
    import dlib  # pylint: disable=g-import-not-at-top
    import face_recognition_models  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  tmp = f'{path}.tmp{os.getpid()}'
  dlib.get_frontal_face_detector().save(tmp)
  os.replace(tmp, path)  # a worker never sees a partly written file
  return True


def use_shared_detector(path: str, ready) -> None:
  """Pool worker initializer: load the face detector from ``path`` once ``ready`` (a
  multiprocessing Event) is set, instead of building it (see :func:`share_detector`). If the file
  is missing when ``ready`` is set, or the parent takes longer than
  :data:`SHARED_DETECTOR_WAIT_S`, the worker builds its own (the same detector, only slower)."""
  global _shared_detector
  _shared_detector = (path, ready)
  _dlib_models.cache_clear()


def _frontal_face_detector(dlib):
  if _shared_detector is not None:
    path, ready = _shared_detector
    if ready.wait(SHARED_DETECTOR_WAIT_S) and os.path.exists(path):
      return dlib.fhog_object_detector(path)
    logging.warning('the preparation did not share its face detector (%s); building it here', path)
  return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _dlib_models():
  """(detector, 5-point predictor), or None when dlib or the model package is missing."""
  try:
    import dlib  # pylint: disable=g-import-not-at-top
    import face_recognition_models  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    logging.warning('dlib landmarks unavailable (%s); using the Haar cascade', e)
    return None
  path = face_recognition_models.pose_predictor_five_point_model_location()
  return _frontal_face_detector(dlib), dlib.shape_predictor(path)


@functools.lru_cache(maxsize=None)
def _haar():
  path = cv2.data.haarcascades + 'haarcascade_frontalface_default.xml'
  cascade = cv2.CascadeClassifier(path)
  if cascade.empty():
    raise RuntimeError(f'OpenCV cannot load its bundled cascade {path}')
  return cascade


def landmark_eyes(gray: np.ndarray):
  """Eye centres ((x, y) image-left, (x, y) image-right) of the best dlib face, or None."""
  models = _dlib_models()
  if models is None:
    return None
  detector, predictor = models
  import dlib  # pylint: disable=g-import-not-at-top
  box = None
  if min(gray.shape) >= HALF_SIZE_SEARCH_MIN_SIDE:
    box = _half_size_face_box(detector, gray)
  if box is None:
    for upsample in ((0,) if min(gray.shape) >= 400 else (0, 1)):
      box = _best_face_box(detector, gray, upsample)
      if box is not None:
        break
    else:
      return None
  shape = predictor(gray, dlib.rectangle(*box))
  pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
  eyes = sorted([pts[0:2].mean(0), pts[2:4].mean(0)], key=lambda p: p[0])
  if np.hypot(*(eyes[1] - eyes[0])) < 4:
    return None
  return tuple(map(tuple, eyes))


def _half_size_face_box(detector, gray: np.ndarray):
  """The best dlib face box (left, top, right, bottom) in full-size pixels, searched on the frame
  reduced 2 x 2 (a quarter of the HOG work: 10 instead of 35 ms on a 960 x 650 SAMM frame), or None
  (the caller then searches the full frame). The landmarks are still found on the full frame, so
  the eyes differ from a full-size search by the box's rounding only (0-1 px on the SAMM-sized
  benchmark frames, 0.5 px on average)."""
  h, w = (gray.shape[0] // 2) * 2, (gray.shape[1] // 2) * 2
  small = cv2.resize(gray[:h, :w], (w // 2, h // 2), interpolation=cv2.INTER_AREA)  # 2x2 means
  box = _best_face_box(detector, small, 0)
  if box is None:
    return None
  left, top, right, bottom = box
  return 2 * left, 2 * top, 2 * right + 1, 2 * bottom + 1


def _best_face_box(detector, gray: np.ndarray, upsample: int):
  """The highest-scoring dlib face box (left, top, right, bottom) in ``gray``, or None."""
  rects, scores, _ = detector.run(gray, upsample, 0.0)
  if not len(rects):
    return None
  best = rects[int(np.argmax(scores))]
  return best.left(), best.top(), best.right(), best.bottom()


def haar_eyes(gray: np.ndarray):
  """Eye centres estimated from the most confident Haar face box (level eye line), or None."""
  min_side = max(24, min(gray.shape) // 8)
  boxes, _, weights = _haar().detectMultiScale3(gray, scaleFactor=1.1, minNeighbors=5,
                                                minSize=(min_side, min_side),
                                                outputRejectLevels=True)
  if len(boxes) == 0:
    return None
  x, y, w, h = [float(v) for v in boxes[int(np.argmax(np.ravel(weights)))]]  # most confident
  mx, my, half = x + HAAR_EYE_X * w - 0.5, y + HAAR_EYE_Y * h - 0.5, HAAR_IOD * w / 2.0
  return (mx - half, my), (mx + half, my)


DETECTORS = {'landmarks': landmark_eyes, 'haar': haar_eyes}


def candidate_frames(n: int, apex_index: Optional[int] = None,
                     next_frames: int = NEXT_FRAMES) -> Tuple[int, ...]:
  """Frames searched for a face, in order: onset, the next ``next_frames`` frames, the apex."""
  out = list(range(min(n, 1 + next_frames)))
  if apex_index is not None and 0 <= apex_index < n and apex_index not in out:
    out.append(int(apex_index))
  return tuple(out)


def estimate_transform(get_frame: Callable[[int], Optional[np.ndarray]], n: int, size: int,
                       margin: float = DEFAULT_MARGIN, apex_index: Optional[int] = None,
                       methods: Sequence[str] = ('landmarks', 'haar')) -> Optional[AlignInfo]:
  """One transform for a clip of ``n`` frames; ``get_frame(i)`` returns frame i at full size.

  Each method is tried on every candidate frame (onset, next frames, apex) before the next method,
  so a face found by landmarks on a later frame beats a Haar box on the onset. A frame is asked for
  only when a detector is about to run on it (a face found on the onset needs only the onset).
  ``get_frame`` may return None for an unreadable frame (it is passed over); None is returned when
  no candidate frame is readable.
  """
  tried = candidate_frames(n, apex_index)
  for method in methods:
    if method not in DETECTORS:
      raise ValueError(f'unknown face detection method {method!r}; known: {sorted(DETECTORS)}')
  grays = {}

  def gray(i):
    if i not in grays:
      frame = get_frame(i)
      grays[i] = None if frame is None else to_gray(frame)
    return grays[i]

  for method in methods:
    for i in tried:
      g = gray(i)
      if g is None:
        continue
      eyes = DETECTORS[method](g)
      if eyes is not None:
        return AlignInfo(method, similarity_from_eyes(eyes[0], eyes[1], size, margin), i, eyes,
                         tried)
  readable = [g for g in (gray(i) for i in tried) if g is not None]
  if not readable:
    return None
  h, w = readable[0].shape[:2]
  return AlignInfo('centre', centre_transform(h, w, size), -1, None, tried)


# --------------------------------------------------------------------------------------- warping
def scale_of(transform: np.ndarray) -> float:
  """The isotropic scale of a similarity (output pixels per source pixel)."""
  a = np.asarray(transform, np.float64)[:, :2]
  return float(np.sqrt(abs(np.linalg.det(a))))


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
  """The affine map ``outer(inner(x))`` of two (2, 3) maps."""
  o = np.vstack([outer, [0.0, 0.0, 1.0]])
  i = np.vstack([inner, [0.0, 0.0, 1.0]])
  return (o @ i)[:2]


def draft_factor(transform: np.ndarray) -> int:
  """The JPEG draft reduction (1, 2, 4 or 8) that keeps at least one decoded pixel per output
  pixel: PIL's draft mode scales inside the JPEG decoder (a DCT-domain average), so decoding at
  this reduction loses no detail the output could show, and is 2-8x faster for large frames."""
  s = scale_of(transform)
  r = 1
  while r < 8 and s * (2 * r) <= 1.0:
    r *= 2
  return r


def warp(frame: np.ndarray, transform: np.ndarray, size: int, reduced_by: float = 1.0
         ) -> np.ndarray:
  """Applies ``transform`` (defined on the full-size source) to ``frame``: (size, size[, C]) uint8.

  Args:
    frame: (h, w) or (h, w, C) uint8; when ``reduced_by`` > 1 it is the source decoded at
      ``1 / reduced_by`` of its size (JPEG draft mode: pixel i covers source pixels
      ``[i * r, (i + 1) * r)``).
    transform: (2, 3) map from full-size source pixels to output pixels.
    size: output side length.
    reduced_by: the reduction ``frame`` was decoded at.
  """
  frame = np.ascontiguousarray(frame)
  if frame.ndim == 3 and frame.shape[2] == 1:
    frame = frame[..., 0]
  a = np.asarray(transform, np.float64)
  if reduced_by != 1.0:
    r = float(reduced_by)
    # full-size pixel x = (x_reduced + 0.5) * r - 0.5
    a = compose(a, np.array([[r, 0.0, 0.5 * r - 0.5], [0.0, r, 0.5 * r - 0.5]]))
  s = scale_of(a)
  if s < 0.95:
    # Antialias: area-resample to (about) the target scale, then warp at a scale near 1. Only the
    # part of the frame the output reads is resampled (:func:`area_crop`).
    frame, inner = area_crop(frame, a, s, size)
    a = compose(a, inner)
  return cv2.warpAffine(frame, a, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)


def _on_grid(u: int, stop: int, f: float, reach: int = 8) -> int:
  """The cell boundary among ``u, u +- 1, ...`` (up to ``reach`` steps towards ``stop``, which is
  -1 or the cell count) that lies closest to a whole source pixel (``u * f`` nearest an integer)."""
  step = -1 if stop < u else 1
  best, err = u, 1.0
  for k in range(u, stop if step < 0 else stop + 1, step)[:reach + 1]:
    e = abs(k * f - round(k * f))
    if e < err - 1e-9:
      best, err = k, e
  return best


def area_crop(frame: np.ndarray, transform: np.ndarray, scale: float, size: int
              ) -> Tuple[np.ndarray, np.ndarray]:
  """The antialiasing step of :func:`warp`: the frame area-resampled to about ``scale``, but only
  where the ``size`` x ``size`` output of ``transform`` reads it.

  The whole frame would be resized to ``round(w * scale)`` x ``round(h * scale)`` cells of
  ``fx = w / nw`` by ``fy = h / nh`` source pixels. Only the cells the output reaches (its square
  mapped back, plus 2 cells for the bilinear kernel, its ends moved to the nearby cell boundaries
  that fall nearest to whole source pixels, :func:`_on_grid`) are computed, from the source pixels
  ``round(u0 * fx) .. round(u1 * fx)``: the same cells to within a fraction of a pixel, a few times
  fewer pixels for a face that fills a third of a SAMM or CAS(ME)^3 frame. Where the output reaches
  the frame's edge, the crop ends at that edge, so ``BORDER_REPLICATE`` replicates the same pixels
  as on the whole frame. The crop depends only on the transform and the frame size: every frame of
  a clip is cropped alike.

  Returns:
    ``(cells, inner)``: the resampled crop and the (2, 3) map from its pixels to ``frame``'s.
  """
  h, w = frame.shape[:2]
  nw, nh = max(1, int(round(w * scale))), max(1, int(round(h * scale)))
  fx, fy = w / nw, h / nh  # source pixel x = (x_cell + 0.5) * fx - 0.5
  cells = np.array([[fx, 0.0, 0.5 * fx - 0.5], [0.0, fy, 0.5 * fy - 0.5]])
  inv = cv2.invertAffineTransform(compose(np.asarray(transform, np.float64), cells))
  corners = np.array([[-0.5, -0.5, 1.0], [size - 0.5, -0.5, 1.0], [-0.5, size - 0.5, 1.0],
                      [size - 0.5, size - 0.5, 1.0]]) @ inv.T
  u0 = int(np.clip(np.floor(corners[:, 0].min()) - 2, 0, nw - 1))
  u1 = int(np.clip(np.ceil(corners[:, 0].max()) + 3, u0 + 1, nw))
  v0 = int(np.clip(np.floor(corners[:, 1].min()) - 2, 0, nh - 1))
  v1 = int(np.clip(np.ceil(corners[:, 1].max()) + 3, v0 + 1, nh))
  u0, u1 = _on_grid(u0, -1, fx), _on_grid(u1, nw, fx)
  v0, v1 = _on_grid(v0, -1, fy), _on_grid(v1, nh, fy)
  x0, x1 = int(round(u0 * fx)), int(round(u1 * fx))
  y0, y1 = int(round(v0 * fy)), int(round(v1 * fy))
  x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
  out = cv2.resize(np.ascontiguousarray(frame[y0:y1, x0:x1]), (u1 - u0, v1 - v0),
                   interpolation=cv2.INTER_AREA)
  gx, gy = (x1 - x0) / (u1 - u0), (y1 - y0) / (v1 - v0)
  inner = np.array([[gx, 0.0, x0 + 0.5 * gx - 0.5], [0.0, gy, y0 + 0.5 * gy - 0.5]])
  return out, inner


def align_clip(frames: Sequence[np.ndarray], size: int, margin: float = DEFAULT_MARGIN,
               apex_index: Optional[int] = None,
               methods: Sequence[str] = ('landmarks', 'haar')) -> Tuple[np.ndarray, AlignInfo]:
  """Aligns a clip's face with one transform for all frames.

  Args:
    frames: the clip, onset first: (n, H, W), (n, H, W, 1) or (n, H, W, 3) uint8 (RGB), or a list
      of such frames.
    size: side of the square output (e.g. 224).
    margin: fraction of the face box added on every side (see the module docstring).
    apex_index: the apex frame, the last frame searched for a face.
    methods: detectors to try, in order ('landmarks', 'haar'); 'centre' always ends the chain.

  Returns:
    ``(aligned, info)``: (n, size, size, 3) uint8 RGB (grayscale replicated) and :class:`AlignInfo`.
  """
  n = len(frames)
  if n == 0:
    raise ValueError('align_clip needs at least one frame')
  info = estimate_transform(lambda i: frames[i], n, size, margin, apex_index, methods)
  out = np.empty((n, size, size, 3), np.uint8)
  for i, f in enumerate(frames):
    out[i] = to_rgb(warp(f, info.transform, size))
  return out, info


def to_rgb(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 2:
    return np.repeat(frame[..., None], 3, axis=-1)
  if frame.shape[2] == 1:
    return np.repeat(frame, 3, axis=-1)
  return frame[..., :3]
