"""From a prepared TFDS dataset to in-memory clips, and the fixed-shape batches of the LOSO loop.

Every clip is resampled once, when the dataset is loaded (docs/method.md §1): T frames by linear
interpolation at ``linspace(0, n - 1, T)`` (short clips are up-sampled the same way), resized to
``image_size`` bilinearly (antialiased when shrinking), values in [0, 1], kept as float16. The whole
protocol then sits in memory (and later on the accelerator), and a training step only receives
integer indices, per-clip augmentation parameters and a validity mask: no host work per step, and
the same shapes for every step and every fold, so the step compiles once per run.

Runs start in seconds: the resampled protocol is cached next to the prepared dataset
(``<prepared dataset folder>/mpt_resampled/<key hash>/``, an ``.npy`` of the clips and a JSON of
labels, names and the key), keyed by everything that determines it (dataset, builder config,
version, a fingerprint of the prepared files, T, image size, dtype, subjects, the resampling code
version), written atomically (a temporary folder renamed into place) and verified by its full key
on load. A miss decodes only the stored frames the temporal interpolation uses (at most 2T per
clip) straight into one preallocated array, so two full copies never exist. The cached clips are
memory-mapped read-only (and on the CPU backend ``jax.device_put`` uses those pages without a copy).

A run start that hits the cache does not import TensorFlow Datasets at all: a small index in
``<data_dir>/mpt_resampled_index/`` maps the run's config to the prepared dataset's folder and the
cache key; the key's on-disk parts (the prepared files' fingerprint, the dataset version of this
code, the cache format) are checked again before the entry is trusted (:func:`read_indexed_cache`).
Verification is by key, file header and array shape, never by hashing the 1 GB of clips: the cache
is written atomically, so a partial file cannot be found under a valid key.
"""

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from mpt_jax import datasets
from mpt_jax import errors
from mpt_jax import frame_files
from mpt_jax.models import dynamic_image


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
    return sorted(set(self.subjects.tolist()), key=frame_files.natural_key)

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


# The default apex on a T-frame timeline when none is annotated, ``(T - 1) // 2``: the one
# definition, shared by prediction and the model's own default (``MPT.__call__``).
middle_apex = dynamic_image.middle_apex


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


def frames_needed(n: int, t_count: int) -> List[int]:
  """The stored frames the temporal interpolation of an n-frame clip reads with non-zero weight."""
  pos = resample_positions(n, t_count)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n - 1)
  w = pos - lo
  return sorted(set(lo.tolist()) | set(hi[w > 0].tolist()))


def resample_sparse(get_frame: Callable[[int], np.ndarray], n: int, t_count: int,
                    size: int) -> np.ndarray:
  """:func:`prepare_clip` of an n-frame clip, decoding only :func:`frames_needed` (bit-identical).

  Where ``pos`` is an integer, :func:`temporal_resample` adds ``f[hi] * 0``; here the ``lo`` frame
  stands in for that never-decoded ``hi`` frame, which adds the same exact zero.
  """
  if n == 0:
    raise DataError('A clip has no frames')
  need = frames_needed(n, t_count)
  at = {i: k for k, i in enumerate(need)}
  g = np.stack([np.asarray(get_frame(i)) for i in need])
  if g.ndim == 3:
    g = g[..., None]
  if g.shape[-1] == 1:
    g = np.repeat(g, 3, axis=-1)
  pos = resample_positions(n, t_count)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, n - 1)
  w = pos - lo
  lo_k = np.array([at[i] for i in lo])
  hi_k = np.array([at[h] if wt > 0 else at[l] for l, h, wt in zip(lo, hi, w)])
  f = g.astype(np.float32)
  wb = w.reshape((-1,) + (1,) * (g.ndim - 1))
  x = (f[lo_k] * (1.0 - wb) + f[hi_k] * wb) / 255.0
  x = resize_frames(x, size)
  return np.clip(x, 0.0, 1.0).astype(np.float16)


CACHE_DIR = 'mpt_resampled'  # inside the prepared dataset's folder
CACHE_FORMAT = 1  # bump when the resampling code or the cache layout changes
RESAMPLING = 'linear-linspace(0,n-1,T); jax.image.resize bilinear antialias; clip [0,1]'


def prepared_fingerprint(data_dir: str) -> str:
  """Identifies one preparation of a dataset: its dataset_info.json and the names, sizes and
  modification times of its record files (a re-prepared dataset gets a new fingerprint)."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(data_dir)):
    path = os.path.join(data_dir, name)
    if name == 'dataset_info.json':
      with open(path, 'rb') as f:
        h.update(f.read())
    elif os.path.isfile(path) and ('array_record' in name or 'tfrecord' in name):
      st = os.stat(path)
      h.update(f'{name}:{st.st_size}:{st.st_mtime_ns};'.encode())
  return h.hexdigest()


def cache_key(builder, config) -> Dict[str, Any]:
  """Everything that determines the resampled protocol."""
  cfg = builder.builder_config
  return {
      'format': CACHE_FORMAT,
      'resampling': RESAMPLING,
      'dataset': builder.name,
      'builder_config': cfg.name if cfg is not None else '',
      'version': str(builder.version),
      'prepared': prepared_fingerprint(builder.data_dir),
      'num_frames': int(config.model.num_frames),
      'image_size': int(config.model.image_size),
      'dtype': 'float16',
      'subjects': sorted(config.data.subjects) if config.data.subjects else None,
  }


def _cache_path(data_dir: str, key: Dict[str, Any]) -> str:
  digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
  return os.path.join(data_dir, CACHE_DIR, digest)


def read_cache(data_dir: str, key: Dict[str, Any]) -> Optional['ClipSet']:
  """The cached protocol for ``key``, or None (missing, another key, or unreadable)."""
  path = _cache_path(data_dir, key)
  try:
    with open(os.path.join(path, 'meta.json')) as f:
      meta = json.load(f)
  except (OSError, ValueError):
    return None
  if meta.get('key') != key:
    logging.info('Resampled cache %s was written for another key; ignoring it', path)
    return None
  try:
    clips = np.load(os.path.join(path, 'clips.npy'), mmap_mode='r')
  except (OSError, ValueError) as e:
    logging.warning('Resampled cache %s is unreadable (%s); resampling again', path, e)
    return None
  n = len(meta['labels'])
  expect = (n, key['num_frames'], key['image_size'], key['image_size'], 3)
  if clips.shape != expect or clips.dtype != np.float16:
    logging.warning('Resampled cache %s has shape %s, expected %s; resampling again', path,
                    clips.shape, expect)
    return None
  return ClipSet(clips, np.asarray(meta['labels'], np.int32), np.asarray(meta['apex'], np.int32),
                 np.asarray(meta['subjects']), np.asarray(meta['names']), tuple(meta['classes']))


def write_cache(data_dir: str, key: Dict[str, Any], data: 'ClipSet') -> Optional[str]:
  """Writes ``data`` under ``key`` atomically (a temporary folder renamed into place)."""
  root = os.path.join(data_dir, CACHE_DIR)
  final = _cache_path(data_dir, key)
  try:
    os.makedirs(root, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.tmp-', dir=root)
  except OSError as e:
    logging.warning('Cannot write the resampled cache under %s (%s); runs will resample', root, e)
    return None
  try:
    np.save(os.path.join(tmp, 'clips.npy'), data.clips)
    meta = {'key': key, 'labels': data.labels.tolist(), 'apex': data.apex.tolist(),
            'subjects': data.subjects.tolist(), 'names': data.names.tolist(),
            'classes': list(data.classes)}
    with open(os.path.join(tmp, 'meta.json'), 'w') as f:
      json.dump(meta, f)
    if os.path.exists(final):  # an older or concurrent copy under the same key: replace it
      shutil.rmtree(final, ignore_errors=True)
    os.rename(tmp, final)
    return final
  except OSError as e:
    logging.warning('Cannot write the resampled cache %s (%s); runs will resample', final, e)
    shutil.rmtree(tmp, ignore_errors=True)
    return None


INDEX_DIR = 'mpt_resampled_index'  # in config.data.data_dir: config -> cache, without TFDS


def _lookup(config) -> Dict[str, Any]:
  """What a run asks for, from its config alone: every ``config.data`` field but ``data_dir`` (the
  index lives in it; fields that do not select the prepared dataset at worst cost a lookup miss),
  T and the image size."""
  data = config.data.to_dict() if hasattr(config.data, 'to_dict') else dict(config.data)
  data = {k: (sorted(v) if k == 'subjects' and v else v) for k, v in data.items()
          if k != 'data_dir'}
  return {'format': CACHE_FORMAT, 'data': json.loads(json.dumps(data, sort_keys=True, default=str)),
          'num_frames': int(config.model.num_frames), 'image_size': int(config.model.image_size)}


def _index_path(config) -> str:
  digest = hashlib.sha256(json.dumps(_lookup(config), sort_keys=True).encode()).hexdigest()[:20]
  return os.path.join(os.path.expanduser(config.data.data_dir), INDEX_DIR, digest + '.json')


def write_index(config, builder_data_dir: str, key: Dict[str, Any]) -> None:
  """Records which cache a config loads (atomically; the folder is relative to data_dir, so a
  copied or moved data_dir keeps working). Only a speed-up: failures are logged and ignored."""
  path = _index_path(config)
  root = os.path.expanduser(config.data.data_dir)
  entry = {'lookup': _lookup(config), 'dataset_dir': os.path.relpath(builder_data_dir, root),
           'key': key}
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix='.tmp-', dir=os.path.dirname(path))
    with os.fdopen(fd, 'w') as f:
      json.dump(entry, f)
    os.replace(tmp, path)
  except OSError as e:
    logging.info('Cannot write the resampled-cache index %s (%s)', path, e)


def read_indexed_cache(config) -> Optional['ClipSet']:
  """The cached protocol for ``config`` found without TensorFlow Datasets, or None.

  The index entry names the prepared dataset's folder and the cache key it was written with. It
  is trusted only if everything in that key that can change on disk or in the code still holds:
  the same config (the entry's own lookup), the prepared files' fingerprint recomputed now
  (:func:`prepared_fingerprint`: a re-prepared dataset misses), the dataset version of this code
  (``prepared_version.DATASET_VERSION``), the cache format and resampling, and the number of
  classes; then :func:`read_cache` checks the cache's own stored key and array shape. Any
  mismatch returns None and :func:`load` takes the full path (the TFDS builder).
  """
  from mpt_jax import prepared_version  # pylint: disable=g-import-not-at-top
  try:
    with open(_index_path(config)) as f:
      entry = json.load(f)
  except (OSError, ValueError):
    return None
  key = entry.get('key') or {}
  if entry.get('lookup') != _lookup(config) or not isinstance(entry.get('dataset_dir'), str):
    return None
  data_dir = os.path.join(os.path.expanduser(config.data.data_dir), entry['dataset_dir'])
  if (key.get('format') != CACHE_FORMAT or key.get('resampling') != RESAMPLING
      or key.get('version') != prepared_version.DATASET_VERSION
      or key.get('num_frames') != int(config.model.num_frames)
      or key.get('image_size') != int(config.model.image_size)):
    return None
  try:
    if key.get('prepared') != prepared_fingerprint(data_dir):
      return None
  except OSError:
    return None
  data = read_cache(data_dir, key)
  if data is None:
    return None
  if 'num_classes' in config.data and int(config.data.num_classes) != len(data.classes):
    return None  # the full path reports the mismatch
  return data


def _raw_frames_decoder():
  """A TFDS decoder that leaves a sequence of images as their encoded bytes (TFDS's own
  SkipDecoding has no NumPy path for sequences)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class RawFrames(tfds.decode.SkipDecoding):

    def decode_batch_example_np(self, serialized_example):
      return serialized_example

  return RawFrames()


def _decode_png(data: bytes) -> np.ndarray:
  import cv2  # pylint: disable=g-import-not-at-top
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
  if img is None:
    raise DataError('A stored frame of the prepared dataset cannot be decoded; prepare it again')
  return img[..., ::-1]


def load(config) -> ClipSet:
  """Loads the configured, prepared TFDS dataset into memory (or from the resampled cache).

  Raises:
    DataError: when the dataset is not prepared (with the command that prepares it) or its classes
      do not match ``config.data.num_classes``.
  """
  use_cache = bool(config.data.get('cache_resampled', True))
  if use_cache:
    cached = read_indexed_cache(config)  # the usual run start: no TFDS import, no decoding
    if cached is not None:
      logging.info('Loaded %d resampled clips from the cache (index %s)', len(cached),
                   _index_path(config))
      return cached
  builder = datasets.builder_for(config.data)
  if not builder.is_prepared():
    cfg_hint = f'{builder.name}' + (f', config {config.data.builder_config}'
                                    if config.data.builder_config else '')
    manual = ('' if not hasattr(builder, 'source_files')  # generated data reads no folder
              else ' --config.data.manual_dir=/path/to/the/unpacked/dataset')
    raise DataError(f'Dataset {cfg_hint} is not prepared in {os.path.expanduser(config.data.data_dir)}.'
                    f' Prepare it first: python main.py --mode=prepare --config=<this config>'
                    f'{manual}')
  classes = tuple(builder.info.features['label'].names)
  if 'num_classes' in config.data and int(config.data.num_classes) != len(classes):
    raise DataError(f'config.data.num_classes is {config.data.num_classes} but dataset '
                    f'{builder.name} has {len(classes)} classes {classes}')
  key = cache_key(builder, config) if use_cache else None
  if use_cache:
    cached = read_cache(builder.data_dir, key)
    if cached is not None:
      logging.info('Loaded %d resampled clips of %s from the cache in %s', len(cached),
                   builder.name, builder.data_dir)
      write_index(config, builder.data_dir, key)
      return cached
  data = _resample_dataset(builder, config, classes)
  if use_cache:
    path = write_cache(builder.data_dir, key, data)
    if path:
      logging.info('Cached the resampled protocol in %s', path)
      write_index(config, builder.data_dir, key)
  return data


def _resample_dataset(builder, config, classes) -> ClipSet:
  """Reads and resamples every wanted clip into one preallocated array (no second full copy)."""
  source = builder.as_data_source(split='train', decoders={'frames': _raw_frames_decoder()})
  wanted = set(config.data.subjects) if config.data.subjects else None
  t_count, size = int(config.model.num_frames), int(config.model.image_size)
  # Rows past the last kept clip are never written, so the OS never backs them with memory, and
  # the returned slice is a view: one copy of the protocol in all.
  clips = np.empty((len(source), t_count, size, size, 3), np.float16)
  labels, apex, subjects, names = [], [], [], []
  logging.info('Loading %d clips of %s into memory (T=%d, %d px)...', len(source), builder.name,
               t_count, size)
  for i in range(len(source)):
    ex = source[i]
    subject = _text(ex['subject'])
    if wanted is not None and subject not in wanted:
      continue
    frames = ex['frames']
    decode = lambda k, f=frames: _decode_png(f[k])  # pylint: disable=unnecessary-lambda-assignment
    clips[len(labels)] = resample_sparse(decode, len(frames), t_count, size)
    labels.append(int(ex['label']))
    apex.append(apex_on_timeline(int(ex['apex_index']), len(frames), t_count))
    subjects.append(subject)
    names.append(f"{_text(ex['dataset'])}/{subject}/{_text(ex['clip'])}")
  if wanted is not None:
    missing = sorted(wanted - set(subjects))
    if missing:
      raise DataError(f'config.data.subjects names subjects not in {builder.name}: {missing}')
  if not labels:
    raise DataError(f'Dataset {builder.name} has no clips')
  return ClipSet(clips[:len(labels)], np.asarray(labels, np.int32), np.asarray(apex, np.int32),
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
