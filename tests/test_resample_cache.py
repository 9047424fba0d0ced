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


@pytest.fixture(name='prepared')
def prepared_fixture(smoke_data_dir):
  """The session's small synthetic dataset (copied by every test, without its cache)."""
  return smoke_data_dir


def _config(tmp_path, prepared, **data):  # pylint: disable=redefined-outer-name
  """A config on a private copy of the prepared dataset (each test has its own cache)."""
  config = synthetic.get_config('smoke')
  config.data.builder_config = 'small'
  config.data.data_dir = str(tmp_path / 'tfds')
  shutil.copytree(prepared, config.data.data_dir, copy_function=shutil.copy2,
                  ignore=shutil.ignore_patterns('mpt_resampled*'))
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


def test_cache_hit_needs_no_tfds_builder(tmp_path, prepared, monkeypatch):  # pylint: disable=redefined-outer-name
  """The second run finds its cache through the index, without building the TFDS builder (so
  without importing TensorFlow Datasets: checked in a fresh process, with the subject list the
  training loop asks for, sorted as the builders sort)."""
  config = _config(tmp_path, prepared)
  first = input_pipeline.load(config)
  assert input_pipeline.read_indexed_cache(config) is not None

  def no_builder(*args, **kwargs):
    raise AssertionError('the TFDS builder was built on a cache hit')

  monkeypatch.setattr(prepare, 'builder_for', no_builder)
  second = input_pipeline.load(config)
  np.testing.assert_array_equal(np.asarray(first.clips), np.asarray(second.clips))
  assert first.names.tolist() == second.names.tolist() and first.classes == second.classes
  np.testing.assert_array_equal(first.labels, second.labels)
  np.testing.assert_array_equal(first.apex, second.apex)
  monkeypatch.undo()
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  code = ('import sys; from configs import synthetic; from mpt_jax import input_pipeline\n'
          'c = synthetic.get_config("smoke"); c.data.builder_config = "small"\n'
          f'c.data.data_dir = {config.data.data_dir!r}; c.data.subjects = ()\n'
          'd = input_pipeline.load(c); d.subject_list\n'
          'print(len(d), "tensorflow_datasets" in sys.modules, "tensorflow" in sys.modules)\n')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert out.stdout.split()[-3:] == [str(len(first)), 'False', 'False'], out.stdout + out.stderr


def test_index_is_trusted_only_while_its_key_holds(tmp_path, prepared, monkeypatch):  # pylint: disable=redefined-outer-name
  config = _config(tmp_path, prepared)
  input_pipeline.load(config)
  assert input_pipeline.read_indexed_cache(config) is not None
  # Another config (another builder option, T, classes) has no entry, or is refused.
  for field, value in (('align', 'never'), ('subjects', ('p01',))):
    other = _config(tmp_path / field, prepared, **{field: value})
    other.data.data_dir = config.data.data_dir
    assert input_pipeline.read_indexed_cache(other) is None
  config.data.num_classes = 3
  assert input_pipeline.read_indexed_cache(config) is None
  with pytest.raises(input_pipeline.DataError, match='num_classes'):
    input_pipeline.load(config)  # the full path says why
  config.data.num_classes = 5
  # Another dataset version in the code (the data was prepared by an older version).
  from mpt_jax import prepared_version  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(prepared_version, 'DATASET_VERSION', '9.9.9')
  assert input_pipeline.read_indexed_cache(config) is None
  monkeypatch.undo()
  assert input_pipeline.read_indexed_cache(config) is not None
  # Re-prepared data (another fingerprint) misses; the full path resamples it and re-indexes.
  builder = prepare.builder_for(config.data)
  rec = [f for f in os.listdir(builder.data_dir) if 'array_record' in f][0]
  st = os.stat(os.path.join(builder.data_dir, rec))
  os.utime(os.path.join(builder.data_dir, rec), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
  assert input_pipeline.read_indexed_cache(config) is None
  input_pipeline.load(config)
  assert input_pipeline.read_indexed_cache(config) is not None
  # A copied data_dir keeps its index (folders are recorded relative to data_dir).
  moved = str(tmp_path / 'moved')
  shutil.copytree(config.data.data_dir, moved, copy_function=shutil.copy2)
  config.data.data_dir = moved
  assert input_pipeline.read_indexed_cache(config) is not None


def test_subject_order_is_natural():
  """Folds follow the subjects in the builders' order: numbers inside names compare as numbers."""
  from mpt_jax import frame_files  # pylint: disable=g-import-not-at-top
  names = ['sub10', 'sub2', 's1', '006', '28', 'sub02', 'a', 'p01']
  natural = ['006', '28', 'a', 'p01', 's1', 'sub2', 'sub02', 'sub10']  # sub2 = sub02: kept in order
  assert sorted(names, key=frame_files.natural_key) == natural
  subjects = np.asarray([n for n in names if n != 'sub02'])  # (sub02 = sub2: order of a set)
  data = input_pipeline.ClipSet(np.zeros((len(subjects), 1)), np.zeros(len(subjects), np.int32),
                                np.zeros(len(subjects), np.int32), subjects, subjects, ('a',))
  assert data.subject_list == [n for n in natural if n != 'sub02']
