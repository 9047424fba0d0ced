"""The resampled-protocol cache of mpt_jax/input_pipeline.py and the sparse frame decoding."""

import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import synthetic
from mpt_jax import input_pipeline
from tfds_builders import prepare

tfds.disable_progress_bar()


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  """The small synthetic dataset, prepared once for this module."""
  data_dir = str(tmp_path_factory.mktemp('resample') / 'tfds')
  config = synthetic.get_config('smoke')
  config.data.builder_config = 'small'
  config.data.data_dir = data_dir
  prepare.prepare(config.data)
  return data_dir


def _config(tmp_path, prepared, **data):  # pylint: disable=redefined-outer-name
  """A config on a private copy of the prepared dataset (each test has its own cache)."""
  config = synthetic.get_config('smoke')
  config.data.builder_config = 'small'
  config.data.data_dir = str(tmp_path / 'tfds')
  shutil.copytree(prepared, config.data.data_dir, copy_function=shutil.copy2)
  config.data.subjects = ()
  for k, v in data.items():
    config.data[k] = v
  return config


def _reference(config):
  """The old path: every frame decoded by TFDS, then prepare_clip."""
  ds = prepare.builder_for(config.data).as_data_source(split='train')
  return np.stack([input_pipeline.prepare_clip(ex['frames'], config.model.num_frames,
                                               config.model.image_size) for ex in ds])


def test_sparse_decoding_equals_decoding_every_frame(tmp_path, prepared):  # pylint: disable=redefined-outer-name
  config = _config(tmp_path, prepared, cache_resampled=False)
  data = input_pipeline.load(config)
  np.testing.assert_array_equal(data.clips, _reference(config))
  rng = np.random.default_rng(0)
  for n in (1, 2, 5, 8, 9, 16, 23, 40):
    frames = rng.integers(0, 255, (n, 20, 20, 3), np.uint8)
    asked = []
    got = input_pipeline.resample_sparse(lambda i: asked.append(i) or frames[i], n, 8, 12)  # pylint: disable=cell-var-from-loop
    np.testing.assert_array_equal(got, input_pipeline.prepare_clip(frames, 8, 12))
    assert len(asked) <= min(n, 16) and len(set(asked)) == len(asked)


def test_cached_load_equals_uncached_load_exactly(tmp_path, prepared):  # pylint: disable=redefined-outer-name
  config = _config(tmp_path, prepared)
  first = input_pipeline.load(config)  # miss: resamples and writes the cache
  builder = prepare.builder_for(config.data)
  cache_root = os.path.join(builder.data_dir, input_pipeline.CACHE_DIR)
  entries = os.listdir(cache_root)
  assert len(entries) == 1 and not entries[0].startswith('.tmp')
  second = input_pipeline.load(config)  # hit
  assert isinstance(second.clips, np.memmap)
  config.data.cache_resampled = False
  uncached = input_pipeline.load(config)
  for a, b in ((first, second), (uncached, second)):
    np.testing.assert_array_equal(np.asarray(a.clips), np.asarray(b.clips))
    assert a.clips.dtype == b.clips.dtype == np.float16
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.apex, b.apex)
    assert a.subjects.tolist() == b.subjects.tolist() and a.names.tolist() == b.names.tolist()
    assert a.classes == b.classes


def test_a_changed_key_misses_the_cache(tmp_path, prepared):  # pylint: disable=redefined-outer-name
  config = _config(tmp_path, prepared)
  input_pipeline.load(config)
  builder = prepare.builder_for(config.data)
  key = input_pipeline.cache_key(builder, config)
  assert input_pipeline.read_cache(builder.data_dir, key) is not None
  for field, value in (('num_frames', 4), ('image_size', 16), ('subjects', ['p01']),
                       ('prepared', 'another preparation'), ('version', '9.9.9')):
    assert input_pipeline.read_cache(builder.data_dir, dict(key, **{field: value})) is None
  # A cache entry whose stored key differs (e.g. a hash collision or a hand-copied folder) is
  # refused: the key is verified, not only its hash.
  other = dict(key, num_frames=4)
  path = input_pipeline._cache_path(builder.data_dir, key)  # pylint: disable=protected-access
  import json  # pylint: disable=g-import-not-at-top
  meta_path = os.path.join(path, 'meta.json')
  with open(meta_path) as f:
    meta = json.load(f)
  meta['key'] = other
  with open(meta_path, 'w') as f:
    json.dump(meta, f)
  assert input_pipeline.read_cache(builder.data_dir, key) is None
  # A changed T reloads with the new T (and writes its own entry).
  config.model.num_frames = 4
  data = input_pipeline.load(config)
  assert data.clips.shape[1] == 4
  # Re-preparing the dataset changes the fingerprint.
  rec = [f for f in os.listdir(builder.data_dir) if 'array_record' in f][0]
  st = os.stat(os.path.join(builder.data_dir, rec))
  os.utime(os.path.join(builder.data_dir, rec), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert input_pipeline.cache_key(builder, config)['prepared'] != key['prepared']
