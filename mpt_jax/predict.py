"""``--mode=predict``: class probabilities of a new clip from a trained LOSO run.

The clip is a folder of frames (naturally sorted by the number in the file name) or a video file
(anything OpenCV reads). ``onset``/``offset`` (indices into the frames, inclusive) select the
micro-expression; without them the whole clip is used. With ``crop_face`` the largest face found by
OpenCV's bundled Haar cascade in the middle frame gives one square crop (enlarged by 20%) applied to
every frame, so the crop itself adds no motion. The frames then go through exactly the training
preprocessing (resize to the dataset's stored frame size, temporal resampling to T, resize to
``image_size``). The apex is taken as the middle of the resampled clip
(:func:`mpt_jax.input_pipeline.middle_apex`, the model's own default).

The prediction averages the softmax of the final model of every *finished* fold of the run's first
seed (each is a model trained without one subject; a fold still training is left out, and the
output says how many folds were used); the per-fold probabilities are returned too. Checkpoints are
opened read-only: prediction writes nothing into the workdir.
"""

import os
from typing import Any, Dict, List, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from absl import logging

from mpt_jax import datasets
from mpt_jax import errors
from mpt_jax import frame_files
from mpt_jax import input_pipeline
from mpt_jax import partition
from mpt_jax import pretrained
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd
from mpt_jax.models import mpt as mpt_lib


class PredictError(errors.UserError):
  """A clip that cannot be read or used (the message names the file)."""


def read_frames(path: str) -> List[np.ndarray]:
  """RGB uint8 frames of a frame folder or a video file."""
  path = wd.resolve(path)
  if os.path.isdir(path):
    frames = frame_files.list_frames(path)
    if not frames:
      raise PredictError(f'{path}: no image files with a frame number in their name')
    out = []
    for _, p in frames:
      try:
        with Image.open(p) as im:
          out.append(np.asarray(im.convert('RGB')))
      except Exception as e:  # PIL raises several types
        raise PredictError(f'Cannot decode image {p}: {e}') from e
    return out
  if not os.path.isfile(path):
    raise PredictError(f'{path}: no such file or folder')
  import cv2  # pylint: disable=g-import-not-at-top
  cap = cv2.VideoCapture(path)
  out = []
  while True:
    ok, frame = cap.read()
    if not ok:
      break
    out.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
  cap.release()
  if not out:
    size = os.path.getsize(path)
    what = ('it is empty (0 bytes)' if size == 0
            else f'{size} bytes that are not a video OpenCV reads')
    raise PredictError(f'{path}: no frame could be read; {what}. Give a video file or a folder of '
                       'frames')
  return out


def face_box(frame: np.ndarray, enlarge: float = 1.2) -> Optional[tuple]:
  """(top, left, size) of a square around the largest Haar-cascade face, or None."""
  import cv2  # pylint: disable=g-import-not-at-top
  cascade = cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades,
                                               'haarcascade_frontalface_default.xml'))
  gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  faces = cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(30, 30))
  if len(faces) == 0:
    return None
  x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
  size = int(max(w, h) * enlarge)
  cy, cx = y + h // 2, x + w // 2
  top = int(np.clip(cy - size // 2, 0, max(0, frame.shape[0] - size)))
  left = int(np.clip(cx - size // 2, 0, max(0, frame.shape[1] - size)))
  return top, left, min(size, frame.shape[0], frame.shape[1])


def preprocess(frames: List[np.ndarray], config, stored_size: int, onset=None, offset=None,
               crop_face: bool = False, align_face: bool = False) -> Tuple[np.ndarray, str]:
  """Frames -> ((T, S, S, 3) float16 exactly as the training data, how the face was found).

  ``align_face`` runs the preparation's aligner (:func:`mpt_jax.face_align.align_clip`: one
  similarity transform for the whole clip from dlib's 5 landmarks, the Haar cascade, then a centre
  crop); ``crop_face`` the Haar-only square crop. The second value says which was used ('' for
  neither).
  """
  n = len(frames)
  lo = 0 if onset is None else int(onset)
  hi = n - 1 if offset is None else int(offset)
  if lo > hi:
    raise PredictError(f'--onset {lo} is after --offset {hi}; the onset must come first')
  if not 0 <= lo <= hi < n:
    raise PredictError(f'onset/offset {onset}/{offset} outside the clip of {n} frames (0..{n - 1})')
  frames = frames[lo:hi + 1]
  if align_face and crop_face:
    raise PredictError('--align_face and --crop_face exclude each other: --align_face aligns the '
                       'face as the preparation does (with the Haar crop as its fallback)')
  how = ''
  if align_face:
    from mpt_jax import face_align  # pylint: disable=g-import-not-at-top
    aligned, info = face_align.align_clip(frames, stored_size)
    frames, how = list(aligned), f'{info.method}@{info.frame}'
    if info.method == 'centre':
      logging.warning('No face found in the clip: used the centred square crop')
  elif crop_face:
    box = face_box(frames[len(frames) // 2])
    if box is None:
      raise PredictError('No face found by the Haar cascade in the middle frame; crop the clip '
                         'yourself or run without --crop_face')
    top, left, size = box
    frames = [f[top:top + size, left:left + size] for f in frames]
    how = 'haar_crop'
  resized = [np.asarray(Image.fromarray(f).resize((stored_size, stored_size), Image.BILINEAR))
             for f in frames]
  return input_pipeline.prepare_clip(resized, int(config.model.num_frames),
                                     int(config.model.image_size)), how


class Recogniser:
  """The finished folds of a trained LOSO run (its first seed), ready to classify clips.

  Opens the run read-only (it writes nothing into the workdir). :meth:`probabilities` restores each
  fold's checkpoint once and applies it to every clip given, so classifying many clips (the
  intervals spotted in a long video) costs one restore per fold.
  """

  def __init__(self, workdir: str, config=None):
    self.workdir = wd.resolve(workdir)
    self.config = wd.load_run_config(self.workdir, config)
    self.info = wd.read_run_info(self.workdir)
    self.classes = list(self.info['classes'])
    self.seed = int(self.config.seed)
    self.subjects = self.info['subjects']
    self.finished = wd.finished_subjects(self.workdir, self.seed, self.subjects)
    if not self.finished:
      raise wd.RunError(f'{self.workdir}: no fold has finished training yet (0 of '
                        f'{len(self.subjects)}); resume training with the same command first')
    self.stored_size = datasets.builder_class(self.config.data.name).FRAME_SIZE
    self.num_frames = int(self.config.model.num_frames)

  def preprocess(self, frames: List[np.ndarray], onset=None, offset=None, crop_face=False,
                 align_face=False) -> Tuple[np.ndarray, str]:
    """:func:`preprocess` with this run's config and stored frame size."""
    return preprocess(frames, self.config, self.stored_size, onset, offset, crop_face, align_face)

  def probabilities(self, clips: np.ndarray, folds: Optional[List[str]] = None
                    ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """``(mean over the folds (N, C), {subject: (N, C)})`` softmax of (N, T, S, S, 3) clips.

    ``folds``: the held-out subjects whose fold models are used (default: every finished fold);
    each must have finished training.
    """
    folds = list(self.finished) if folds is None else list(folds)
    unfinished = [f for f in folds if f not in self.finished]
    if unfinished:
      raise wd.RunError(f'{self.workdir}: fold(s) {unfinished} of seed {self.seed} have not '
                        'finished training; resume training with the same command first')
    config = self.config
    model = mpt_lib.build_model(config.model, len(self.classes))
    params = pretrained.init_params(model, config.model, jax.random.PRNGKey(self.seed))
    wd.check_init_fingerprint(self.info, self.seed, partition.tree_fingerprint(params),
                              self.workdir)
    strategy = config.model.training_strategy
    template = train_lib.state_template(config, params)
    apply = jax.jit(lambda p, x, a: jax.nn.softmax(model.apply({'params': p}, x, a)))
    clips = np.asarray(clips)
    batch = max(1, int(config.train.eval_batch_size))
    apex_at = input_pipeline.middle_apex(self.num_frames)
    per_fold = {}
    for subject in folds:
      try:
        state = wd.restore_fold(self.workdir, self.seed, subject, template, strategy)
      except train_lib.CheckpointDamagedError as e:
        raise train_lib.CheckpointDamagedError(
            f'Fold {subject} (seed {self.seed}) cannot be used for prediction: {e}') from e
      out = []
      for b in range(0, len(clips), batch):
        x = jnp.asarray(clips[b:b + batch], jnp.float32)
        apex = jnp.full((x.shape[0],), apex_at, jnp.int32)
        out.append(np.asarray(apply(state.params, x, apex)))
      per_fold[subject] = np.concatenate(out, axis=0)
    if len(folds) == len(self.finished) < len(self.subjects):
      logging.warning('Using the %d of %d folds that finished training', len(self.finished),
                      len(self.subjects))
    return np.mean(list(per_fold.values()), axis=0), per_fold


# More frames than this without --onset/--offset is a recording, not one expression.
LONG_INPUT_FRAMES = 600


def count_frames(path: str) -> int:
  """Frames of a frame folder or a video file, without decoding them (0 if unknown)."""
  path = wd.resolve(path)
  if os.path.isdir(path):
    return len(frame_files.list_frames(path))
  if not os.path.isfile(path):
    return 0
  import cv2  # pylint: disable=g-import-not-at-top
  cap = cv2.VideoCapture(path)
  n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if cap.isOpened() else 0
  cap.release()
  return max(n, 0)


def predict(workdir: str, path: str, onset=None, offset=None, crop_face=False,
            config=None, align_face=False) -> Dict[str, Any]:
  """Class probabilities for one clip from the run in ``workdir``.

  Args:
    workdir: the trained run.
    path: a folder of frames or a video file.
    onset: first frame used (index into the frames), or None for the first.
    offset: last frame used, or None for the last.
    crop_face: crop the face found by the Haar cascade.
    align_face: align the face as the preparation does (see :func:`preprocess`).
    config: the config from the command line (its resumable keys, e.g. a moved pretrained file,
      are used), or None for the workdir's own config.
  """
  if onset is None and offset is None:
    n = count_frames(path)
    if n > LONG_INPUT_FRAMES:
      raise PredictError(
          f'{path} has {n} frames: a long recording, not one expression (predict squeezes its '
          'whole input into the model\'s few frames). Find and classify the expressions in it '
          f'with --mode=spot --workdir={workdir} --input={path}, or give --onset/--offset')
  recogniser = Recogniser(workdir, config)
  frames = read_frames(path)
  clip, face = recogniser.preprocess(frames, onset, offset, crop_face, align_face)
  mean, per_fold = recogniser.probabilities(clip[None])
  mean = mean[0]
  classes = recogniser.classes
  return {'input': path, 'frames_used': [0 if onset is None else onset, offset],
          'face': face or 'none', 'prediction': classes[int(mean.argmax())],
          'probabilities': {c: round(float(p), 6) for c, p in zip(classes, mean)},
          'folds': len(per_fold), 'folds_total': len(recogniser.subjects),
          'per_fold': {s: {c: round(float(p), 6) for c, p in zip(classes, v[0])}
                       for s, v in per_fold.items()}}
