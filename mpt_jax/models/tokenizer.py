"""Temporal Gaussian tokenization of the motion sequence (docs/method.md §4, paper eqs. 8-12).

Per frame ``f_t = mean_xy(GELU(Conv16x16/16(M_t; 3 -> C)))``. From the concatenation ``F`` of all
frames' features two small heads give, for every prompt k, a centre ``mu_k = (T-1) sigmoid(.)`` (bounded
to the clip) and a width ``sigma_k = softplus(.) + 0.5`` (at least half a frame). The Gaussian
``w_k(t) = exp(-(t - mu_k)^2 / (2 sigma_k^2))`` is normalised over t, pools the frame features, and a
projection ``W_o`` lifts the pooled feature to a D-dim motion prompt token. These bounds and the
normalisation are our choices (the paper does not give them); they are tested explicitly.

The start of the centre and width heads (docs/method.md §4 and §10): by default (``middle``) their
biases are zero, so every centre starts at the clip's middle with width ``softplus(0) + 0.5`` ~
1.19 frames; only the weight matrices (default initialisation) move the centres with the input.
``spread`` starts the centre biases at ``logit((k - 0.5) / K)``, so that ``mu_k = (T-1)(k - 0.5)/K``
(evenly spread), and the width biases at ``softplus^-1(T/(2K) - 0.5)``, so that
``sigma_k = T/(2K)``. The spread start keeps the K centres apart during training; the middle start
keeps them within a fraction of a frame of each other, yet trains markedly better on the demo (the
study in docs/method.md §10), which is why it is the default. :data:`INITS` also holds the mixed
starts (spread centres with the narrow width, middle centres with ``T/(2K)``, spread centres with
``T/K``) that tell the centres' effect from the width's.
"""

from typing import Any, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def gaussian_weights(mu: jnp.ndarray, sigma: jnp.ndarray, num_frames: int) -> jnp.ndarray:
  """(B, K) centres and widths -> (B, K, T) Gaussian weights normalised over T."""
  t = jnp.arange(num_frames, dtype=mu.dtype)
  logits = -jnp.square(t[None, None, :] - mu[..., None]) / (2.0 * jnp.square(sigma[..., None]))
  return jax.nn.softmax(logits, axis=-1)  # == exp(.) / sum_t exp(.), numerically safe


def initial_centres(num_frames: int, num_tokens: int) -> np.ndarray:
  """The K evenly spread starting centres ``(T-1)(k - 0.5)/K``, k = 1..K (docs/method.md §4)."""
  return (num_frames - 1) * (np.arange(1, num_tokens + 1) - 0.5) / num_tokens


# The starts of the centre and width heads: name -> (centres, width). Centres: ``spread``
# ((T-1)(k-0.5)/K) or ``middle`` (zero bias: (T-1)/2). Width: ``half`` (T/(2K)), ``full`` (T/K) or
# ``narrow`` (zero bias: softplus(0) + min_sigma, ~1.19 frames).
INITS = {
    'spread': ('spread', 'half'),
    'middle': ('middle', 'narrow'),
    'spread_narrow': ('spread', 'narrow'),
    'middle_half': ('middle', 'half'),
    'spread_full': ('spread', 'full'),
}
_SPANS = {'half': 2.0, 'full': 1.0}  # width = T / (span * K)


def initial_width(num_frames: int, num_tokens: int, min_sigma: float = 0.5,
                  width: str = 'half') -> float:
  """The starting width ``T/(2K)`` (``width='full'``: ``T/K``), never below ``min_sigma`` + 0.05."""
  return max(num_frames / (_SPANS[width] * num_tokens), min_sigma + 0.05)


def centre_bias(num_frames: int, num_tokens: int) -> np.ndarray:
  """Bias of the centre head so that ``(T-1) sigmoid(b_k)`` is :func:`initial_centres`."""
  q = (np.arange(1, num_tokens + 1) - 0.5) / num_tokens
  return np.log(q / (1.0 - q))


def width_bias(num_frames: int, num_tokens: int, min_sigma: float = 0.5,
               width: str = 'half') -> np.ndarray:
  """Bias of the width head so that ``softplus(b) + min_sigma`` is :func:`initial_width`."""
  y = initial_width(num_frames, num_tokens, min_sigma, width) - min_sigma
  return np.full((num_tokens,), np.log(np.expm1(y)))


def cell_means(rows: int, grid: int) -> np.ndarray:
  """(grid, rows) averaging matrix: row g is the mean over the g-th of ``grid`` near-equal bands of
  ``rows`` (``np.array_split``'s bands; ``grid = 1``: the mean over all rows)."""
  if not 1 <= grid <= rows:
    raise ValueError(f'tokenizer grid {grid} must lie in 1..{rows} (the conv\'s rows of patches)')
  out = np.zeros((grid, rows), np.float32)
  for g, band in enumerate(np.array_split(np.arange(rows), grid)):
    out[g, band] = 1.0 / len(band)
  return out


def _constant_init(value: np.ndarray):
  def init(key, shape, dtype=jnp.float32):
    del key
    if tuple(shape) != value.shape:
      raise ValueError(f'bias of shape {shape} cannot take the initial value of shape {value.shape}')
    return jnp.asarray(value, dtype)
  return init


class PatchConv(nn.Module):
  """A ``p x p`` convolution with stride ``p`` and VALID padding, as a product of patch rows.

  The same parameters (``kernel`` (p, p, C, F) with Flax's ``nn.Conv`` initialiser, ``bias``) and
  the same values as ``nn.Conv(F, (p, p), strides=(p, p), padding='VALID')``, up to float
  rounding. On the whole motion sequence (16 frames of 224 x 224 per clip) XLA:CPU ran the
  convolution through a library kernel whose scratch buffers are outside XLA's own memory
  planning, which raised the training step's peak memory; cutting the frames into patch rows
  and multiplying keeps everything in XLA's planning (docs/benchmarks.md).

  Attributes:
    features: F, output channels.
    patch_size: p, the kernel size and stride.
    dtype: operand dtype of the product (accumulated and returned in float32).
  """
  features: int
  patch_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """(N, H, W, C) -> (N, H // p, W // p, F); rows and columns past the last full patch are
    ignored, as VALID padding does."""
    n, h, w, c = x.shape
    p = self.patch_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (p, p, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    rows, cols = h // p, w // p
    patches = x[:, :rows * p, :cols * p].reshape(n, rows, p, cols, p, c)
    patches = patches.transpose(0, 1, 3, 2, 4, 5).reshape(n, rows, cols, p * p * c)
    y = jnp.einsum('nhwk,kf->nhwf', patches.astype(self.dtype),
                   kernel.reshape(p * p * c, self.features).astype(self.dtype),
                   preferred_element_type=jnp.float32)
    return y + bias


class GaussianTokenizer(nn.Module):
  """Turns a motion sequence into ``num_tokens`` prompt tokens.

  Attributes:
    num_tokens: K, the number of motion prompt tokens.
    hidden_size: D, the width of the backbone tokens.
    feature_dim: C, the channels of the per-frame conv.
    patch_size: the conv's kernel size and stride.
    min_sigma: lower bound of the Gaussian widths (in frames).
    grid: ``1`` (the paper's ``mean_xy``): a frame's feature is the conv's mean over the frame;
      ``g > 1``: the means over the cells of a g x g grid of the frame, concatenated (C g^2 values
      per frame), so that the prompts can tell where a motion is (docs/method.md §4; an option
      for comparison, not the paper's tokenizer).
    centre_init: the start of the centre and width heads, a key of :data:`INITS`: ``spread``
      (docs/method.md §4: centres evenly spread, width T/(2K)), ``middle`` (zero biases: every
      centre at the clip's middle, width ~1.19 frames) or a mix of the two for comparisons.
    dtype: compute dtype of the per-frame conv and the output projection (float32 results); the
      centre and width heads and the Gaussian pooling stay float32.
  """
  num_tokens: int = 5
  hidden_size: int = 768
  feature_dim: int = 64
  patch_size: int = 16
  min_sigma: float = 0.5
  grid: int = 1
  centre_init: str = 'middle'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, motion: jnp.ndarray) -> Tuple[jnp.ndarray, dict]:
    """Tokenizes (B, T, H, W, 3) motion.

    Returns:
      tokens: (B, K, D).
      aux: dict with ``mu`` (B, K), ``sigma`` (B, K) and ``weights`` (B, K, T) for inspection.
    """
    b, t_count, h, w, c = motion.shape
    x = motion.reshape(b * t_count, h, w, c)
    x = PatchConv(self.feature_dim, self.patch_size, dtype=self.dtype,
                  name='frame_conv')(x).astype(jnp.float32)
    x = nn.gelu(x, approximate=True)
    if self.grid == 1:
      feats = jnp.mean(x, axis=(1, 2))  # f_t
    else:
      rows = jnp.asarray(cell_means(x.shape[1], self.grid))
      cols = jnp.asarray(cell_means(x.shape[2], self.grid))
      feats = jnp.einsum('gr,nrcf,hc->nghf', rows, x, cols)
    feats = feats.reshape(b, t_count, -1)
    flat = feats.reshape(b, -1)  # F
    k = self.num_tokens
    if self.centre_init not in INITS:
      raise ValueError(f'centre_init must be one of {sorted(INITS)}, got {self.centre_init!r}')
    centres, width = INITS[self.centre_init]
    mu_bias = (_constant_init(centre_bias(t_count, k)) if centres == 'spread'
               else nn.initializers.zeros)
    sigma_bias = (nn.initializers.zeros if width == 'narrow'
                  else _constant_init(width_bias(t_count, k, self.min_sigma, width)))
    mu_head = nn.Dense(k, bias_init=mu_bias, name='mu')
    sigma_head = nn.Dense(k, bias_init=sigma_bias, name='sigma')
    mu = (t_count - 1) * nn.sigmoid(mu_head(flat))
    sigma = nn.softplus(sigma_head(flat)) + self.min_sigma
    weights = gaussian_weights(mu, sigma, t_count)
    pooled = jnp.einsum('bkt,btc->bkc', weights, feats)
    tokens = nn.Dense(self.hidden_size, dtype=self.dtype, name='out')(pooled).astype(jnp.float32)
    return tokens, {'mu': mu, 'sigma': sigma, 'weights': weights}
