"""A built-in synthetic micro-expression dataset: needs nothing, generated deterministically offline.

Faces are drawn procedurally with soft-edged shapes evaluated at continuous coordinates, so that a
feature moved by a fraction of a pixel changes the pixel values (as in a real camera). Every subject
has its own identity (face shape, skin tone, feature placement and size, a fixed skin texture).
Each clip is a short onset-apex-offset movement of one facial region, of 0.4 to 2 pixels at the
apex, with sensor noise and slight head jitter, so that a single frame looks the same to the eye for
every class while the motion is learnable. Classes follow CASME II's five:

* ``happiness``: lip corners pulled outward and up (AU12);
* ``surprise``: both brows raised (AU1+2);
* ``disgust``: brows lowered and drawn together, nose wrinkled (AU4+9);
* ``repression``: lips pressed, the mouth thins (AU24);
* ``others``: a blink (AU45).

Frames are stored at 64 x 64 px (the synthetic faces carry no detail beyond that), 200 fps.
"""

import dataclasses
from typing import Dict, Tuple

import numpy as np
import tensorflow_datasets as tfds

from tfds_builders import annotations
from tfds_builders import me_builder

CLASSES = ('happiness', 'surprise', 'disgust', 'repression', 'others')
AUS = {'happiness': '12', 'surprise': '1+2', 'disgust': '4+9', 'repression': '24', 'others': '45'}
SIZE = 64
FPS = 200.0


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = CLASSES
  num_subjects: int = 8
  clips_per_class: int = 4
  min_frames: int = 20
  max_frames: int = 40
  noise: float = 0.008  # sensor noise std (intensity in [0, 1])
  jitter: float = 0.15  # head jitter std (pixels)


def _soft_ellipse(yy, xx, cy, cx, ry, rx, softness=0.7):
  """1 inside the ellipse, 0 outside, with an anti-aliased edge about ``softness`` px wide."""
  r = np.sqrt(((yy - cy) / max(ry, 1e-3)) ** 2 + ((xx - cx) / max(rx, 1e-3)) ** 2)
  edge_px = (1.0 - r) * min(ry, rx)
  return 1.0 / (1.0 + np.exp(-edge_px / softness * 3.0))


def _soft_segment(yy, xx, y0, x0, y1, x1, width, softness=0.6):
  """A thick anti-aliased line segment (a brow)."""
  dy, dx = y1 - y0, x1 - x0
  t = np.clip(((yy - y0) * dy + (xx - x0) * dx) / (dy * dy + dx * dx), 0.0, 1.0)
  d = np.sqrt((yy - (y0 + t * dy)) ** 2 + (xx - (x0 + t * dx)) ** 2)
  return 1.0 / (1.0 + np.exp((d - width / 2) / softness * 3.0))


def identity(seed: int) -> Dict[str, float]:
  """Random but fixed facial geometry and appearance of one subject."""
  r = np.random.default_rng(seed)
  return {
      'face_ry': r.uniform(25, 29), 'face_rx': r.uniform(19, 23),
      'skin': r.uniform(0.45, 0.8), 'tint': r.uniform(-0.06, 0.06),
      'eye_y': r.uniform(24, 27), 'eye_dx': r.uniform(8.5, 11), 'eye_rx': r.uniform(3.2, 4.2),
      'eye_ry': r.uniform(1.6, 2.2),
      'brow_gap': r.uniform(4.5, 6.0), 'brow_w': r.uniform(1.6, 2.4), 'brow_len': r.uniform(7, 9.5),
      'brow_dark': r.uniform(0.45, 0.7),
      'nose_y': r.uniform(36, 39), 'mouth_y': r.uniform(45, 48), 'mouth_rx': r.uniform(6, 8.5),
      'mouth_ry': r.uniform(1.6, 2.3), 'lip': r.uniform(0.35, 0.6),
      'texture_seed': int(r.integers(1 << 30)),
  }


def render(ident: Dict[str, float], act: Dict[str, float], shift: Tuple[float, float]) -> np.ndarray:
  """Renders one RGB frame in [0, 1] of a face with action intensities ``act`` (pixels)."""
  yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float64)
  yy = yy - shift[0]
  xx = xx - shift[1]
  cx = SIZE / 2
  tr = np.random.default_rng(ident['texture_seed'])
  tex = sum(np.sin(tr.uniform(0.2, 0.9) * yy + tr.uniform(-0.9, 0.9) * xx + tr.uniform(0, 6.3))
            for _ in range(4)) / 2.0  # smooth skin texture that moves with the head
  img = 0.25 + 0.1 * yy / SIZE  # background gradient
  face = _soft_ellipse(yy, xx, 33, cx, ident['face_ry'], ident['face_rx'], 1.0)
  skin = ident['skin'] + 0.02 * tex
  img = img * (1 - face) + skin * face
  # Brows: raise (surprise) moves them up; lower (disgust) moves them down and inwards.
  for side in (-1, 1):
    ex = cx + side * ident['eye_dx']
    by = ident['eye_y'] - ident['brow_gap'] - act.get('brow_up', 0.0) + act.get('brow_down', 0.0)
    inner = ex - side * ident['brow_len'] / 2 + side * (-act.get('brow_down', 0.0) * 0.6)
    outer = ex + side * ident['brow_len'] / 2
    brow = _soft_segment(yy, xx, by + 0.8, inner, by, outer, ident['brow_w'])
    img = img * (1 - brow * ident['brow_dark'])
    # Eyes: sclera then iris; a blink closes the lids (shrinks the opening).
    open_ry = max(ident['eye_ry'] - act.get('blink', 0.0), 0.05)
    sclera = _soft_ellipse(yy, xx, ident['eye_y'], ex, open_ry, ident['eye_rx'], 0.5)
    img = img * (1 - sclera) + 0.85 * sclera
    iris = _soft_ellipse(yy, xx, ident['eye_y'], ex, min(open_ry, 1.4), 1.4, 0.5)
    img = img * (1 - iris) + 0.15 * iris
  # Nose: a shadow that deepens and lifts with the wrinkle.
  nose = _soft_ellipse(yy, xx, ident['nose_y'] - act.get('wrinkle', 0.0), cx, 1.5, 3.0, 1.0)
  img = img * (1 - 0.25 * nose * (1 + 0.5 * act.get('wrinkle', 0.0)))
  # Mouth: corners pull outwards and up (happiness), lips press (repression).
  mry = max(ident['mouth_ry'] - act.get('press', 0.0), 0.3)
  mrx = ident['mouth_rx'] + act.get('pull', 0.0)
  my = ident['mouth_y'] - 0.5 * act.get('pull', 0.0)
  mouth = _soft_ellipse(yy, xx, my, cx, mry, mrx, 0.6)
  img = img * (1 - mouth * (1 - ident['lip']))
  rgb = np.stack([img * (1 + ident['tint']), img, img * (1 - ident['tint'])], axis=-1)
  return np.clip(rgb, 0.0, 1.0)


def time_course(n: int, apex: int) -> np.ndarray:
  """Smooth 0 -> 1 -> 0 intensity over n frames peaking at ``apex``."""
  t = np.arange(n, dtype=np.float64)
  rise = np.sin(0.5 * np.pi * np.clip(t / max(apex, 1), 0, 1)) ** 2
  fall = np.sin(0.5 * np.pi * np.clip((n - 1 - t) / max(n - 1 - apex, 1), 0, 1)) ** 2
  return np.where(t <= apex, rise, fall)


def action(emotion: str, amplitude: float) -> Dict[str, float]:
  return {
      'happiness': {'pull': amplitude},
      'surprise': {'brow_up': amplitude},
      'disgust': {'brow_down': amplitude, 'wrinkle': 0.6 * amplitude},
      'repression': {'press': 0.5 * amplitude},
      'others': {'blink': 0.8 * amplitude},
  }[emotion]


def make_clip(subject_idx: int, emotion: str, index: int, config: SyntheticConfig):
  """Renders one clip: (frames uint8 (n, 64, 64, 3), onset, apex, offset)."""
  seed = (subject_idx * 1000 + CLASSES.index(emotion) * 100 + index) * 7919 + 17
  r = np.random.default_rng(seed)
  ident = identity(1000 + subject_idx)
  n = int(r.integers(config.min_frames, config.max_frames + 1))
  apex = int(r.integers(int(0.3 * n), int(0.6 * n)))
  amplitude = r.uniform(0.4, 2.0)
  onset_frame = int(r.integers(100, 5000))
  course = time_course(n, apex)
  jitter = np.cumsum(r.normal(scale=config.jitter / 3, size=(n, 2)), axis=0)
  jitter -= jitter.mean(0)
  frames = []
  for t in range(n):
    act = {k: v * course[t] for k, v in action(emotion, amplitude).items()}
    img = render(ident, act, tuple(jitter[t]))
    img = img + r.normal(scale=config.noise, size=img.shape)
    frames.append(np.clip(np.round(img * 255), 0, 255).astype(np.uint8))
  return np.stack(frames), onset_frame, onset_frame + apex, onset_frame + n - 1


class GeneratedBuilder(me_builder.MEBuilder, skip_registration=True):
  """A dataset generated offline, clip by clip: subclasses set the class attributes below."""

  SUBJECT_PREFIX = 'p'  # subjects are named <prefix>01, <prefix>02, ...
  GENERATOR = 'procedural'  # what the preparation report names as the source
  CLIP_FPS = FPS  # frame rate of the generated clips
  ACTION_UNITS = AUS  # action units per class
  make_clip = staticmethod(make_clip)  # (subject, emotion, index, config) -> frames, on, apex, off

  def _split_generators(self, dl_manager):
    del dl_manager
    cfg = self.builder_config
    report = annotations.Report(self.DATASET)
    report.source = {'generator': f'{self.GENERATOR}, {cfg.num_subjects} subjects, '
                                  f'{cfg.clips_per_class} clips per class'}
    keys = [(s, e, i) for s in range(cfg.num_subjects) for e in cfg.classes
            for i in range(cfg.clips_per_class)]
    fake = [annotations.Clip(self.DATASET, self._subject(s), f'{e}_{i:02d}', e, e, 0, 0, 0, '',
                             self.CLIP_FPS, [], []) for s, e, i in keys]
    self.info.metadata['preparation_report'] = report.summary(fake, cfg.classes)
    return {'train': self._generate(keys)}

  def _subject(self, s: int) -> str:
    return f'{self.SUBJECT_PREFIX}{s + 1:02d}'

  def _generate(self, keys):
    cfg = self.builder_config
    for s, emotion, i in keys:
      frames, onset, apex, offset = self.make_clip(s, emotion, i, cfg)
      subject, name = self._subject(s), f'{emotion}_{i:02d}'
      yield f'{self.DATASET}/{subject}/{name}', {
          'frames': list(frames),
          'frame_numbers': list(range(onset, offset + 1)),
          'dataset': self.DATASET, 'subject': subject, 'clip': name, 'emotion': emotion,
          'label': emotion, 'onset': onset, 'apex': apex, 'offset': offset,
          'apex_index': apex - onset, 'action_units': self.ACTION_UNITS[emotion],
          'fps': self.CLIP_FPS,
      }


class SyntheticMe(GeneratedBuilder):
  """Synthetic micro-expressions with CASME II's five classes (procedural faces, 200 fps)."""

  DATASET = 'synthetic_me'
  FRAME_SIZE = SIZE
  ALIGNS_FACES = False  # generated, already centred faces: no alignment, no alignment features
  BUILDER_CONFIGS = [
      SyntheticConfig(name='default', description='8 subjects x 5 classes x 4 clips'),
      SyntheticConfig(name='small', num_subjects=3, clips_per_class=2, min_frames=10,
                      max_frames=16, description='3 subjects x 5 classes x 2 clips (tests)'),
  ]
