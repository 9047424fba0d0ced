"""The face alignment (mpt_jax/face_align.py) on a real face photo placed into dataset-sized frames.

The reference eye positions of scikit-image's ``astronaut`` are hand-annotated pupil centres (read
off an 8x enlarged crop), independent of the detector under test.
"""

import cv2
import numpy as np
import pytest
import skimage.data

from mpt_jax import face_align

# Pupil centres (x, y) of skimage.data.astronaut(), image-left and image-right eye, by hand.
ASTRONAUT_EYES = np.array([[203.5, 100.5], [245.5, 103.0]])


def place(face: np.ndarray, frame_hw, angle_deg: float, scale: float, centre_xy, gray=False):
  """Warps ``face`` by a known similarity into a ``frame_hw`` frame: (frame, (2, 3) map)."""
  m = cv2.getRotationMatrix2D((256.0, 128.0), angle_deg, scale)
  m[:, 2] += np.asarray(centre_xy) - np.array([256.0, 128.0])
  h, w = frame_hw
  background = np.full((h, w, 3), 90, np.uint8)
  mask = cv2.warpAffine(np.full(face.shape[:2], 255, np.uint8), m, (w, h)) > 127
  warped = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR)
  out = np.where(mask[..., None], warped, background)
  if gray:
    out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
  return out, m


def eyes_after(transform, known):
  """Where the reference eyes land in the aligned frame."""
  pts = np.c_[ASTRONAUT_EYES, np.ones(2)] @ face_align.compose(transform, known).T
  return pts


@pytest.mark.parametrize('frame_hw,angle,scale,centre,gray', [
    ((650, 960), 12.0, 1.7, (430, 300), True),    # SAMM: 960 x 650 grayscale
    ((720, 1280), -9.0, 2.3, (700, 330), False),  # CAS(ME)^3: 1280 x 720 colour
])
def test_real_face_comes_back_level_at_target_scale(frame_hw, angle, scale, centre, gray):
  frame, known = place(skimage.data.astronaut(), frame_hw, angle, scale, centre, gray)
  size = 224
  aligned, info = face_align.align_clip([frame, frame], size)
  assert info.method == 'landmarks' and info.frame == 0
  assert aligned.shape == (2, size, size, 3)
  left, right = eyes_after(info.transform, known)
  tilt = np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))
  assert abs(tilt) < 2.0, tilt
  dist = np.hypot(*(right - left))
  target = face_align.target_eye_distance(size)
  assert abs(dist / target - 1) < 0.05, (dist, target)
  mid = (left + right) / 2
  assert np.allclose(mid, face_align.target_eye_midpoint(size), atol=0.05 * target)


def test_similarity_puts_given_eyes_exactly():
  a = face_align.similarity_from_eyes((100.0, 200.0), (180.0, 260.0), 224, margin=0.3)
  pts = np.c_[[[100.0, 200.0], [180.0, 260.0]], np.ones(2)] @ a.T
  assert np.isclose(pts[0, 1], pts[1, 1])
  assert np.isclose(pts[1, 0] - pts[0, 0], face_align.target_eye_distance(224, 0.3))
  # A similarity: equal singular values (no aspect distortion).
  sv = np.linalg.svd(a[:, :2], compute_uv=False)
  assert np.isclose(sv[0], sv[1])


def test_repeated_frame_has_exactly_zero_motion():
  frame, _ = place(skimage.data.astronaut(), (650, 960), 5.0, 1.8, (480, 320), gray=True)
  aligned, info = face_align.align_clip([frame] * 6, 224)
  assert info.method == 'landmarks'
  assert np.array_equal(aligned.max(0), aligned.min(0))


def test_every_frame_uses_the_one_transform_of_the_clip():
  rng = np.random.default_rng(0)
  base, _ = place(skimage.data.astronaut(), (650, 960), 5.0, 1.8, (480, 320), gray=True)
  frames = [np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
            for _ in range(4)]
  aligned, info = face_align.align_clip(frames, 160)
  for f, a in zip(frames, aligned):
    expect = face_align.to_rgb(face_align.warp(f, info.transform, 160))
    assert np.array_equal(a, expect)


def test_face_found_only_on_a_later_frame():
  face, _ = place(skimage.data.astronaut(), (650, 960), 0.0, 1.8, (480, 320), gray=True)
  blank = np.full_like(face, 90)
  aligned, info = face_align.align_clip([blank, blank, face, blank], 224)
  assert info.method == 'landmarks' and info.frame == 2
  assert info.tried == (0, 1, 2, 3)


def test_apex_is_the_last_frame_tried():
  face, _ = place(skimage.data.astronaut(), (650, 960), 0.0, 1.8, (480, 320), gray=True)
  blank = np.full_like(face, 90)
  frames = [blank] * 9 + [face] + [blank] * 3
  _, info = face_align.align_clip(frames, 224, apex_index=9)
  assert info.tried == (0, 1, 2, 3, 4, 9)
  assert info.method == 'landmarks' and info.frame == 9


def test_haar_fallback_is_level_and_close_to_scale():
  frame, known = place(skimage.data.astronaut(), (650, 960), 0.0, 1.7, (430, 300), gray=True)
  _, info = face_align.align_clip([frame], 224, methods=('haar',))
  assert info.method == 'haar'
  left, right = eyes_after(info.transform, known)
  target = face_align.target_eye_distance(224)
  assert abs(np.hypot(*(right - left)) / target - 1) < 0.15


def test_no_face_falls_back_to_centre_crop_and_says_so():
  yy, xx = np.mgrid[0:650, 0:960]
  frame = (128 + 60 * np.sin(xx / 37.0) * np.cos(yy / 23.0) + xx / 20.0).astype(np.uint8)
  frames = np.stack([frame] * 3)  # a smooth pattern, no face in it
  aligned, info = face_align.align_clip(frames, 64)
  assert info.method == 'centre' and info.frame == -1 and info.eyes is None
  # The centred 650 x 650 square, no aspect distortion: compare with OpenCV's own area resize.
  ref = cv2.resize(frames[0][:, 155:805], (64, 64), interpolation=cv2.INTER_AREA)
  assert np.abs(aligned[0, ..., 0].astype(int) - ref).mean() < 1.0


def test_draft_decoding_matches_an_exact_reduction(tmp_path):
  """JPEG draft mode (decoded at 1/r inside the decoder) equals an exact r x r area reduction of the
  full decode to well under one grey level, and lands on the same pixel grid (no shift)."""
  from PIL import Image
  frame, _ = place(skimage.data.astronaut(), (720, 1280), 3.0, 1.2, (640, 360))
  path = str(tmp_path / 'f.jpg')
  Image.fromarray(frame).save(path, quality=95)
  full = np.asarray(Image.open(path).convert('RGB'))
  _, info = face_align.align_clip([full], 64)
  r = face_align.draft_factor(info.transform)
  assert r == 2
  with Image.open(path) as im:
    im.draft('RGB', (im.size[0] // r, im.size[1] // r))
    reduced = np.asarray(im.convert('RGB'))
  assert reduced.shape[:2] == (720 // r, 1280 // r)
  exact = cv2.resize(full, (1280 // r, 720 // r), interpolation=cv2.INTER_AREA)
  a = face_align.warp(exact, info.transform, 64, reduced_by=r).astype(float)
  b = face_align.warp(reduced, info.transform, 64, reduced_by=r).astype(float)
  assert np.abs(a - b).mean() < 0.5
  assert abs((a - b).mean()) < 0.25  # libjpeg's scaled IDCT rounds about 0.15 level darker
  # and the whole aligned face is within about one grey level of the full-resolution path
  c = face_align.warp(full, info.transform, 64).astype(float)
  assert np.abs(b - c).mean() < 1.5


def test_predict_align_face_uses_the_preparation_aligner():
  """``predict --align_face``: the clip is aligned exactly as the preparation aligns it."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from mpt_jax import input_pipeline, predict  # pylint: disable=g-import-not-at-top
  frame, _ = place(skimage.data.astronaut(), (650, 960), 8.0, 1.5, (500, 320), gray=False)
  frames = [frame] * 4
  config = ml_collections.ConfigDict({'model': {'num_frames': 4, 'image_size': 64}})
  clip, how = predict.preprocess(frames, config, 224, align_face=True)
  assert how == 'landmarks@0'
  aligned, _ = face_align.align_clip(frames, 224)
  np.testing.assert_array_equal(clip, input_pipeline.prepare_clip(list(aligned), 4, 64))
  plain, how = predict.preprocess(frames, config, 224)
  assert how == '' and not np.array_equal(plain, clip)
  with pytest.raises(predict.PredictError, match='exclude each other'):
    predict.preprocess(frames, config, 224, align_face=True, crop_face=True)


def _whole_frame_warp(frame, transform, size):
  """The antialiased warp resampling the WHOLE frame (face_align before 2.1.0), as reference."""
  s = face_align.scale_of(transform)
  h, w = frame.shape[:2]
  nw, nh = int(round(w * s)), int(round(h * s))
  small = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA)
  fx, fy = w / nw, h / nh
  a = face_align.compose(transform, np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]]))
  return cv2.warpAffine(small, a, (size, size), flags=cv2.INTER_LINEAR,
                        borderMode=cv2.BORDER_REPLICATE)


@pytest.mark.parametrize('eyes', [
    ((400.0, 300.0), (520.0, 310.0)),  # face inside the frame: only its neighbourhood is resampled
    ((40.0, 60.0), (170.0, 35.0)),     # face at the frame's corner: the crop ends at the edge
    ((300.0, 300.0), (420.0, 300.0)),  # level eyes, another scale
])
def test_area_crop_resamples_as_the_whole_frame(eyes):
  """Resampling only the part of the frame the output reads gives the whole-frame result to a
  fraction of a grey level (the cells are the same to a fraction of a pixel), edges included."""
  rng = np.random.default_rng(3)
  frame, _ = place(skimage.data.astronaut(), (650, 960), 5.0, 3.0, (480, 320), gray=True)
  frame = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)
  transform = face_align.similarity_from_eyes(eyes[0], eyes[1], 224)
  s = face_align.scale_of(transform)
  assert 0.5 < s < 0.95  # the antialiasing path
  crop, _ = face_align.area_crop(frame, transform, s, 224)
  assert crop.size < 0.5 * frame.size * s ** 2
  got = face_align.warp(frame, transform, 224).astype(int)
  ref = _whole_frame_warp(frame, transform, 224).astype(int)
  d = np.abs(got - ref)
  assert d.mean() < 0.3 and d.max() <= 8, (d.mean(), d.max())
