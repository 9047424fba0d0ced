"""The RGB branch input: Bilen's approximate rank pooling ("dynamic image", docs/method.md §2).

``DI = sum_t alpha_t I_t`` with ``alpha_t = 2(T - t + 1) - (T + 1)(H_T - H_{t-1})`` (t = 1..T,
harmonic numbers H, H_0 = 0), the closed form of ``fw(i) = sum((2*(i:N)-N-1) ./ (i:N))`` in
``hbilen/dynamic-image-nets`` ``vl_nnarpooltemporal.m``. The coefficients sum to 0, so a constant
clip pools to 0. Each DI is then min-max normalised over all pixels and channels to [0, 1].

The input-modality options used for comparisons (``apex``, ``apex_minus_onset``, ``mesti``) live here
too. ``mesti`` is our interpretation of MESTI (arXiv 2509.00056, formula unpublished): an
apex-centred rank pooling ``DI(frames[0..a]) + DI(reverse(frames[a..T-1]))``.
"""

import jax
import jax.numpy as jnp
import numpy as np

INPUT_MODALITIES = ('dynamic_image', 'apex', 'apex_minus_onset', 'mesti')


def middle_apex(t_count: int) -> int:
  """The default apex on a T-frame timeline when none is annotated: ``(T - 1) // 2``."""
  return (int(t_count) - 1) // 2


def rank_pool_coefficients(num_frames: int) -> np.ndarray:
  """Bilen's approximate rank pooling weights ``alpha_1..alpha_T`` (float64, sum 0 for T > 1)."""
  t_count = int(num_frames)
  if t_count < 1:
    raise ValueError(f'num_frames must be >= 1, got {num_frames}')
  if t_count == 1:
    return np.zeros((1,), np.float64)  # a single frame carries no temporal order
  harmonic = np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, t_count + 1))])  # H_0..H_T
  t = np.arange(1, t_count + 1)
  return 2.0 * (t_count - t + 1) - (t_count + 1) * (harmonic[t_count] - harmonic[t - 1])


def minmax_normalise(x: jnp.ndarray) -> jnp.ndarray:
  """Per-example global min-max to [0, 1] over all but the batch axis; constant inputs map to 0."""
  axes = tuple(range(1, x.ndim))
  lo = jnp.min(x, axis=axes, keepdims=True)
  hi = jnp.max(x, axis=axes, keepdims=True)
  rng = hi - lo
  safe = jnp.where(rng > 0, rng, 1.0)
  return jnp.where(rng > 0, (x - lo) / safe, 0.0)


def dynamic_image(clips: jnp.ndarray, normalise: bool = True) -> jnp.ndarray:
  """Approximate rank pooling of (B, T, H, W, C) clips into (B, H, W, C) images."""
  di = _weighted_frame_sum(clips, rank_pool_coefficients(clips.shape[1]))
  return minmax_normalise(di) if normalise else di


def _weighted_frame_sum(clips: jnp.ndarray, weights) -> jnp.ndarray:
  """``sum_t weights[..., t] * clips[:, t]`` for (T,) or (B, T) ``weights``, (B, T, ...) clips.

  Written as T multiply-adds of frame slices, which XLA fuses into one pass over the clips. As an
  einsum it is a product contracting T, for which XLA:CPU first copies the whole clip array into a
  time-major layout, a strided copy slower than the sum itself.
  """
  weights = jnp.asarray(weights, clips.dtype)
  out = None
  for t in range(clips.shape[1]):
    w = weights[..., t].reshape(weights.shape[:-1] + (1,) * (clips.ndim - 2))
    part = w * clips[:, t]
    out = part if out is None else out + part
  return out


def _apex_centred_weights(num_frames: int, apex: jnp.ndarray) -> jnp.ndarray:
  """(B, T) weights of DI(frames[0..a]) + DI(reverse(frames[a..T-1])) for integer apex ``a``.

  Built with fixed shapes so it stays jittable: for every possible apex the weight table is
  precomputed in numpy and gathered.
  """
  table = np.zeros((num_frames, num_frames), np.float64)
  for a in range(num_frames):
    table[a, :a + 1] += rank_pool_coefficients(a + 1) if a > 0 else 0.0
    tail = num_frames - a
    if tail > 1:
      table[a, a:] += rank_pool_coefficients(tail)[::-1]
  return jnp.asarray(table)[apex]


def rgb_input(clips: jnp.ndarray, modality: str, apex_index: jnp.ndarray) -> jnp.ndarray:
  """The image the RGB tokens see, in [0, 1].

  Args:
    clips: (B, T, H, W, 3) in [0, 1].
    modality: one of :data:`INPUT_MODALITIES`.
    apex_index: (B,) int apex positions on the resampled timeline (used by ``apex``,
      ``apex_minus_onset`` and ``mesti``).

  Returns:
    (B, H, W, 3) image in [0, 1].
  """
  t_count = clips.shape[1]
  apex_index = jnp.clip(apex_index.astype(jnp.int32), 0, t_count - 1)
  if modality == 'dynamic_image':
    return dynamic_image(clips)
  if modality == 'apex':
    return jax.vmap(lambda c, a: c[a])(clips, apex_index)
  if modality == 'apex_minus_onset':
    diff = jax.vmap(lambda c, a: c[a] - c[0])(clips, apex_index)
    return minmax_normalise(diff)
  if modality == 'mesti':
    w = _apex_centred_weights(t_count, apex_index).astype(clips.dtype)
    return minmax_normalise(_weighted_frame_sum(clips, w))
  raise ValueError(f'input_modality must be one of {INPUT_MODALITIES}, got {modality!r}')
