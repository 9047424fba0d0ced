"""Motion magnification (docs/method.md §3): pyramid, Butterworth, EVM schedule, band-pass."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from configs import common
from mpt_jax.models import magnification as mag


def test_butterworth_matches_scipy_lfilter_with_steady_state():
  b, a = mag.butterworth_coefficients(1, 0.4, 4.0, 30.0)
  b_ref, a_ref = scipy.signal.butter(1, [0.4, 4.0], btype='bandpass', fs=30.0)
  np.testing.assert_allclose(b, b_ref / a_ref[0]); np.testing.assert_allclose(a, a_ref / a_ref[0])
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 5, 7)).astype(np.float64) + 3.0
  # Order 1 is the default; higher orders have poles nearer the unit circle, where float32
  # accumulation error grows, so they get a looser tolerance.
  for order, tol in ((1, 1e-5), (2, 1e-4), (3, 1e-3)):
    b, a = mag.butterworth_coefficients(order, 0.4, 4.0, 30.0)
    zi = scipy.signal.lfilter_zi(b, a)[:, None, None] * x[0]
    ref, _ = scipy.signal.lfilter(b, a, x, axis=0, zi=zi)
    got = np.asarray(mag.iir_filter(jnp.asarray(x, jnp.float32), b, a))
    np.testing.assert_allclose(got, ref, atol=tol)


def test_steady_state_means_constant_input_gives_zero():
  b, a = mag.butterworth_coefficients(1, 0.4, 4.0, 30.0)
  y = mag.iir_filter(jnp.full((16, 3), 0.8), b, a)
  assert float(jnp.abs(y).max()) < 1e-6


def _pyr_up_reference(img, shape):
  """docs/method.md §3's up-sampling in plain numpy: zero insertion into 2n samples, the binomial
  kernel times 2 per axis under a reflect-101 border, cropped to ``shape`` (what ``cv2.pyrUp`` computes)."""
  k = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 8.0
  out = np.asarray(img, np.float64)
  for axis, size in ((0, shape[0]), (1, shape[1])):
    n = out.shape[axis]
    up = np.zeros(out.shape[:axis] + (2 * n,) + out.shape[axis + 1:])
    idx = [slice(None)] * out.ndim
    idx[axis] = slice(0, None, 2)
    up[tuple(idx)] = out
    pad = [(0, 0)] * out.ndim
    pad[axis] = (2, 2)
    up = np.pad(up, pad, mode='reflect')
    out = sum(w * np.take(up, np.arange(i, i + 2 * n), axis=axis) for i, w in enumerate(k))
    out = np.take(out, np.arange(size), axis=axis)
  return out


@pytest.mark.parametrize('src,dst', [((16, 12), (32, 24)), ((7, 9), (14, 18)),
                                     ((7, 9), (13, 17)), ((4, 4), (7, 8)), ((28, 28), (56, 56))])
def test_pyr_up_matches_opencv_and_numpy_including_borders(src, dst):
  rng = np.random.default_rng(4)
  img = rng.random(src + (3,)).astype(np.float32)
  ours = np.asarray(mag.pyr_up(jnp.asarray(img)[None], dst))[0]
  ref = cv2.pyrUp(img, dstsize=(dst[1], dst[0]))
  assert ours.shape == ref.shape == dst + (3,)
  np.testing.assert_allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-5)  # interior
  np.testing.assert_allclose(ours, ref, atol=1e-5)  # the borders too (last row/column included)
  np.testing.assert_allclose(ours, _pyr_up_reference(img, dst), atol=1e-5)


@pytest.mark.slow
def test_pyramid_reconstruction_is_identity():
  rng = np.random.default_rng(1)
  build = jax.jit(mag.build_laplacian, static_argnums=1)  # one compilation per shape, not per op
  collapse = jax.jit(mag.collapse_laplacian)
  for h, w in ((224, 224), (37, 50), (32, 32)):
    x = jnp.asarray(rng.random((2, h, w, 3)), jnp.float32)
    levels = mag.auto_levels(h, w)
    pyr = build(x, levels)
    assert [p.shape[1:3] for p in pyr] == mag.level_shapes(h, w, levels)
    np.testing.assert_allclose(collapse(pyr), x, atol=1e-5)
    # The band-pass levels are what the pyramid's own pyrDown/pyrUp leave, computed outside
    # mpt_jax with OpenCV: a pyr_up that returns zeros (or anything else) fails here.
    img = np.asarray(x[0])
    for lvl in range(levels - 1):
      low = cv2.pyrDown(img)
      band = img - cv2.pyrUp(low, dstsize=(img.shape[1], img.shape[0]))
      np.testing.assert_allclose(np.asarray(pyr[lvl][0]), band, atol=1e-5, err_msg=f'level {lvl}')
      img = low
    np.testing.assert_allclose(np.asarray(pyr[-1][0]), img, atol=1e-5)


@pytest.mark.slow
def test_smooth_image_has_little_fine_band_energy():
  # A smooth image passes the low-pass almost unchanged, so its finest band is nearly empty.
  yy, xx = np.mgrid[0:64, 0:64] / 64.0
  img = 0.5 + 0.3 * np.sin(2 * np.pi * xx) * np.cos(np.pi * yy)
  x = jnp.asarray(np.repeat(img[None, ..., None], 3, -1), jnp.float32)
  pyr = mag.build_laplacian(x, mag.auto_levels(64, 64))
  assert float(jnp.abs(pyr[0]).max()) < 0.05 * float(jnp.abs(x).max())  # 0.8 if pyr_up gave zeros


def test_auto_levels_like_matlabpyrtools():
  assert mag.auto_levels(224, 224) == 7
  assert mag.level_shapes(224, 224, 7)[-1] == (4, 4)
  assert mag.auto_levels(32, 32) == 4


def test_pyr_down_matches_opencv_interior():
  rng = np.random.default_rng(2)
  img = rng.random((64, 48, 3)).astype(np.float32)
  ours = np.asarray(mag.pyr_down(jnp.asarray(img)[None]))[0]
  ref = cv2.pyrDown(img)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours[2:-2, 2:-2], ref[2:-2, 2:-2], atol=1e-5)
  # OpenCV's default border is reflect-101, like ours, so the whole image agrees too.
  np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_evm_schedule_pinned_values():
  np.testing.assert_allclose(mag.evm_level_alphas(224, 224, 7, 20.0, 16.0),
                             [0, 6.662, 15.324, 20, 20, 20, 0], atol=1e-3)
  np.testing.assert_allclose(mag.evm_level_alphas(224, 224, 7, 20.0, 80.0),
                             [0, 0, 1.465, 4.93, 11.859, 20, 0], atol=1e-3)
  assert list(mag.Magnifier().level_alphas.round(3)) == [0, 6.662, 15.324, 20, 20, 20, 0]


def test_uniform_amplification_is_alpha_times_bandpass():
  rng = np.random.default_rng(3)
  clips = jnp.asarray(rng.random((2, 8, 32, 32, 3)), jnp.float32)
  m = mag.Magnifier(image_size=(32, 32), amplification='uniform', alpha=20.0)
  np.testing.assert_allclose(m(clips), 20.0 * m.bandpass(clips), atol=1e-4)


def _translating_sinusoid(freq_hz, fs=30.0, t_count=16, size=64, wavelength=16.0, amp_px=0.2):
  t = np.arange(t_count) / fs
  shift = amp_px * np.sin(2 * np.pi * freq_hz * t)
  xs = np.arange(size)
  frames = [0.5 + 0.25 * np.sin(2 * np.pi * (xs[None, :] - s) / wavelength) * np.ones((size, 1))
            for s in shift]
  clip = np.stack(frames)[..., None].repeat(3, -1)
  return jnp.asarray(clip[None], jnp.float32), shift


def test_subpixel_motion_in_band_is_amplified_out_of_band_suppressed():
  m = mag.Magnifier(image_size=(64, 64), alpha=20.0, lambda_c=16.0)
  in_band, shift = _translating_sinusoid(2.0)
  out_band, _ = _translating_sinusoid(12.0)
  static = in_band[:, :1].repeat(16, axis=1)
  motion_in = m(in_band)
  motion_out = m(out_band)
  # The first-order Taylor picture: the frame change is about -shift * dI/dx; the magnified motion
  # tracks a multiple of that change, so its energy is much larger than the frames' own change.
  change_in = float(jnp.abs(in_band - in_band[:, :1]).mean())
  assert float(jnp.abs(motion_in).mean()) > 3.0 * change_in
  assert float(jnp.abs(motion_out).mean()) < 0.2 * float(jnp.abs(motion_in).mean())
  assert float(jnp.abs(m(static)).max()) < 1e-5


def test_magnified_motion_is_real_motion():
  # frames + M moves the pattern by more than the input shift (magnification, not noise).
  m = mag.Magnifier(image_size=(64, 64), alpha=10.0, lambda_c=16.0)
  clip, shift = _translating_sinusoid(2.0, amp_px=0.1)
  motion = m(clip)
  x = np.asarray(clip[0, :, 32, :, 0]); mm = np.asarray(motion[0, :, 32, :, 0])
  grad = np.gradient(x[0])
  est_in = -(x - x[0]) @ grad / (grad @ grad)      # least-squares shift of the input
  est_mag = -(x + mm - x[0]) @ grad / (grad @ grad)  # ... and of the magnified video
  k = int(np.argmax(np.abs(shift)))
  assert abs(est_mag[k]) > 3 * abs(est_in[k])
  assert np.sign(est_mag[k]) == np.sign(est_in[k])


def test_magnifier_is_jittable_and_validates():
  m = mag.Magnifier(image_size=(32, 32))
  out = jax.jit(m)(jnp.zeros((1, 4, 32, 32, 3)))
  assert out.shape == (1, 4, 32, 32, 3)
  with pytest.raises(ValueError, match='Magnifier built for'):
    m(jnp.zeros((1, 4, 16, 16, 3)))
  with pytest.raises(ValueError, match='amplification'):
    mag.Magnifier(amplification='linear')
  yiq = mag.Magnifier(image_size=(32, 32), color_space='yiq', chroma_attenuation=0.0)
  gray = jnp.asarray(np.random.default_rng(0).random((1, 8, 32, 32, 1)).repeat(3, -1), jnp.float32)
  mo = yiq(gray)  # no chroma: the motion of a gray clip stays gray
  np.testing.assert_allclose(mo[..., 0], mo[..., 1], atol=1e-4)


def test_iir_filter_continues_from_a_returned_state():
  """Filtering in two pieces, the state carried over, equals filtering at once (scipy lfilter)."""
  b, a = mag.butterworth_coefficients(1, 0.4, 4.0, 30.0)
  x = np.random.default_rng(3).normal(size=(40, 2)).astype(np.float32)
  first, state = mag.iir_filter(jnp.asarray(x[:17]), b, a, return_state=True)
  second = mag.iir_filter(jnp.asarray(x[17:]), b, a, state=state)
  want = scipy.signal.lfilter(b, a, x, axis=0, zi=scipy.signal.lfilter_zi(b, a)[:, None] * x[0])[0]
  np.testing.assert_allclose(np.concatenate([first, second]), want, rtol=1e-4, atol=1e-5)


def _old_up_axis0(x, size):
  """The pyr_up of before the border fix, along axis 0 in numpy: reflect padding on both sides."""
  xp = np.pad(x, [(1, 1)] + [(0, 0)] * (x.ndim - 1), mode='reflect')
  even = (xp[:-2] + 6 * xp[1:-1] + xp[2:]) / 8
  odd = (xp[1:-1] + xp[2:]) / 2
  out = np.empty((2 * x.shape[0],) + x.shape[1:])
  out[0::2], out[1::2] = even, odd
  return out[:size]


def test_pyr_up_reflect_border_is_the_earlier_form_and_differs_only_at_the_far_border():
  from mpt_jax.models import mpt as mpt_lib  # pylint: disable=g-import-not-at-top
  img = np.random.default_rng(3).random((7, 9, 3)).astype(np.float32)
  old = np.asarray(mag.pyr_up(jnp.asarray(img)[None], (14, 17), border='reflect'))[0]
  ref = np.moveaxis(_old_up_axis0(np.moveaxis(_old_up_axis0(img, 14), 1, 0), 17), 0, 1)
  np.testing.assert_allclose(old, ref, atol=1e-5)
  new = np.asarray(mag.pyr_up(jnp.asarray(img)[None], (14, 17)))[0]
  np.testing.assert_allclose(old[:12, :15], new[:12, :15], atol=1e-6)  # interior and left/top
  assert np.abs(old[12:] - new[12:]).max() > 1e-3 and np.abs(old[:, 15:] - new[:, 15:]).max() > 1e-3
  config = common.get_config()
  config.model.magnification.pyr_up_border = 'reflect'
  assert mpt_lib.build_magnifier(config.model).pyr_up_border == 'reflect'
  with pytest.raises(ValueError, match='pyr_up_border'):
    mag.Magnifier(pyr_up_border='zero')
