"""Dynamic image (docs/method.md §2): Bilen's coefficients, constant clips, input modalities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mpt_jax.models import dynamic_image

BILEN_T16 = [-25.4724, -10.4724, -3.9724, -0.3057, 1.9443, 3.3443, 4.1776, 4.6062, 4.7312,
            4.6201, 4.3201, 3.8655, 3.2822, 2.5899, 1.8042, 0.9375]


def test_coefficients_match_spec_and_bilen_matlab():
  c = dynamic_image.rank_pool_coefficients(16)
  np.testing.assert_allclose(c, BILEN_T16, atol=1e-4)
  assert abs(c.sum()) < 1e-9
  # The MATLAB loop of vl_nnarpooltemporal.m: fw(i) = sum((2*(i:N)-N-1) ./ (i:N)).
  for n in (2, 5, 9, 16):
    ref = [sum((2 * k - n - 1) / k for k in range(i, n + 1)) for i in range(1, n + 1)]
    np.testing.assert_allclose(dynamic_image.rank_pool_coefficients(n), ref, atol=1e-10)


def test_differs_from_off_by_one_port():
  # tcvrick's port uses (2k - N)/k, whose weights sum to N rather than 0.
  n = 16
  wrong = [sum((2 * k - n) / k for k in range(i, n + 1)) for i in range(1, n + 1)]
  assert abs(sum(wrong) - n) < 1e-9
  assert not np.allclose(dynamic_image.rank_pool_coefficients(n), wrong)


def test_constant_clip_gives_zero_and_range():
  clip = jnp.full((2, 16, 8, 8, 3), 0.37)
  di = dynamic_image.dynamic_image(clip)
  assert float(jnp.abs(di).max()) == 0.0
  rng = np.random.default_rng(0)
  di = dynamic_image.dynamic_image(jnp.asarray(rng.random((2, 16, 8, 8, 3)), jnp.float32))
  assert float(di.min()) == 0.0 and abs(float(di.max()) - 1.0) < 1e-6


def test_di_orders_time():
  # A brightening clip and its time reverse give mirrored dynamic images before normalisation.
  ramp = jnp.linspace(0, 1, 16)[None, :, None, None, None] * jnp.ones((1, 16, 4, 4, 3))
  up = dynamic_image.dynamic_image(ramp, normalise=False)
  down = dynamic_image.dynamic_image(ramp[:, ::-1], normalise=False)
  assert float(up.mean()) > 0 > float(down.mean())
  np.testing.assert_allclose(up, -down, atol=1e-5)


@pytest.mark.parametrize('modality', dynamic_image.INPUT_MODALITIES)
def test_modalities_shapes_and_range(modality):
  rng = np.random.default_rng(1)
  clips = jnp.asarray(rng.random((2, 8, 6, 6, 3)), jnp.float32)
  out = dynamic_image.rgb_input(clips, modality, jnp.array([3, 7]))
  assert out.shape == (2, 6, 6, 3)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0 + 1e-6


def test_apex_and_mesti_semantics():
  rng = np.random.default_rng(2)
  clips = jnp.asarray(rng.random((1, 8, 4, 4, 3)), jnp.float32)
  np.testing.assert_array_equal(dynamic_image.rgb_input(clips, 'apex', jnp.array([5])), clips[:, 5])
  # mesti with the apex at the last frame is the plain (normalised) dynamic image.
  np.testing.assert_allclose(dynamic_image.rgb_input(clips, 'mesti', jnp.array([7])),
                             dynamic_image.dynamic_image(clips), atol=1e-5)
  # ... and with the apex at frame 0 it is the DI of the reversed clip.
  np.testing.assert_allclose(dynamic_image.rgb_input(clips, 'mesti', jnp.array([0])),
                             dynamic_image.dynamic_image(clips[:, ::-1]), atol=1e-5)
  with pytest.raises(ValueError, match='input_modality'):
    dynamic_image.rgb_input(clips, 'flow', jnp.array([0]))


def test_weighted_sums_match_numpy_per_clip_weights():
  # The unnormalised DI, and mesti's per-clip weights (a different apex per clip), against a
  # float64 numpy sum over time.
  rng = np.random.default_rng(3)
  clips = rng.random((3, 9, 5, 7, 3)).astype(np.float32)
  c = dynamic_image.rank_pool_coefficients(9)
  np.testing.assert_allclose(dynamic_image.dynamic_image(jnp.asarray(clips), normalise=False),
                             np.einsum('t,bthwc->bhwc', c, clips.astype(np.float64)), atol=2e-5)
  apex = np.array([0, 4, 8])
  table = np.zeros((9, 9))
  for a in range(9):
    if a > 0:
      table[a, :a + 1] += dynamic_image.rank_pool_coefficients(a + 1)
    if 9 - a > 1:
      table[a, a:] += dynamic_image.rank_pool_coefficients(9 - a)[::-1]
  di = np.einsum('bt,bthwc->bhwc', table[apex], clips.astype(np.float64))
  lo = di.min(axis=(1, 2, 3), keepdims=True)
  hi = di.max(axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(dynamic_image.rgb_input(jnp.asarray(clips), 'mesti', jnp.asarray(apex)),
                             (di - lo) / (hi - lo), atol=2e-5)


@pytest.mark.parametrize('modality', ['dynamic_image', 'mesti'])
def test_frame_sum_compiles_to_one_pass_over_the_clips(modality):
  # As a product contracting T, XLA:CPU copied the whole clip array into a time-major layout first
  # (more time than the sum itself): the compiled program must have no product, transpose or copy.
  clips = jnp.zeros((4, 16, 32, 32, 3))
  hlo = jax.jit(lambda c: dynamic_image.rgb_input(c, modality, jnp.array([3, 5, 7, 9]))).lower(
      clips).compile().as_text()
  for op in (' dot(', ' transpose(', ' copy('):
    assert op not in hlo, op
