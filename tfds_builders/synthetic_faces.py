"""A realistic synthetic micro-expression benchmark built from real face photographs (offline).

Beside the procedural ``synthetic_me``, this dataset starts from real faces: the first faces of
scikit-image's ``lfw_subset()`` (Labeled Faces in the Wild crops, 25 x 25 grey, shipped with the
package; nothing is downloaded). Each subject is one photograph (a different person, up-sampled to
64 px) with its own photometric identity (colour tint, gamma, contrast). A clip warps that photograph
by a small, smooth displacement field around facial regions (brows, eyes, mouth corners), 1 to 2
pixels at the apex, with an onset-apex-offset course (the course of ``synthetic_me``), plus head
jitter (a random walk and a slow drift of the whole face, identical for every class) and sensor
noise (Gaussian, then 8-bit quantisation). Three classes, SMIC-HS-like:

* ``negative``: inner brows lowered and drawn together, mouth corners down (AU4 + AU15);
* ``positive``: mouth corners pulled outwards and up, cheeks raised (AU6 + AU12);
* ``surprise``: brows and upper lids raised (AU1 + AU2 + AU5).

Only the motion separates the classes: every clip of a subject starts from the same neutral photo
(the onset frame has no class information; its per-clip brightness and jitter are drawn
independently of the class), and the class is the region and direction of a movement of 1-2 px.
A test checks that a classifier of the onset frame stays at chance under leave-one-subject-out
while one of the apex-minus-onset difference does not.

Frames are 64 x 64 px at 100 fps (SMIC-HS's rate), 16 to 36 frames per clip.
"""

import dataclasses
from typing import Dict, Tuple

import cv2
import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import synthetic

CLASSES = ('negative', 'positive', 'surprise')
AUS = {'negative': '4+15', 'positive': '6+12', 'surprise': '1+2+5'}
SIZE = 64
FPS = 100.0
# Region centres (x, y) in the 64 px frame, read off the mean of the lfw_subset faces (aligned
# crops): brows at y 0.27, eyes at y 0.38, mouth corners at y 0.75 of the height.
REGIONS = {
    'brow_l': (19.0, 17.5), 'brow_r': (44.0, 17.5), 'inner_brow_l': (26.0, 18.5),
    'inner_brow_r': (38.0, 18.5), 'lid_l': (20.0, 22.5), 'lid_r': (43.0, 22.5),
    'mouth_l': (23.0, 48.0), 'mouth_r': (41.0, 48.0), 'cheek_l': (18.0, 38.0),
    'cheek_r': (46.0, 38.0),
}
# Displacement (dx, dy) per unit amplitude of each region, per class (image y points down).
MOTIONS = {
    'negative': {'inner_brow_l': (0.6, 0.8), 'inner_brow_r': (-0.6, 0.8),
                 'mouth_l': (0.0, 0.7), 'mouth_r': (0.0, 0.7)},
    'positive': {'mouth_l': (-0.7, -0.7), 'mouth_r': (0.7, -0.7),
                 'cheek_l': (0.0, -0.4), 'cheek_r': (0.0, -0.4)},
    'surprise': {'brow_l': (0.0, -1.0), 'brow_r': (0.0, -1.0), 'inner_brow_l': (0.0, -1.0),
                 'inner_brow_r': (0.0, -1.0), 'lid_l': (0.0, -0.4), 'lid_r': (0.0, -0.4)},
}
REGION_SIGMA = 3.5  # px: spatial extent of each region's displacement (Gaussian)


@dataclasses.dataclass
class SyntheticFacesConfig(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = CLASSES
  num_subjects: int = 16
  clips_per_class: int = 3
  min_frames: int = 16
  max_frames: int = 36
  min_amplitude: float = 1.0  # px at the apex (largest displacement of the field)
  max_amplitude: float = 2.0
  noise: float = 0.01  # sensor noise std (intensity in [0, 1])
  jitter: float = 0.15  # head jitter: random-walk step std (px)
  drift: float = 0.5  # head drift: largest slow linear translation over a clip (px)


def face_photo(subject_idx: int) -> np.ndarray:
  """The subject's neutral face, (64, 64, 3) float64 in [0, 1]: a real photo, own photometry."""
  import skimage.data  # pylint: disable=g-import-not-at-top
  faces = skimage.data.lfw_subset()[:100]  # the first 100 of the 200 are faces
  if subject_idx >= len(faces):
    raise ValueError(f'synthetic_faces has {len(faces)} face photographs; subject {subject_idx}')
  gray = cv2.resize(faces[subject_idx].astype(np.float32), (SIZE, SIZE),
                    interpolation=cv2.INTER_CUBIC).astype(np.float64)
  r = np.random.default_rng(5000 + subject_idx)
  gray = np.clip(gray, 0.0, 1.0) ** r.uniform(0.8, 1.25)  # gamma
  gray = 0.5 + r.uniform(0.8, 1.1) * (gray - 0.5)  # contrast
  tint = np.array([1.0 + r.uniform(0.0, 0.12), 1.0, 1.0 - r.uniform(0.0, 0.12)])  # skin tint
  return np.clip(gray[..., None] * tint, 0.0, 1.0)


def displacement(emotion: str, amplitude: float) -> np.ndarray:
  """(64, 64, 2) field (dx, dy) in px of the apex; its largest magnitude is ``amplitude``."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  field = np.zeros((SIZE, SIZE, 2))
  for region, (dx, dy) in MOTIONS[emotion].items():
    cx, cy = REGIONS[region]
    g = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * REGION_SIGMA ** 2))
    field[..., 0] += dx * g
    field[..., 1] += dy * g
  return field * (amplitude / np.sqrt((field ** 2).sum(-1)).max())


def warp(image: np.ndarray, field: np.ndarray, shift: Tuple[float, float]) -> np.ndarray:
  """``image`` with its content moved by ``field`` (px) and the whole face by ``shift`` (dx, dy)."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
  map_x = xx - field[..., 0].astype(np.float32) - np.float32(shift[0])
  map_y = yy - field[..., 1].astype(np.float32) - np.float32(shift[1])
  return cv2.remap(image.astype(np.float32), map_x, map_y, interpolation=cv2.INTER_CUBIC,
                   borderMode=cv2.BORDER_REFLECT_101).astype(np.float64)


def make_clip(subject_idx: int, emotion: str, index: int, config: SyntheticFacesConfig):
  """Renders one clip: (frames uint8 (n, 64, 64, 3), onset, apex, offset frame numbers)."""
  seed = (subject_idx * 1000 + CLASSES.index(emotion) * 100 + index) * 104729 + 31
  r = np.random.default_rng(seed)
  face = face_photo(subject_idx)
  n = int(r.integers(config.min_frames, config.max_frames + 1))
  apex = int(r.integers(int(0.3 * n), int(0.6 * n)))
  field = displacement(emotion, r.uniform(config.min_amplitude, config.max_amplitude))
  course = synthetic.time_course(n, apex)
  walk = np.cumsum(r.normal(scale=config.jitter, size=(n, 2)), axis=0)
  walk -= walk[0]
  drift = np.linspace(0.0, 1.0, n)[:, None] * r.uniform(-config.drift, config.drift, size=2)
  shifts = walk + drift
  gain = r.uniform(0.93, 1.07)  # per-clip illumination
  onset_frame = int(r.integers(100, 5000))
  frames = []
  for t in range(n):
    img = warp(face, field * course[t], tuple(shifts[t])) * gain
    img = img + r.normal(scale=config.noise, size=img.shape)
    frames.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
  return np.stack(frames), onset_frame, onset_frame + apex, onset_frame + n - 1


class SyntheticFaces(synthetic.GeneratedBuilder):
  """Real face photographs warped by 1-2 px regional motions, 3 classes (SMIC-HS-like, 100 fps)."""

  DATASET = 'synthetic_faces'
  FRAME_SIZE = SIZE
  ALIGNS_FACES = False  # generated from aligned face crops: nothing to align
  BUILDER_CONFIGS = [
      SyntheticFacesConfig(name='default', description='16 subjects x 3 classes x 3 clips'),
      SyntheticFacesConfig(name='small', num_subjects=12, clips_per_class=2, min_frames=10,
                           max_frames=16, description='12 subjects x 3 classes x 2 clips (tests)'),
  ]

  SUBJECT_PREFIX = 's'
  GENERATOR = 'lfw_subset faces'
  CLIP_FPS = FPS
  ACTION_UNITS = AUS
  make_clip = staticmethod(make_clip)


def generate(config: SyntheticFacesConfig) -> Dict[str, np.ndarray]:
  """Every clip in memory (for tests and probes): frames list, labels, subjects, apex indices."""
  frames, labels, subjects, apex = [], [], [], []
  for s in range(config.num_subjects):
    for c, emotion in enumerate(config.classes):
      for i in range(config.clips_per_class):
        f, onset, ap, _ = make_clip(s, emotion, i, config)
        frames.append(f)
        labels.append(c)
        subjects.append(s)
        apex.append(ap - onset)
  return {'frames': frames, 'labels': np.asarray(labels), 'subjects': np.asarray(subjects),
          'apex': np.asarray(apex)}
