"""Temporal Gaussian tokenization of the motion sequence (SPEC §4, paper eqs. 8-12).

Per frame ``f_t = mean_xy(GELU(Conv16x16/16(M_t; 3 -> C)))``. From the concatenation ``F`` of all
frames' features two small heads give, for every prompt k, a centre ``mu_k = (T-1) sigmoid(.)`` (bounded
to the clip) and a width ``sigma_k = softplus(.) + 0.5`` (at least half a frame). The Gaussian
``w_k(t) = exp(-(t - mu_k)^2 / (2 sigma_k^2))`` is normalised over t, pools the frame features, and a
projection ``W_o`` lifts the pooled feature to a D-dim motion prompt token. These bounds and the
normalisation are our choices (the paper does not give them); they are tested explicitly.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp


def gaussian_weights(mu: jnp.ndarray, sigma: jnp.ndarray, num_frames: int) -> jnp.ndarray:
  """(B, K) centres and widths -> (B, K, T) Gaussian weights normalised over T."""
  t = jnp.arange(num_frames, dtype=mu.dtype)
  logits = -jnp.square(t[None, None, :] - mu[..., None]) / (2.0 * jnp.square(sigma[..., None]))
  return jax.nn.softmax(logits, axis=-1)  # == exp(.) / sum_t exp(.), numerically safe


class GaussianTokenizer(nn.Module):
  """Turns a motion sequence into ``num_tokens`` prompt tokens.

  Attributes:
    num_tokens: K, the number of motion prompt tokens.
    hidden_size: D, the width of the backbone tokens.
    feature_dim: C, the channels of the per-frame conv.
    patch_size: the conv's kernel size and stride.
    min_sigma: lower bound of the Gaussian widths (in frames).
  """
  num_tokens: int = 5
  hidden_size: int = 768
  feature_dim: int = 64
  patch_size: int = 16
  min_sigma: float = 0.5

  @nn.compact
  def __call__(self, motion: jnp.ndarray) -> Tuple[jnp.ndarray, dict]:
    """Tokenizes (B, T, H, W, 3) motion.

    Returns:
      tokens: (B, K, D).
      aux: dict with ``mu`` (B, K), ``sigma`` (B, K) and ``weights`` (B, K, T) for inspection.
    """
    b, t_count, h, w, c = motion.shape
    x = motion.reshape(b * t_count, h, w, c)
    x = nn.Conv(self.feature_dim, (self.patch_size, self.patch_size),
                strides=(self.patch_size, self.patch_size), padding='VALID', name='frame_conv')(x)
    feats = jnp.mean(nn.gelu(x, approximate=True), axis=(1, 2)).reshape(b, t_count, -1)  # f_t
    flat = feats.reshape(b, t_count * self.feature_dim)  # F
    mu = (t_count - 1) * nn.sigmoid(nn.Dense(self.num_tokens, name='mu')(flat))
    sigma = nn.softplus(nn.Dense(self.num_tokens, name='sigma')(flat)) + self.min_sigma
    weights = gaussian_weights(mu, sigma, t_count)
    pooled = jnp.einsum('bkt,btc->bkc', weights, feats)
    tokens = nn.Dense(self.hidden_size, name='out')(pooled)
    return tokens, {'mu': mu, 'sigma': sigma, 'weights': weights}
