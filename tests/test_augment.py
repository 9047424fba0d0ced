"""Per-clip augmentation: identity, flips, one transform for all frames, rotation vs scipy."""

import jax.numpy as jnp
import numpy as np
import scipy.ndimage

from mpt_jax import augment
from mpt_jax import input_pipeline


def _clips(b=3, t=4, size=24, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((b, t, size, size, 3)), jnp.float32)


def test_identity_and_flip():
  clips = _clips()
  ident = np.tile(np.array([[0, 0, 1, 0, 0]], np.float32), (3, 1))
  np.testing.assert_allclose(augment.apply(clips, jnp.asarray(ident), True), clips, atol=1e-6)
  flip = ident.copy()
  flip[1, 0] = 1
  out = augment.apply(clips, jnp.asarray(flip), False)
  np.testing.assert_array_equal(out[1], clips[1, :, :, ::-1])
  np.testing.assert_array_equal(out[0], clips[0])


def test_one_transform_for_every_frame_and_rotation_matches_scipy():
  frame = np.random.default_rng(1).random((24, 24, 3)).astype(np.float32)
  clip = jnp.asarray(np.stack([frame] * 4))[None]
  params = jnp.asarray([[0, np.deg2rad(10.0), 1.0, 0, 0]], jnp.float32)
  out = np.asarray(augment.apply(clip, params, True))[0]
  for t in range(1, 4):  # identical frames stay identical: no motion is added
    np.testing.assert_array_equal(out[t], out[0])
  ref = scipy.ndimage.rotate(frame, 10.0, axes=(0, 1), reshape=False, order=1, mode='nearest')
  np.testing.assert_allclose(out[0][5:-5, 5:-5], ref[5:-5, 5:-5], atol=1e-4)


def test_crop_zooms_in_and_draws_are_deterministic():
  ramp = np.tile(np.linspace(0, 1, 32, dtype=np.float32)[None, :, None], (32, 1, 3))
  clip = jnp.asarray(ramp)[None, None]
  out = np.asarray(augment.apply(clip, jnp.asarray([[0, 0, 0.5, 0, 0]], jnp.float32), True))
  # Half the side around the centre: the ramp spans about half its range.
  assert 0.45 < out[0, 0, 16, -1, 0] - out[0, 0, 16, 0, 0] < 0.55
  a = list(input_pipeline.epoch_batches(np.arange(10), 4, 2, 7, True, max_rotation_deg=5,
                                        min_crop_scale=0.8))
  b = list(input_pipeline.epoch_batches(np.arange(10), 4, 2, 7, True, max_rotation_deg=5,
                                        min_crop_scale=0.8))
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x.aug, y.aug)
    np.testing.assert_array_equal(x.idx, y.idx)
  aug = np.concatenate([x.aug.reshape(-1, 5)[x.mask.reshape(-1) > 0] for x in a])
  assert np.abs(np.rad2deg(aug[:, 1])).max() <= 5 and aug[:, 2].min() >= np.sqrt(0.8) - 1e-6
  assert (np.abs(aug[:, 3]) <= (1 - aug[:, 2]) / 2 + 1e-6).all()
  last = a[-1]  # 10 clips in batches of 4: the last batch has 2 padded slots
  assert last.mask.sum() == 2 and (last.aug.reshape(-1, 5)[2:] == [0, 0, 1, 0, 0]).all()
