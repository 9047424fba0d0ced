"""Grad-CAM finds the one moving region; the figure helpers on small synthetic inputs."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax import figures
from mpt_jax import gradcam
from mpt_jax.models import mpt
from tests import helpers

SIZE, FRAMES, PATCH = 32, 8, 8
GRID = SIZE // PATCH  # 4x4 patches; each moving square lives in one 2x2-patch quadrant


def _moving_square_clips(n, seed):
  """Static random texture; one 8x8 bright square inside a random quadrant moves right (class 0)
  or down (class 1). Returns clips, labels and the quadrant (0..3) of each clip."""
  rng = np.random.default_rng(seed)
  clips = np.zeros((n, FRAMES, SIZE, SIZE, 3), np.float32)
  labels = rng.integers(0, 2, n)
  quads = rng.integers(0, 4, n)
  for i in range(n):
    bg = rng.random((SIZE, SIZE, 3)) * 0.3
    qy, qx = divmod(int(quads[i]), 2)
    for t in range(FRAMES):
      f = bg.copy()
      step = t * 8 // (FRAMES - 1)  # 0..8 px across the clip, staying inside the 16 px quadrant
      y0, x0 = qy * 16 + (step if labels[i] else 0), qx * 16 + (0 if labels[i] else step)
      f[y0:y0 + 8, x0:x0 + 8] = 0.95
      clips[i, t] = f
  return clips, labels, quads


def _quadrant_of_peak(cam):
  y, x = np.unravel_index(np.argmax(cam), cam.shape)
  return (y // (GRID // 2)) * 2 + x // (GRID // 2)


@pytest.mark.slow
def test_gradcam_peak_is_on_the_moving_region():
  config = helpers.tiny_config(prompt_type='none', adapter_type='none',
                               input_modality='dynamic_image', training_strategy='scratch')
  model = mpt.build_model(config.model, 2)
  x_train, y_train, _ = _moving_square_clips(64, seed=0)
  x_test, y_test, q_test = _moving_square_clips(24, seed=1)
  params = model.init(jax.random.PRNGKey(0), jnp.asarray(x_train[:1]))['params']
  tx = optax.adam(1e-3)
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, x, y):
    def loss(p):
      logits = model.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    g = jax.grad(loss)(params)
    upd, opt = tx.update(g, opt, params)
    return optax.apply_updates(params, upd), opt

  rng = np.random.default_rng(0)
  for _ in range(150):
    b = rng.choice(len(x_train), 16, replace=False)
    params, opt = step(params, opt, jnp.asarray(x_train[b]), jnp.asarray(y_train[b]))
  acc = float(np.mean(np.asarray(model.apply({'params': params}, jnp.asarray(x_test))).argmax(-1)
                      == y_test))
  assert acc >= 0.8  # the model has learnt the motion direction
  cams = gradcam.gradcam(model, params, x_test, class_index=y_test)  # default map: grad_norm
  assert cams.shape == (len(x_test), GRID, GRID)
  hits = np.mean([_quadrant_of_peak(c) == q for c, q in zip(cams, q_test)])
  # Chance is 1/4 (the peak falls in one of four quadrants).
  assert hits >= 0.6, (hits, acc)
  # Classic channel-weighted Grad-CAM runs on the same tokens (it does not localise here).
  assert gradcam.gradcam(model, params, x_test[:2], method='gradcam').shape == (2, GRID, GRID)


def test_upsample_and_tsne_shapes():
  cam = np.zeros((4, 4), np.float32)
  cam[1, 2] = 1.0
  up = gradcam.upsample(cam, 32)
  assert up.shape == (32, 32) and up.max() == 1.0
  assert np.unravel_index(np.argmax(up), up.shape)[0] // 8 == 1
  feats = np.concatenate([np.random.default_rng(0).normal(0, 1, (10, 8)),
                          np.random.default_rng(1).normal(8, 1, (10, 8))])
  emb = figures.tsne_embed(feats)
  assert emb.shape == (20, 2)
  # Two well separated clusters stay separated (centroid gap larger than either spread).
  a, b = emb[:10], emb[10:]
  assert np.linalg.norm(a.mean(0) - b.mean(0)) > 2 * max(a.std(0).max(), b.std(0).max())
