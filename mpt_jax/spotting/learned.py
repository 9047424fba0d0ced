"""The learned spotter: MPT's band-passed, magnified motion energy per frame, a small classifier
trained leave-one-subject-out, then the training-free spotter's peaks -> intervals step.

Per frame features (one video at a time, working rate ~30 fps, face-aligned grayscale):

* the energy (mean square, smoothed over ``k_me // 2 + 1`` frames) of the motion sequence ``M`` of the model's Eulerian magnifier
  (:class:`mpt_jax.models.magnification.Magnifier`, built by ``mpt.build_magnifier`` from
  ``config.spot.learned.magnification``: the model's settings) in each face region of
  :func:`mpt_jax.spotting.spotter.region_boxes` and the nose (the head-motion reference), as
  ``log(energy)``; computed by one jitted program over fixed-size chunks of frames that carries
  the temporal filter's state from chunk to chunk (:func:`motion_energy`: a long video compiles
  once, whatever its length, and the result equals the magnifier run on the whole video at once);
* optionally the training-free spotter's micro- and macro-lag flow scores
  (:func:`mpt_jax.spotting.spotter.flow_scores`).

Each video's features are standardised over the video (median, standard deviation: videos differ
in noise and lighting), stacked over a window of neighbouring frames, and a multinomial logistic
regression (optax Adam, L2, class-balanced) predicts per frame: outside any expression, inside an
ME, inside a MaE. For each held-out subject a model is trained on the other subjects' videos, and
the threshold ``p`` of :func:`mpt_jax.spotting.spotter.threshold` is the one of
``config.spot.learned.p_grid`` with the best overall F1 on those training videos (never the held-out
subject's). The held-out videos' smoothed ME and MaE probabilities then go through
:func:`mpt_jax.spotting.spotter.intervals_from_scores` (peaks, peak-to-valley intervals, MaE / ME by
length) exactly as the training-free scores do.
"""

import dataclasses
import functools
from typing import Dict, Hashable, List, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import scipy.signal

from mpt_jax import errors
from mpt_jax import face_align
from mpt_jax.models import magnification
from mpt_jax.spotting import metrics
from mpt_jax.spotting import params as params_lib
from mpt_jax.spotting import spotter

CLASSES = ('none', 'me', 'mae')  # what the classifier predicts per frame
ENERGY_FLOOR = 1e-8  # added before the log (a still region)


class _SpatialPart(magnification.Magnifier):
  """The magnifier with its temporal band-pass left out: pyramid, per-level amplification and
  reconstruction only. Everything in the magnifier is linear and the pyramid works frame by
  frame, so band-passing this over time gives the magnifier's ``M`` (up to rounding)."""

  def bandpass(self, clips):
    return clips


def build_magnifier(config: ml_collections.ConfigDict, size: int) -> magnification.Magnifier:
  """The model's magnifier (``mpt.build_magnifier``) at the spotter's ``size`` x ``size`` frames,
  from ``config.spot.learned.magnification``; grayscale frames, so one channel (``rgb``)."""
  from mpt_jax.models import mpt  # pylint: disable=g-import-not-at-top
  model = ml_collections.ConfigDict({'image_size': int(size),
                                     'magnification': config.spot.learned.magnification})
  mag = mpt.build_magnifier(model)
  return dataclasses.replace(mag, color_space='rgb')


def _boxes(size: int) -> Tuple[Tuple[int, int, int, int], ...]:
  b = spotter.region_boxes(size, face_align.DEFAULT_MARGIN)
  return tuple(b[r] for r in spotter.REGIONS) + (b['nose'],)


FEATURE_NAMES = tuple(spotter.REGIONS) + ('nose',)


@functools.partial(jax.jit, static_argnames=('magnifier', 'boxes'))
def _energy_chunk(frames: jnp.ndarray, state: Tuple[jnp.ndarray, ...], fresh: jnp.ndarray,
                  magnifier: magnification.Magnifier, boxes: Tuple) -> Tuple[jnp.ndarray, Tuple]:
  """(C, S, S) uint8 frames and the filter state -> (C, R + 1) region energies of ``M`` and the
  state after the chunk. ``fresh``: the chunk starts the video (the state is the steady state of
  its first frame, as the magnifier starts)."""
  x = frames.astype(jnp.float32)[None, ..., None] / 255.0  # (1, C, S, S, 1) in [0, 1]
  spatial = _SpatialPart(**{f.name: getattr(magnifier, f.name)
                            for f in dataclasses.fields(magnifier)})(x)[0, ..., 0]
  b, a = magnifier.coefficients
  m = max(len(a), len(b))
  zi = scipy.signal.lfilter_zi(np.pad(b, (0, m - len(b))), np.pad(a, (0, m - len(a))))
  state = tuple(jnp.where(fresh, float(z) * spatial[0], s) for z, s in zip(zi, state))
  motion, state = magnification.iir_filter(spatial, b, a, state, return_state=True)
  cols = [jnp.mean(motion[:, y0:y1, x0:x1] ** 2, axis=(1, 2)) for y0, y1, x0, x1 in boxes]
  return jnp.stack(cols, axis=1), state


def filter_order(magnifier: magnification.Magnifier) -> int:
  b, a = magnifier.coefficients
  return max(len(a), len(b)) - 1


def motion_energy(frames: np.ndarray, magnifier: magnification.Magnifier, chunk: int = 64
                  ) -> np.ndarray:
  """(n, R + 1) energy of the magnified motion per frame in each region (then the nose), the
  whole video run through one compiled program in chunks of ``chunk`` frames (the last padded)."""
  frames = np.asarray(frames)
  n, size = frames.shape[0], frames.shape[1]
  if frames.ndim != 3 or frames.shape[2] != size:
    raise ValueError(f'motion_energy takes (n, S, S) grayscale frames, got {frames.shape}')
  if tuple(magnifier.image_size) != (size, size):
    magnifier = dataclasses.replace(magnifier, image_size=(size, size))
  boxes = _boxes(size)
  state = tuple(jnp.zeros((size, size), jnp.float32) for _ in range(filter_order(magnifier)))
  out = np.zeros((n, len(boxes)), np.float32)
  for c0 in range(0, n, chunk):
    part = frames[c0:c0 + chunk]
    if len(part) < chunk:  # padded with the last frame; what follows the video is dropped
      part = np.concatenate([part, np.repeat(part[-1:], chunk - len(part), axis=0)])
    got, state = _energy_chunk(jnp.asarray(part, jnp.uint8), state, jnp.asarray(c0 == 0),
                               magnifier, boxes)
    out[c0:c0 + chunk] = np.asarray(got)[:min(chunk, n - c0)]
  return out


# ------------------------------------------------------------------------------------ features
def frame_features(frames: np.ndarray, params: params_lib.SpotterParams,
                   config: ml_collections.ConfigDict, workers: int = 0) -> np.ndarray:
  """(n, F) per-frame features of one video: log magnified-motion energies (and the flow scores
  when ``config.spot.learned.flow_features``), standardised over the video."""
  lc = config.spot.learned
  mag = build_magnifier(config, frames.shape[1])
  energy = motion_energy(frames, mag, int(lc.chunk))
  energy = np.stack([spotter.smooth(e, params.k_me // 2 + 1) for e in energy.T], axis=1)
  feats = [np.log(energy + ENERGY_FLOOR)]
  if lc.flow_features:
    s_me, s_mae = spotter.flow_scores(frames, params, workers)
    feats.append(np.log1p(np.stack([s_me, s_mae], axis=1)))
  x = np.concatenate(feats, axis=1).astype(np.float64)
  centre = np.median(x, axis=0, keepdims=True)
  scale = x.std(axis=0, keepdims=True)
  return ((x - centre) / np.where(scale > 0, scale, 1.0)).astype(np.float32)


def context_stack(x: np.ndarray, context: int, step: int) -> np.ndarray:
  """(n, F) -> (n, F * (2 * context // step + 1)): each frame with its neighbours at offsets
  ``-context .. context`` (every ``step``-th; the video's first and last frame repeated)."""
  offsets = np.arange(-context, context + 1, max(1, step))
  idx = np.clip(np.arange(x.shape[0])[:, None] + offsets[None, :], 0, x.shape[0] - 1)
  return x[idx].reshape(x.shape[0], -1)


def frame_labels(frame_numbers: np.ndarray, truth: Sequence[metrics.Interval]) -> np.ndarray:
  """(n,) class per frame (index into :data:`CLASSES`): inside an ME (wins over a MaE), inside a
  MaE, else none. Intervals are closed, in source frame numbers."""
  y = np.zeros(len(frame_numbers), np.int32)
  nums = np.asarray(frame_numbers)
  for kind in ('mae', 'me'):
    for iv in truth:
      if iv.type == kind:
        y[(nums >= iv.onset) & (nums <= iv.offset)] = CLASSES.index(kind)
  return y


# ---------------------------------------------------------------------------------- classifier
@dataclasses.dataclass
class FrameClassifier:
  """Standardisation and the linear softmax layer of one LOSO fold."""
  mean: np.ndarray
  std: np.ndarray
  w: np.ndarray  # (D, 3)
  b: np.ndarray  # (3,)

  def probabilities(self, x: np.ndarray) -> np.ndarray:
    z = (x - self.mean) / self.std
    return np.asarray(jax.nn.softmax(jnp.asarray(z @ self.w + self.b), axis=-1))


@functools.partial(jax.jit, static_argnames=('steps', 'learning_rate'))
def _fit(x, y, weights, l2, steps: int, learning_rate: float):
  params = {'w': jnp.zeros((x.shape[1], len(CLASSES))), 'b': jnp.zeros((len(CLASSES),))}
  opt = optax.adam(learning_rate)

  def loss_fn(p):
    logits = x @ p['w'] + p['b']
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    return jnp.sum(weights * nll) / jnp.sum(weights) + l2 * jnp.sum(p['w'] ** 2)

  def step(carry, _):
    p, s = carry
    g = jax.grad(loss_fn)(p)
    upd, s = opt.update(g, s, p)
    return (optax.apply_updates(p, upd), s), None

  (params, _), _ = jax.lax.scan(step, (params, opt.init(params)), None, length=steps)
  return params


def fit_classifier(x: np.ndarray, y: np.ndarray, config: ml_collections.ConfigDict
                   ) -> FrameClassifier:
  """Multinomial logistic regression on (N, D) stacked features and (N,) classes; each class
  weighted by the inverse of its frequency (expressions are rare frames)."""
  lc = config.spot.learned
  mean = x.mean(axis=0)
  std = x.std(axis=0)
  std = np.where(std > 0, std, 1.0)
  counts = np.bincount(y, minlength=len(CLASSES)).astype(np.float64)
  per_class = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(CLASSES), 0.0)
  p = _fit(jnp.asarray((x - mean) / std, jnp.float32), jnp.asarray(y),
           jnp.asarray(per_class[y], jnp.float32), float(lc.l2), int(lc.steps),
           float(lc.learning_rate))
  return FrameClassifier(mean.astype(np.float32), std.astype(np.float32), np.asarray(p['w']),
                         np.asarray(p['b']))


# ------------------------------------------------------------------------------------ LOSO
def scores_to_result(probs: np.ndarray, frame_numbers: np.ndarray,
                     params: params_lib.SpotterParams) -> spotter.SpotResult:
  """A video's per-frame class probabilities -> intervals (the training-free spotter's step).

  The probabilities are smoothed over about an expression's length (ME ``k_me + 1``, MaE
  ``2 k_mae + 1`` frames), so that a plateau of high probability is one peak.
  """
  s_me = spotter.smooth(probs[:, CLASSES.index('me')], params.k_me + 1)
  s_mae = spotter.smooth(probs[:, CLASSES.index('mae')], 2 * params.k_mae + 1)
  return spotter.intervals_from_scores(s_me, s_mae, frame_numbers, params)


def spot_loso(features: Dict[Hashable, np.ndarray], frame_numbers: Dict[Hashable, np.ndarray],
              truth: Dict[Hashable, List[metrics.Interval]], subject_of: Dict[Hashable, str],
              params: params_lib.SpotterParams, config: ml_collections.ConfigDict
              ) -> Tuple[Dict[Hashable, spotter.SpotResult], Dict[str, float]]:
  """Leave-one-subject-out: for each subject, a classifier trained on the other subjects' videos
  and a threshold ``p`` chosen on them; returns ``({video: SpotResult}, {subject: p})``.

  ``features``: each video's :func:`frame_features`. The held-out subject's truth is never read
  for its own videos' model or threshold.
  """
  lc = config.spot.learned
  subjects = sorted(set(subject_of.values()))
  if len(subjects) < 2:
    raise errors.UserError('config.spot.method=learned trains on the other subjects\' videos: it '
                           f'needs at least 2 subjects, the data has {subjects}')
  grid = tuple(float(p) for p in lc.p_grid)
  params = dataclasses.replace(params, threshold='absolute')  # scores are probabilities
  stacked = {k: context_stack(f, int(lc.context), int(lc.context_step))
             for k, f in features.items()}
  labels = {k: frame_labels(frame_numbers[k], truth[k]) for k in features}
  results, chosen = {}, {}
  for held_out in subjects:
    train = [k for k in features if subject_of[k] != held_out]
    model = fit_classifier(np.concatenate([stacked[k] for k in train]),
                           np.concatenate([labels[k] for k in train]), config)
    probs = {k: model.probabilities(stacked[k]) for k in features}
    train_signals = {k: scores_to_result(probs[k], frame_numbers[k], params) for k in train}
    p = spotter.choose_p(train_signals, {k: truth[k] for k in train}, params, grid)
    chosen[held_out] = p
    for k in features:
      if subject_of[k] == held_out:
        results[k] = scores_to_result(probs[k], frame_numbers[k],
                                      dataclasses.replace(params, p=p))
  return results, chosen
