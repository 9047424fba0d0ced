"""Temporal Gaussian tokenizer (docs/method.md §4)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax.models import tokenizer


def test_gaussian_weights_normalised_and_centred():
  mu = jnp.array([[0.0, 7.5, 15.0]])
  sigma = jnp.array([[0.5, 2.0, 1.0]])
  w = tokenizer.gaussian_weights(mu, sigma, 16)
  np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
  assert int(jnp.argmax(w[0, 0])) == 0 and int(jnp.argmax(w[0, 2])) == 15
  t = np.arange(16)
  ref = np.exp(-(t - 7.5) ** 2 / (2 * 2.0 ** 2)); ref /= ref.sum()
  np.testing.assert_allclose(w[0, 1], ref, atol=1e-6)


def test_tokenizer_bounds_and_shapes():
  tok = tokenizer.GaussianTokenizer(num_tokens=5, hidden_size=24, feature_dim=8, patch_size=8)
  motion = jnp.asarray(np.random.default_rng(0).normal(size=(3, 8, 32, 32, 3)) * 10, jnp.float32)
  params = tok.init(jax.random.PRNGKey(0), motion)
  tokens, aux = tok.apply(params, motion)
  assert tokens.shape == (3, 5, 24)
  assert aux['weights'].shape == (3, 5, 8)
  np.testing.assert_allclose(aux['weights'].sum(-1), 1.0, atol=1e-5)
  assert float(aux['mu'].min()) >= 0.0 and float(aux['mu'].max()) <= 7.0
  assert float(aux['sigma'].min()) >= 0.5
  # Parameter count of the default (C = 64, 16x16 conv, T = 16, K = 5, D = 768) tokenizer.
  full = tokenizer.GaussianTokenizer()
  shapes = jax.eval_shape(full.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 224, 224, 3)))
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  assert n == (16 * 16 * 3 * 64 + 64) + 2 * (16 * 64 * 5 + 5) + (64 * 768 + 768) == 109_386


# ---------------------------------------------------------------------------------------------
# docs/method.md §4 written out in plain numpy, on the Flax parameters.

def _gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _numpy_tokenizer(params, motion, patch, min_sigma=0.5, cells=None):
  """``p_k = W_o (sum_t w_k(t) f_t) + b_o`` as docs/method.md §4 writes it, loops and all.

  ``cells``: None (f_t is the mean over the frame) or a list of (patch rows, patch columns) cells:
  f_t is then the concatenation of the means over each cell, in the order given.
  """
  p = {k: {n: np.asarray(v, np.float64) for n, v in d.items()} for k, d in params.items()}
  motion = np.asarray(motion, np.float64)
  b, t_count, h, w, _ = motion.shape
  kernel, bias = p['frame_conv']['kernel'], p['frame_conv']['bias']  # (p, p, 3, C), (C,)
  c = kernel.shape[-1]
  feats = np.zeros((b, t_count, c * (len(cells) if cells else 1)))
  for i in range(b):
    for t in range(t_count):
      acts = {}
      for y in range(0, h - patch + 1, patch):
        for x in range(0, w - patch + 1, patch):
          window = motion[i, t, y:y + patch, x:x + patch]  # (p, p, 3)
          acts[y // patch, x // patch] = _gelu_tanh(np.einsum('yxi,yxio->o', window, kernel) + bias)
      if cells is None:
        feats[i, t] = np.mean(list(acts.values()), axis=0)  # f_t
      else:
        feats[i, t] = np.concatenate([np.mean([acts[r, q] for r in rows for q in cols], axis=0)
                                      for rows, cols in cells])
  flat = feats.reshape(b, -1)  # F = [f_1 .. f_T]
  mu = (t_count - 1) / (1.0 + np.exp(-(flat @ p['mu']['kernel'] + p['mu']['bias'])))
  sigma = np.log1p(np.exp(flat @ p['sigma']['kernel'] + p['sigma']['bias'])) + min_sigma
  t = np.arange(t_count)
  wk = np.exp(-(t[None, None] - mu[..., None]) ** 2 / (2.0 * sigma[..., None] ** 2))
  wk /= wk.sum(-1, keepdims=True)
  pooled = np.einsum('bkt,btc->bkc', wk, feats)
  tokens = pooled @ p['out']['kernel'] + p['out']['bias']
  return tokens, mu, sigma, wk


def test_tokenizer_matches_numpy_spec():
  tok = tokenizer.GaussianTokenizer(num_tokens=3, hidden_size=5, feature_dim=4, patch_size=8)
  rng = np.random.default_rng(3)
  motion = jnp.asarray(rng.normal(size=(2, 6, 16, 24, 3)), jnp.float32)
  params = tok.init(jax.random.PRNGKey(1), motion)['params']
  # Non-trivial biases everywhere (the conv and output biases start at zero).
  params = jax.tree.map(lambda v: v + 0.1 * jnp.asarray(rng.normal(size=v.shape), v.dtype), params)
  tokens, aux = tok.apply({'params': params}, motion)
  ref_tokens, ref_mu, ref_sigma, ref_w = _numpy_tokenizer(params, motion, patch=8)
  np.testing.assert_allclose(aux['mu'], ref_mu, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(aux['sigma'], ref_sigma, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(aux['weights'], ref_w, atol=1e-5)
  np.testing.assert_allclose(tokens, ref_tokens, rtol=1e-4, atol=1e-5)


def test_grid_tokenizer_pools_each_cell_as_numpy_does():
  # 32 x 24 px with 8 px patches: 4 x 3 patches; a 2 x 2 grid's bands are rows {0, 1}, {2, 3} and
  # columns {0, 1}, {2} (the first bands take the extra patch), cells in row-major order.
  tok = tokenizer.GaussianTokenizer(num_tokens=2, hidden_size=5, feature_dim=3, patch_size=8,
                                    grid=2)
  rng = np.random.default_rng(4)
  motion = jnp.asarray(rng.normal(size=(2, 5, 32, 24, 3)), jnp.float32)
  params = tok.init(jax.random.PRNGKey(2), motion)['params']
  params = jax.tree.map(lambda v: v + 0.1 * jnp.asarray(rng.normal(size=v.shape), v.dtype), params)
  assert params['mu']['kernel'].shape == (5 * 3 * 4, 2) and params['out']['kernel'].shape == (12, 5)
  tokens, aux = tok.apply({'params': params}, motion)
  cells = [((0, 1), (0, 1)), ((0, 1), (2,)), ((2, 3), (0, 1)), ((2, 3), (2,))]
  ref_tokens, ref_mu, _, _ = _numpy_tokenizer(params, motion, patch=8, cells=cells)
  np.testing.assert_allclose(aux['mu'], ref_mu, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(tokens, ref_tokens, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match='tokenizer grid 5 must lie in 1..4'):
    tokenizer.cell_means(4, 5)


# ---------------------------------------------------------------------------------------------
# Symmetry breaking at initialisation (docs/method.md §4).

def _neighbour_gaps(mu):
  s = np.sort(np.asarray(mu), axis=-1)
  return np.diff(s, axis=-1)


@pytest.mark.parametrize('t_count,k', [(16, 5), (16, 1), (16, 3), (8, 5), (16, 10)])
def test_initial_centres_spread_and_tokens_differ(t_count, k):
  tok = tokenizer.GaussianTokenizer(num_tokens=k, hidden_size=12, feature_dim=8, patch_size=8,
                                    centre_init='spread')
  rng = np.random.default_rng(0)
  zero = jnp.zeros((2, t_count, 32, 32, 3), jnp.float32)
  # Magnified motion of the synthetic clips has a std of about 0.1; this is three times that.
  noise = jnp.asarray(0.3 * rng.normal(size=(2, t_count, 32, 32, 3)), jnp.float32)
  np.testing.assert_allclose(tokenizer.initial_centres(t_count, k),
                             (t_count - 1) * (np.arange(1, k + 1) - 0.5) / k)
  for seed in range(3):
    params = tok.init(jax.random.PRNGKey(seed), zero)
    # Zero motion: exactly the spread centres and the width T / (2K).
    _, aux = tok.apply(params, zero)
    np.testing.assert_allclose(aux['mu'], np.broadcast_to(
        tokenizer.initial_centres(t_count, k), (2, k)), atol=1e-4)
    np.testing.assert_allclose(aux['sigma'], tokenizer.initial_width(t_count, k), atol=1e-4)
    assert abs(tokenizer.initial_width(t_count, k) - max(t_count / (2 * k), 0.55)) < 1e-9
    # Random motion: neighbours stay at least half the initial spacing apart, and the K tokens
    # (the Gaussians pool different frames) are K different tokens.
    tokens, aux = tok.apply(params, noise)
    if k > 1:
      assert _neighbour_gaps(aux['mu']).min() >= (t_count - 1) / (2 * k), np.asarray(aux['mu'])
      tokens = np.asarray(tokens)
      for i in range(k):
        for j in range(i + 1, k):
          diff = np.abs(tokens[:, i] - tokens[:, j]).max()
          assert diff > 1e-3 * np.abs(tokens).max(), (i, j, diff)


@pytest.mark.slow
def test_centres_stay_distinct_after_training_on_synthetic_clips():
  """A short MPT training run (tiny ViT, 32 px, T = 16) on clips of the built-in synthetic dataset,
  from the spread start: its centres stay more than a frame apart. (From the middle start, the
  default, they stay within a fraction of a frame of each other; docs/method.md §10.)"""
  from configs import common  # pylint: disable=g-import-not-at-top
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from mpt_jax import partition  # pylint: disable=g-import-not-at-top
  from mpt_jax.models import mpt  # pylint: disable=g-import-not-at-top
  from tfds_builders import synthetic  # pylint: disable=g-import-not-at-top
  config = common.apply_smoke(common.get_config())
  config.model.num_frames = 16
  config.model.tokenizer_init = 'spread'
  cfg = synthetic.SyntheticConfig(name='t', min_frames=12, max_frames=20)
  clips, labels = [], []
  for subject in range(2):
    for c, emotion in enumerate(synthetic.CLASSES):
      for i in range(2):
        frames = synthetic.make_clip(subject, emotion, i, cfg)[0]
        clips.append(input_pipeline.prepare_clip(frames, 16, 32))
        labels.append(c)
  clips = jnp.asarray(np.stack(clips), jnp.float32)
  labels = jnp.asarray(labels)
  model = mpt.build_model(config.model, 5)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), clips[:1])['params']
  tx = partition.make_optimizer(config.train, params, 'mpt', steps_per_epoch=1)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({'params': p}, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  order = np.random.default_rng(0).permutation(len(clips))
  losses = []
  for s in range(40):
    idx = order[(s * 10) % len(clips):][:10]
    params, opt_state, loss = step(params, opt_state, clips[idx], labels[idx])
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  # The tokenizer's centres (the apex is not read by the motion branch).
  aux = mpt.motion_inputs(model, params, clips, jnp.zeros(len(clips), jnp.int32))
  mu = np.asarray(aux['mu'])  # (clips, K)
  gaps = np.abs(mu[:, :, None] - mu[:, None, :]) + np.eye(mu.shape[1]) * 1e9
  assert gaps.min() > 1.0, mu.round(2)


def test_middle_init_is_the_symmetric_start_for_comparisons():
  tok = tokenizer.GaussianTokenizer(num_tokens=5, hidden_size=12, feature_dim=8, patch_size=8,
                                    centre_init='middle')
  zero = jnp.zeros((1, 16, 32, 32, 3), jnp.float32)
  tokens, aux = tok.apply(tok.init(jax.random.PRNGKey(0), zero), zero)
  np.testing.assert_allclose(aux['mu'], 7.5, atol=1e-5)  # every centre at the middle
  np.testing.assert_allclose(tokens, np.broadcast_to(tokens[:, :1], tokens.shape), atol=1e-6)
  with pytest.raises(ValueError, match='spread'):
    tokenizer.GaussianTokenizer(centre_init='uniform').init(jax.random.PRNGKey(0), zero)


@pytest.mark.parametrize('init, centres, width', [
    ('spread', [1.5, 4.5, 7.5, 10.5, 13.5], 1.6),  # (T-1)(k-0.5)/K and T/(2K), T = 16, K = 5
    ('middle', [7.5] * 5, 0.5 + np.log(2.0)),  # zero biases: sigmoid(0), softplus(0) + 0.5
    ('spread_narrow', [1.5, 4.5, 7.5, 10.5, 13.5], 0.5 + np.log(2.0)),
    ('middle_half', [7.5] * 5, 1.6),
    ('spread_full', [1.5, 4.5, 7.5, 10.5, 13.5], 3.2),  # T/K
])
def test_each_start_puts_centres_and_widths_where_its_name_says(init, centres, width):
  """On an input the heads' weights ignore (zeros), the centres and widths are the biases' values,
  written out by hand from the formulas, not from the tokenizer's helpers."""
  tok = tokenizer.GaussianTokenizer(num_tokens=5, hidden_size=12, feature_dim=8, patch_size=8,
                                    centre_init=init)
  zero = jnp.zeros((1, 16, 32, 32, 3), jnp.float32)
  _, aux = tok.apply(tok.init(jax.random.PRNGKey(0), zero), zero)
  np.testing.assert_allclose(aux['mu'][0], centres, atol=1e-4)
  np.testing.assert_allclose(aux['sigma'][0], width, atol=1e-4)


@pytest.mark.parametrize('size', [(32, 24), (37, 29)])  # 37 x 29: VALID drops the remainder
def test_patch_conv_is_flax_strided_conv(size):
  """The tokenizer's frame convolution (patch rows times a matrix) against ``nn.Conv``: the same
  parameters from the same key, the same outputs and gradients."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (3,) + size + (3,))
  ours = tokenizer.PatchConv(6, 8)
  ref = nn.Conv(6, (8, 8), strides=(8, 8), padding='VALID')
  params = ours.init(jax.random.PRNGKey(1), x)
  ref_params = ref.init(jax.random.PRNGKey(1), x)
  jax.tree.map(np.testing.assert_array_equal, params, ref_params)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                        params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=1e-5, atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))  # pylint: disable=unnecessary-lambda-assignment
  got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  want = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
