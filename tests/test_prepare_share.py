"""Preparation pool workers share work their parent does once, without changing what is stored.

* The face detector: built once by the parent (``dlib.get_frontal_face_detector`` unpacks it,
  about 0.3 s of CPU per process) and loaded from its saved file by every worker
  (``face_align.share_detector`` / ``use_shared_detector``): the same boxes and scores.
* The face search asks only for the frames it runs a detector on, and ``process_clip`` decodes each
  frame once when the face search's full decode is also the frame it stores.
"""

import concurrent.futures
import io
import multiprocessing
import os
import time

import numpy as np
import pytest
from PIL import Image

from mpt_jax import clip_frames
from mpt_jax import face_align
from tfds_builders import fake_faces
from tfds_builders import pipeline

dlib = pytest.importorskip('dlib')


def _face(gray=True, angle=5.0, scale=2.0):
  return fake_faces.face_frame(fake_faces.SAMM_SIZE, angle, scale, (470, 300), gray=gray)[0]


def _boxes(detector, frame):
  rects, scores, _ = detector.run(frame, 0, 0.0)
  return [(r.left(), r.top(), r.right(), r.bottom()) for r in rects], list(scores)


@pytest.fixture
def restore_models():
  yield
  face_align.use_shared_detector(None, None)
  face_align._shared_detector = None  # pylint: disable=protected-access
  face_align._dlib_models.cache_clear()  # pylint: disable=protected-access


def test_worker_loads_the_shared_detector_and_finds_the_same_faces(tmp_path, monkeypatch,
                                                                   restore_models):
  frame = _face()
  ref_detector = dlib.get_frontal_face_detector()
  ref_eyes = face_align.landmark_eyes(frame)
  path = str(tmp_path / 'detector.svm')
  assert face_align.share_detector(path)
  ready = multiprocessing.get_context('spawn').Event()
  ready.set()
  face_align.use_shared_detector(path, ready)

  def no_rebuild():
    raise AssertionError('the worker built the detector instead of loading the shared one')

  monkeypatch.setattr(dlib, 'get_frontal_face_detector', no_rebuild)
  detector = face_align._dlib_models()[0]  # pylint: disable=protected-access
  for f in (frame, _face(angle=-7.0, scale=3.5), _face(gray=False, scale=1.4)):
    assert _boxes(detector, face_align.to_gray(f)) == _boxes(ref_detector, face_align.to_gray(f))
  assert face_align.landmark_eyes(frame) == ref_eyes


def test_worker_builds_its_own_detector_when_none_was_shared(tmp_path, restore_models):
  ready = multiprocessing.get_context('spawn').Event()
  ready.set()  # the parent gave up without writing the file
  face_align.use_shared_detector(str(tmp_path / 'missing.svm'), ready)
  frame = _face()
  eyes = face_align.landmark_eyes(frame)
  assert eyes is not None


def _raise_oserror(*args, **kwargs):
  raise OSError('no space left on device')


@pytest.mark.parametrize('temp_folder', ['writable', 'unusable'])
def test_pool_removes_the_shared_detector_file(tmp_path, monkeypatch, temp_folder):
  """Also without a usable temp folder: the workers then build their own detector, same output."""
  monkeypatch.setattr('tempfile.tempdir', str(tmp_path / 'tmp'))
  os.makedirs(tmp_path / 'tmp')
  if temp_folder == 'unusable':
    monkeypatch.setattr('tempfile.mkdtemp', _raise_oserror)
  frames = tmp_path / 'clip'
  os.makedirs(frames)
  tasks = []
  for c in range(2):
    paths = []
    for k in range(3):
      paths.append(str(frames / f'{c}_{k}.jpg'))
      Image.fromarray(_face(scale=2.0 + c)).save(paths[-1], quality=92)
    tasks.append(clip_frames.ClipTask(c, tuple(paths), 64, True, 0.2, 1))
  pooled = pipeline.process_clips(tasks, 2)
  assert os.listdir(tmp_path / 'tmp') == []
  assert [r['method'] for r in pooled] == ['landmarks', 'landmarks']
  for c, r in enumerate(pooled):
    one = clip_frames.process_clip(
        clip_frames.ClipTask(c, tasks[c].paths, 64, True, 0.2, 1))
    assert r['transform'] == one['transform']
    assert r['pngs'] == one['pngs'] and all(r['pngs'])


def test_face_search_reads_only_the_frames_it_searches():
  frames = [_face()] * 6
  asked = []

  def get(i):
    asked.append(i)
    return frames[i]

  info = face_align.estimate_transform(get, 6, 224, apex_index=5)
  assert info.method == 'landmarks' and info.frame == 0
  assert asked == [0]  # the face is on the onset: no other frame is decoded


def test_face_search_still_tries_every_candidate_before_the_centre_crop():
  blank = np.full(fake_faces.SAMM_SIZE, 90, np.uint8)
  asked = []

  def get(i):
    asked.append(i)
    return None if i == 0 else blank

  info = face_align.estimate_transform(get, 8, 224, apex_index=7)
  assert info.method == 'centre' and sorted(set(asked)) == [0, 1, 2, 3, 4, 7]
  assert np.allclose(info.transform, face_align.centre_transform(*blank.shape, 224))


def test_each_frame_is_decoded_once_when_stored_at_full_resolution(tmp_path, monkeypatch):
  paths = []
  for k in range(4):
    paths.append(str(tmp_path / f'{k}.jpg'))
    Image.fromarray(_face(scale=2.0)).save(paths[-1], quality=92)  # no draft mode at this scale
  calls = []
  decode = clip_frames.decode

  def counting(path, reduce=1):
    calls.append(path)
    return decode(path, reduce)

  monkeypatch.setattr(clip_frames, 'decode', counting)
  res = clip_frames.process_clip(
      clip_frames.ClipTask(0, tuple(paths), 224, True, 0.2, 2))
  assert res['method'] == 'landmarks'
  assert face_align.draft_factor(np.asarray(res['transform'])) == 1
  assert sorted(calls) == sorted(paths)
  # and the stored onset is the same as from a separate decode
  ref = face_align.warp(decode(paths[0])[0], np.asarray(res['transform']), 224)
  assert np.array_equal(np.asarray(Image.open(io.BytesIO(res['pngs'][0])))[..., 0], ref)


class _CountingDetector:
  """dlib's detector, recording the size of every frame it searches."""

  def __init__(self, detector):
    self.detector, self.sizes = detector, []

  def run(self, img, upsample, threshold):
    self.sizes.append(img.shape[:2])
    return self.detector.run(img, upsample, threshold)


def _full_size_eyes(gray, detector, predictor):
  rects, scores, _ = detector.run(gray, 0, 0.0)
  b = rects[int(np.argmax(scores))]
  shape = predictor(gray, dlib.rectangle(b.left(), b.top(), b.right(), b.bottom()))
  pts = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], np.float64)
  return np.array(sorted([pts[0:2].mean(0), pts[2:4].mean(0)], key=lambda p: p[0]))


@pytest.mark.parametrize('angle,scale', [(5.0, 2.0), (-7.0, 3.5), (0.0, 1.4)])
def test_large_frames_are_searched_at_half_size(monkeypatch, angle, scale):
  """SAMM-sized frames: the face box comes from one half-size search; the eyes (landmarks at full
  size) are within 1 px of a full-size search and near the known pupils."""
  detector, predictor = face_align._dlib_models()  # pylint: disable=protected-access
  counting = _CountingDetector(detector)
  monkeypatch.setattr(face_align, '_dlib_models', lambda: (counting, predictor))
  frame, m = fake_faces.face_frame(fake_faces.SAMM_SIZE, angle, scale, (470, 300), gray=True)
  eyes = np.array(face_align.landmark_eyes(frame))
  assert counting.sizes == [(325, 480)]
  assert np.abs(eyes - _full_size_eyes(frame, detector, predictor)).max() <= 1.0
  known = fake_faces.ASTRONAUT_EYES @ m[:, :2].T + m[:, 2]
  assert np.abs(eyes - known).max() < 4 * scale


def test_face_too_small_for_the_half_size_search_is_found_at_full_size(monkeypatch):
  detector, predictor = face_align._dlib_models()  # pylint: disable=protected-access
  counting = _CountingDetector(detector)
  monkeypatch.setattr(face_align, '_dlib_models', lambda: (counting, predictor))
  frame, _ = fake_faces.face_frame(fake_faces.SAMM_SIZE, 0.0, 0.9, (470, 300), gray=True)
  eyes = face_align.landmark_eyes(frame)
  assert eyes is not None
  assert counting.sizes == [(325, 480), (650, 960)]
  np.testing.assert_allclose(eyes, _full_size_eyes(frame, detector, predictor))


def _gray_jpeg(path, hw=(651, 963), exif=None, progressive=False, seed=0):
  rng = np.random.default_rng(seed)
  face = fake_faces.face_frame(hw, 4.0, 2.2, (hw[1] // 2, hw[0] // 2), gray=True)[0]
  frame = np.clip(face + rng.normal(0, 3, face.shape), 0, 255).astype(np.uint8)
  kwargs = {'quality': 92, 'progressive': progressive}
  if exif is not None:
    kwargs['exif'] = exif
  Image.fromarray(frame).save(path, **kwargs)
  return path


@pytest.mark.parametrize('hw,progressive', [((651, 963), False), ((650, 960), True),
                                            ((97, 131), False)])
def test_grayscale_jpegs_decode_to_the_same_pixels_as_pil(tmp_path, hw, progressive):
  path = _gray_jpeg(str(tmp_path / 'f.jpg'), hw, progressive=progressive)
  with open(path, 'rb') as f:
    assert clip_frames.gray_jpeg_size(f.read()) == hw  # the OpenCV path is taken
  for r in (1, 2, 4, 8):
    assert clip_frames._decode_gray_jpeg(path, r) is not None  # pylint: disable=protected-access
    fast, got, size = clip_frames.decode(path, r)
    ref, ref_got, ref_size = clip_frames.decode_pil(path, r)
    assert (got, size) == (ref_got, ref_size) == (r, hw)
    assert fast.dtype == np.uint8 and np.array_equal(fast, ref), r


def test_truncated_grayscale_jpeg_is_still_an_error(tmp_path):
  path = _gray_jpeg(str(tmp_path / 'f.jpg'))
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) * 2 // 3])  # some OpenCV versions fill the missing part with grey
  assert clip_frames.gray_jpeg_size(data) == (651, 963)
  assert clip_frames.gray_jpeg_size(data[:len(data) * 2 // 3]) is None  # left to PIL
  for r in (1, 2):
    with pytest.raises(OSError, match='truncated'):
      clip_frames.decode(path, r)


def test_grayscale_jpeg_orientation_tag_is_ignored_as_pil_does(tmp_path):
  exif = Image.Exif()
  exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
  path = _gray_jpeg(str(tmp_path / 'f.jpg'), hw=(640, 640), exif=exif.tobytes())  # square: a
  for r in (1, 2):  # rotation would keep the size
    fast = clip_frames._decode_gray_jpeg(path, r)  # pylint: disable=protected-access
    assert fast is not None and fast[2] == (640, 640)
    assert np.array_equal(fast[0], clip_frames.decode_pil(path, r)[0])


def test_colour_jpegs_are_left_to_pil(tmp_path):
  path = str(tmp_path / 'c.jpg')
  Image.fromarray(_face(gray=False)).save(path, quality=92)
  with open(path, 'rb') as f:
    assert clip_frames.gray_jpeg_size(f.read()) is None
  a, b = clip_frames.decode(path, 2), clip_frames.decode_pil(path, 2)
  assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]


def test_pool_keeps_only_a_few_clips_ahead_of_the_writer(tmp_path, monkeypatch):
  """Workers send back PNG bytes, so the pool must not run far ahead of TFDS: at most
  ``CLIPS_AHEAD_PER_WORKER`` clips per worker are submitted and not yet taken, however slowly they
  are taken; every clip still comes back, in order."""
  submitted = []
  real = concurrent.futures.ProcessPoolExecutor

  class Counting(real):

    def submit(self, fn, *args, **kwargs):
      submitted.append(args[0].index)
      return super().submit(fn, *args, **kwargs)

  monkeypatch.setattr(concurrent.futures, 'ProcessPoolExecutor', Counting)
  path = str(tmp_path / 'f.jpg')
  Image.fromarray(np.full((40, 30, 3), 128, np.uint8)).save(path)
  tasks = [clip_frames.ClipTask(i, (path, path), 32, False, 0.2, 1) for i in range(12)]
  taken = []
  for res in pipeline.stream_clips(tasks, 2):
    taken.append(res['index'])
    time.sleep(0.05)  # a slow writer: the workers finish everything they were given meanwhile
    assert len(submitted) - len(taken) <= pipeline.CLIPS_AHEAD_PER_WORKER * 2
    assert all(isinstance(p, bytes) for p in res['pngs'])
  assert taken == list(range(12)) and submitted == list(range(12))
