"""Temporal Gaussian tokenizer (SPEC §4)."""

import jax
import jax.numpy as jnp
import numpy as np

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
