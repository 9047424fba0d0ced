"""From a prepared TFDS dataset to in-memory clips, and the fixed-shape batches of the LOSO loop.

Every clip is resampled once, when the dataset is loaded (SPEC §1): T frames by linear
interpolation at ``linspace(0, n - 1, T)`` (short clips are up-sampled the same way), resized to
``image_size`` bilinearly (antialiased when shrinking), values in [0, 1], kept as float16. The whole
protocol then sits in memory (and later on the accelerator), and a training step only receives
integer indices, per-clip augmentation parameters and a validity mask: no host work per step, and
the same shapes for every step and every fold, so the step compiles once per run.
"""

import dataclasses
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mpt_jax import errors


class DataError(errors.UserError):
  """A dataset problem the user can fix (the message says how)."""


@dataclasses.dataclass
class ClipSet:
  """A protocol in memory. Arrays are indexed by clip."""
  clips: np.ndarray  # (N, T, S, S, 3) float16 in [0, 1]
  labels: np.ndarray  # (N,) int32
  apex: np.ndarray  # (N,) int32, apex position on the resampled timeline
  subjects: np.ndarray  # (N,) str
  names: np.ndarray  # (N,) str, 'dataset/subject/clip'
  classes: Tuple[str, ...]

  def __len__(self):
    return len(self.labels)

  @property
  def subject_list(self) -> List[str]:
    from tfds_builders.common import natural_key  # pylint: disable=g-import-not-at-top
    return sorted(set(self.subjects.tolist()), key=natural_key)

  def subset(self, mask: np.ndarray) -> 'ClipSet':
    return ClipSet(self.clips[mask], self.labels[mask], self.apex[mask], self.subjects[mask],
                   self.names[mask], self.classes)


def resample_positions(n: int, t_count: int) -> np.ndarray:
  return np.linspace(0.0, n - 1.0, t_count)


def temporal_resample(frames: np.ndarray, t_count: int) -> np.ndarray:
  """Linear interpolation of (n, ...) frames at ``linspace(0, n - 1, T)`` -> (T, ...) float32."""
  n = frames.shape[0]
  if n == 0:
    raise DataError('A clip has no frames')
  pos = resample_positions(n, t_count)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n - 1)
  w = (pos - lo).reshape((-1,) + (1,) * (frames.ndim - 1))
  f = frames.astype(np.float32)
  return f[lo] * (1.0 - w) + f[hi] * w


def apex_on_timeline(apex_index: int, n: int, t_count: int) -> int:
  """The resampled frame nearest to the stored apex."""
  if n <= 1:
    return 0
  return int(np.clip(np.round(apex_index * (t_count - 1) / (n - 1)), 0, t_count - 1))


def middle_apex(t_count: int) -> int:
  """The default apex on a T-frame timeline when none is annotated: ``(T - 1) // 2``.

  The one definition shared by prediction and the model's default (``MPT.__call__``).
  """
  return (int(t_count) - 1) // 2


def resize_frames(frames: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of (T, H, W, 3) to (T, size, size, 3) (antialiased when shrinking)."""
  if frames.shape[1:3] == (size, size):
    return frames
  out = jax.image.resize(jnp.asarray(frames), (frames.shape[0], size, size, frames.shape[3]),
                         method='bilinear', antialias=True)
  return np.asarray(out)


def prepare_clip(frames: Sequence[np.ndarray], t_count: int, size: int) -> np.ndarray:
  """uint8 frames (n, H, W, 3) -> (T, size, size, 3) float16 in [0, 1]."""
  arr = np.stack([np.asarray(f) for f in frames])
  if arr.ndim == 3:
    arr = arr[..., None]
  if arr.shape[-1] == 1:
    arr = np.repeat(arr, 3, axis=-1)
  x = temporal_resample(arr, t_count) / 255.0
  x = resize_frames(x, size)
  return np.clip(x, 0.0, 1.0).astype(np.float16)


def load(config) -> ClipSet:
  """Loads the configured, prepared TFDS dataset into memory.

  Raises:
    DataError: when the dataset is not prepared (with the command that prepares it) or its classes
      do not match ``config.data.num_classes``.
  """
  from tfds_builders import prepare as prep  # pylint: disable=g-import-not-at-top
  builder = prep.builder_for(config.data)
  if not builder.is_prepared():
    cfg_hint = f'{builder.name}' + (f', config {config.data.builder_config}'
                                    if config.data.builder_config else '')
    manual = ('' if builder.name == 'synthetic_me'
              else ' --config.data.manual_dir=/path/to/the/unpacked/dataset')
    raise DataError(f'Dataset {cfg_hint} is not prepared in {os.path.expanduser(config.data.data_dir)}.'
                    f' Prepare it first: python main.py --mode=prepare --config=<this config>'
                    f'{manual}')
  classes = tuple(builder.info.features['label'].names)
  if 'num_classes' in config.data and int(config.data.num_classes) != len(classes):
    raise DataError(f'config.data.num_classes is {config.data.num_classes} but dataset '
                    f'{builder.name} has {len(classes)} classes {classes}')
  source = builder.as_data_source(split='train')
  wanted = set(config.data.subjects) if config.data.subjects else None
  t_count, size = int(config.model.num_frames), int(config.model.image_size)
  clips, labels, apex, subjects, names = [], [], [], [], []
  logging.info('Loading %d clips of %s into memory (T=%d, %d px)...', len(source), builder.name,
               t_count, size)
  for i in range(len(source)):
    ex = source[i]
    subject = _text(ex['subject'])
    if wanted is not None and subject not in wanted:
      continue
    frames = ex['frames']
    clips.append(prepare_clip(frames, t_count, size))
    labels.append(int(ex['label']))
    apex.append(apex_on_timeline(int(ex['apex_index']), len(frames), t_count))
    subjects.append(subject)
    names.append(f"{_text(ex['dataset'])}/{subject}/{_text(ex['clip'])}")
  if wanted is not None:
    missing = sorted(wanted - set(subjects))
    if missing:
      raise DataError(f'config.data.subjects names subjects not in {builder.name}: {missing}')
  if not clips:
    raise DataError(f'Dataset {builder.name} has no clips')
  return ClipSet(np.stack(clips), np.asarray(labels, np.int32), np.asarray(apex, np.int32),
                 np.asarray(subjects), np.asarray(names), classes)


def _text(v) -> str:
  return v.decode('utf-8') if isinstance(v, bytes) else str(v)


# ------------------------------------------------------------------------------------- batches
@dataclasses.dataclass
class Batch:
  """Indices into the on-device clip array, reshaped (devices, per_device)."""
  idx: np.ndarray  # int32
  aug: np.ndarray  # float32 (devices, per_device, 5): per-clip augmentation (see augment.py)
  mask: np.ndarray  # float32, 1 for real samples, 0 for padding


def epoch_batches(indices: np.ndarray, batch_size: int, num_devices: int, seed: int,
                  hflip: bool, shuffle: bool = True, max_rotation_deg: float = 0.0,
                  min_crop_scale: float = 1.0) -> Iterator[Batch]:
  """Fixed-shape batches over ``indices``; the last batch is padded and masked.

  The order and the augmentation draws depend only on ``seed`` (derived from run seed, fold and
  epoch), which makes a resumed run identical to an uninterrupted one.
  """
  from mpt_jax import augment  # pylint: disable=g-import-not-at-top
  if batch_size % num_devices:
    raise DataError(f'batch size {batch_size} is not divisible by the {num_devices} devices')
  rng = np.random.default_rng(seed)
  order = rng.permutation(indices) if shuffle else np.asarray(indices)
  aug = augment.draw_params(rng, len(order), hflip, max_rotation_deg, min_crop_scale)
  per = batch_size // num_devices
  for start in range(0, len(order), batch_size):
    idx = order[start:start + batch_size]
    au = aug[start:start + batch_size]
    pad = batch_size - len(idx)
    mask = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
    idx = np.concatenate([idx, np.full(pad, idx[0] if len(idx) else 0, idx.dtype)])
    identity = np.tile(np.array([[0, 0, 1, 0, 0]], np.float32), (pad, 1))
    au = np.concatenate([au, identity], axis=0)
    yield Batch(idx.astype(np.int32).reshape(num_devices, per), au.reshape(num_devices, per, 5),
                mask.reshape(num_devices, per))


def steps_per_epoch(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def fold_seed(seed: int, fold: int, epoch: int) -> int:
  return int(np.random.SeedSequence([seed, fold, epoch]).generate_state(1)[0])


def split_for_subject(data: ClipSet, subject: str) -> Tuple[np.ndarray, np.ndarray]:
  """(train indices, test indices) of the LOSO fold that holds out ``subject``."""
  test = np.nonzero(data.subjects == subject)[0]
  train = np.nonzero(data.subjects != subject)[0]
  return train, test


def device_arrays(data: ClipSet, devices: Optional[Sequence[jax.Device]] = None) -> Dict[str, jax.Array]:
  """Puts clips, labels and apex positions on every local device once (replicated)."""
  devices = list(devices or jax.local_devices())
  mesh = jax.sharding.Mesh(np.asarray(devices), ('batch',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return {k: jax.device_put(v, sharding) for k, v in
          (('clips', data.clips), ('labels', data.labels), ('apex', data.apex))}
