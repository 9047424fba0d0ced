"""Eulerian motion magnification and extraction (docs/method.md §3, paper eqs. 4-7).

Everything here runs inside the jitted model:

* a Laplacian pyramid built from the fixed 5-tap binomial kernel ``[1, 4, 6, 4, 1] / 16`` as
  separable depthwise convolutions written as fixed shifted multiply-adds (reflect padding, stride-2
  down; zero insertion and the kernel times 2 per axis up, in polyphase form; both equal
  ``cv2.pyrDown`` / ``cv2.pyrUp``, borders included). ``hi = x - up(down(x))``, so reconstructing an
  unmodified pyramid is exact;
* a temporal Butterworth band-pass whose coefficients come from ``scipy.signal.butter`` once, when
  the :class:`Magnifier` is built, run over time with ``lax.scan`` in transposed direct form II,
  starting from the steady state of the first frame (``lfilter_zi(b, a) * x_0``), so it equals
  ``scipy.signal.lfilter`` with that initial state;
* the per-level amplification of Eulerian Video Magnification (Wu et al. 2012, their Figure 6 as
  coded in the MIT ``amplify_spatial_lpyr_temporal_butter.m``): finest and coarsest level zeroed,
  ``alpha_l = min(alpha, 2 (lambda_l / (8 delta) - 1))``, clipped at 0;
* reconstruction of the amplified band-passed levels into the motion sequence ``M``.

With one alpha on every level (``amplification='uniform'``) the pyramid is a no-op: everything is
linear and reconstruction is exact, so ``M = alpha * bandpass(frames)``. The per-level schedule is what
makes the spatial decomposition matter.
"""

import dataclasses
import math
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.signal

BINOMIAL5 = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
AMPLIFICATIONS = ('evm', 'uniform')
COLOR_SPACES = ('rgb', 'yiq')

# NTSC RGB -> YIQ (MATLAB rgb2ntsc); rows are Y, I, Q.
RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                       [0.595716, -0.274453, -0.321263],
                       [0.211456, -0.522591, 0.311135]])


def max_pyramid_height(height: int, width: int, filter_size: int = 5) -> int:
  """matlabPyrTools ``maxPyrHt``: how often an image can be halved before it is smaller than the filter."""
  if height < filter_size or width < filter_size:
    return 0
  return 1 + max_pyramid_height(height // 2, width // 2, filter_size)


def auto_levels(height: int, width: int) -> int:
  """Number of pyramid levels including the low-pass residual (``buildLpyr(..., 'auto')``)."""
  return 1 + max_pyramid_height(height, width)


def level_shapes(height: int, width: int, levels: int) -> List[Tuple[int, int]]:
  """Spatial shapes of the pyramid levels, finest first (stride-2 down gives ceil(n / 2))."""
  shapes = [(height, width)]
  for _ in range(levels - 1):
    h, w = shapes[-1]
    shapes.append(((h + 1) // 2, (w + 1) // 2))
  return shapes


def evm_level_alphas(height: int, width: int, levels: int, alpha: float,
                     lambda_c: float) -> np.ndarray:
  """Per-level amplification of EVM's Figure 6 schedule, finest level first.

  ``delta = lambda_c / (8 (1 + alpha))``; the representative wavelength is ``sqrt(H^2 + W^2) / 3`` at
  the coarsest level and halves at each finer level; ``alpha_l = min(alpha, 2 (lambda_l/(8 delta) - 1))``
  clipped at 0; the finest and the coarsest level are zeroed.
  """
  delta = lambda_c / (8.0 * (1.0 + alpha))
  out = np.zeros((levels,), np.float64)
  lam = math.sqrt(height ** 2 + width ** 2) / 3.0
  for lvl in range(levels - 1, -1, -1):  # coarsest to finest, as in the MATLAB loop
    if lvl not in (0, levels - 1):
      out[lvl] = float(np.clip(2.0 * (lam / delta / 8.0 - 1.0), 0.0, alpha))
    lam /= 2.0
  return out


def _conv_axis(x: jnp.ndarray, taps: np.ndarray, axis: int, stride: int) -> jnp.ndarray:
  """5-tap convolution of ``x`` along ``axis`` with reflect padding, as a sum of shifted slices.

  Written as strided slices and multiply-adds (which XLA fuses into one pass) instead of a grouped
  convolution: the kernel is fixed and tiny, and grouped convolutions are slow on CPU.
  """
  x = jnp.pad(x, [(2, 2) if a == axis else (0, 0) for a in range(x.ndim)],
              mode='reflect')  # reflect101 = matlabPyrTools 'reflect1' = OpenCV's default border
  n_out = (x.shape[axis] - 5) // stride + 1
  out = None
  for i, w in enumerate(taps):
    if w == 0:
      continue
    part = jax.lax.slice_in_dim(x, i, i + stride * (n_out - 1) + 1, stride, axis)
    out = float(w) * part if out is None else out + float(w) * part
  return out


def pyr_down(x: jnp.ndarray) -> jnp.ndarray:
  """Blur NHWC ``x`` with the 5-tap binomial kernel and keep even rows and columns (``cv2.pyrDown``)."""
  return _conv_axis(_conv_axis(x, BINOMIAL5, 1, 2), BINOMIAL5, 2, 2)


PYR_UP_BORDERS = ('cv2', 'reflect')


def _up_axis(x: jnp.ndarray, axis: int, size: int, border: str = 'cv2') -> jnp.ndarray:
  """Doubles ``x`` along ``axis`` (cropped to ``size``): zero insertion + the kernel times 2.

  ``cv2.pyrUp`` semantics: the ``n`` samples are zero-inserted into a signal of length ``2n``, which
  is filtered with ``[1, 4, 6, 4, 1] / 8`` under a reflect-101 border and then cropped to ``size``
  (``2n`` or ``2n - 1``). Computed in polyphase form, without materialising the zeros: even outputs
  are ``(x[i-1] + 6 x[i] + x[i+1]) / 8`` and odd outputs ``(x[i] + x[i+1]) / 2``, where the border of
  the zero-inserted signal makes ``x[-1] = x[1]`` (reflect) on the left but ``x[n] = x[n-1]`` (edge)
  on the right: the sample after the last zero-inserted position reflects onto ``x[n-1]`` itself.
  ``border='reflect'`` is the form before that fix (``x[n] = x[n-2]``: the last odd output of each
  axis differs), kept only to measure what the fix changed.
  """
  n = x.shape[axis]
  if border == 'reflect':
    xp = jnp.pad(x, [(1, 1) if a == axis else (0, 0) for a in range(x.ndim)], mode='reflect')
  else:
    first = jax.lax.slice_in_dim(x, 1, 2, 1, axis) if n > 1 else x
    last = jax.lax.slice_in_dim(x, n - 1, n, 1, axis)
    xp = jnp.concatenate([first, x, last], axis=axis)
  left = jax.lax.slice_in_dim(xp, 0, n, 1, axis)
  mid = jax.lax.slice_in_dim(xp, 1, n + 1, 1, axis)
  right = jax.lax.slice_in_dim(xp, 2, n + 2, 1, axis)
  even = (left + 6.0 * mid + right) * 0.125
  odd = (mid + right) * 0.5
  shape = list(x.shape)
  shape[axis] = 2 * n
  both = jnp.stack([even, odd], axis=axis + 1).reshape(shape)
  return jax.lax.slice_in_dim(both, 0, size, 1, axis)


def pyr_up(x: jnp.ndarray, shape: Tuple[int, int], border: str = 'cv2') -> jnp.ndarray:
  """Upsamples NHWC ``x`` to ``shape`` like ``cv2.pyrUp(x, dstsize=shape)`` (zero insertion + binomial
  kernel times 2 per axis, reflect-101 border of the zero-inserted image); ``border='reflect'``: the
  earlier form (see :func:`_up_axis`), for comparison only."""
  return _up_axis(_up_axis(x, 1, shape[0], border), 2, shape[1], border)


def build_laplacian(x: jnp.ndarray, levels: int) -> List[jnp.ndarray]:
  """Laplacian pyramid of NHWC ``x``: ``levels - 1`` band-pass levels then the low-pass residual."""
  pyr = []
  cur = x
  for _ in range(levels - 1):
    low = pyr_down(cur)
    pyr.append(cur - pyr_up(low, cur.shape[1:3]))
    cur = low
  pyr.append(cur)
  return pyr


def collapse_laplacian(pyr: Sequence[jnp.ndarray]) -> jnp.ndarray:
  """Inverse of :func:`build_laplacian`."""
  cur = pyr[-1]
  for band in reversed(pyr[:-1]):
    cur = band + pyr_up(cur, band.shape[1:3])
  return cur


def butterworth_coefficients(order: int, low_hz: float, high_hz: float,
                             fs: float) -> Tuple[np.ndarray, np.ndarray]:
  """``scipy.signal.butter`` band-pass coefficients ``(b, a)`` normalised so that ``a[0] = 1``."""
  if not 0 < low_hz < high_hz < fs / 2:
    raise ValueError(f'Band-pass needs 0 < low ({low_hz}) < high ({high_hz}) < fs/2 ({fs / 2})')
  b, a = scipy.signal.butter(order, [low_hz, high_hz], btype='bandpass', fs=fs)
  return np.asarray(b / a[0], np.float64), np.asarray(a / a[0], np.float64)


def iir_filter(x: jnp.ndarray, b: np.ndarray, a: np.ndarray, state=None, return_state=False):
  """``lfilter(b, a, x, axis=0, zi=lfilter_zi(b, a) * x[0])`` with ``lax.scan`` (transposed DF-II).

  Args:
    x: (T, ...) signal, filtered along axis 0.
    b: numerator coefficients (``a[0]`` must be 1).
    a: denominator coefficients.
    state: the filter's delay line, ``max(len(a), len(b)) - 1`` arrays of ``x[0]``'s shape, to
      continue a signal filtered in chunks (the final state of the previous chunk); None starts
      from the steady state of ``x[0]``.
    return_state: also return the final state (to filter the next chunk).

  Returns:
    The filtered signal, same shape as ``x`` (and the final state when ``return_state``).
  """
  m = max(len(a), len(b))
  b = np.pad(b, (0, m - len(b)))
  a = np.pad(a, (0, m - len(a)))
  zi = scipy.signal.lfilter_zi(b, a)  # (m - 1,)
  dtype = x.dtype
  bj = [jnp.asarray(v, dtype) for v in b]
  aj = [jnp.asarray(v, dtype) for v in a]
  if state is None:
    state0 = tuple(jnp.asarray(z, dtype) * x[0] for z in zi)
  else:
    state0 = tuple(jnp.asarray(v, dtype) for v in state)
    if len(state0) != m - 1:
      raise ValueError(f'The filter state has {len(state0)} arrays, the filter needs {m - 1}')

  def step(state, xt):
    yt = bj[0] * xt + state[0]
    new = []
    for i in range(m - 1):
      nxt = state[i + 1] if i + 1 < m - 1 else 0.0
      new.append(bj[i + 1] * xt + nxt - aj[i + 1] * yt)
    return tuple(new), yt

  final, y = jax.lax.scan(step, state0, x)
  return (y, final) if return_state else y


@dataclasses.dataclass(frozen=True)
class Magnifier:
  """Motion extraction ``M`` for (B, T, H, W, 3) clips; all constants are fixed at construction.

  Attributes:
    image_size: (H, W) of the frames.
    alpha: amplification factor.
    lambda_c: EVM cut-off wavelength in pixels.
    low_hz: band-pass low cut-off.
    high_hz: band-pass high cut-off.
    fs: sampling rate assumed for the resampled clip.
    order: Butterworth order (the band-pass has 2 * order poles).
    levels: pyramid levels including the residual; 0 means as deep as the image allows.
    amplification: ``evm`` (per-level schedule) or ``uniform`` (one alpha everywhere).
    color_space: ``rgb`` (per channel) or ``yiq``.
    chroma_attenuation: factor on the I and Q motion in ``yiq``.
    pyr_up_border: ``cv2`` (``cv2.pyrUp``'s border) or ``reflect`` (the earlier form; comparison).
  """
  image_size: Tuple[int, int] = (224, 224)
  alpha: float = 20.0
  lambda_c: float = 16.0
  low_hz: float = 0.4
  high_hz: float = 4.0
  fs: float = 30.0
  order: int = 1
  levels: int = 0
  amplification: str = 'evm'
  color_space: str = 'rgb'
  chroma_attenuation: float = 1.0
  pyr_up_border: str = 'cv2'

  def __post_init__(self):
    if self.pyr_up_border not in PYR_UP_BORDERS:
      raise ValueError(f'pyr_up_border must be one of {PYR_UP_BORDERS}, got {self.pyr_up_border!r}')
    if self.amplification not in AMPLIFICATIONS:
      raise ValueError(f'amplification must be one of {AMPLIFICATIONS}, got {self.amplification!r}')
    if self.color_space not in COLOR_SPACES:
      raise ValueError(f'color_space must be one of {COLOR_SPACES}, got {self.color_space!r}')

  @property
  def num_levels(self) -> int:
    h, w = self.image_size
    return self.levels if self.levels > 0 else auto_levels(h, w)

  @property
  def level_alphas(self) -> np.ndarray:
    """Amplification per pyramid level, finest first."""
    h, w = self.image_size
    if self.amplification == 'uniform':
      return np.full((self.num_levels,), float(self.alpha))
    return evm_level_alphas(h, w, self.num_levels, self.alpha, self.lambda_c)

  @property
  def coefficients(self) -> Tuple[np.ndarray, np.ndarray]:
    return butterworth_coefficients(self.order, self.low_hz, self.high_hz, self.fs)

  def bandpass(self, clips: jnp.ndarray) -> jnp.ndarray:
    """Temporal band-pass of (B, T, ...) along T."""
    b, a = self.coefficients
    return jnp.moveaxis(iir_filter(jnp.moveaxis(clips, 1, 0), b, a), 0, 1)

  def __call__(self, clips: jnp.ndarray) -> jnp.ndarray:
    """Returns the motion sequence ``M`` (B, T, H, W, 3) of clips in [0, 1]."""
    bsz, t_count, h, w, c = clips.shape
    if (h, w) != tuple(self.image_size):
      raise ValueError(f'Magnifier built for {self.image_size}, got frames of {(h, w)}')
    x = clips
    if self.color_space == 'yiq':
      x = jnp.einsum('...c,dc->...d', x, jnp.asarray(RGB_TO_YIQ, x.dtype))
    x = x.reshape(bsz * t_count, h, w, c)
    alphas = self.level_alphas
    levels = self.num_levels
    # Walk down the pyramid; only the bands that are amplified are formed and filtered.
    bands = [None] * levels
    shapes = []
    cur = x
    for lvl in range(levels):
      shapes.append(cur.shape[1:3])
      if lvl == levels - 1:
        bands[lvl] = cur if alphas[lvl] != 0 else None
        break
      low = pyr_down(cur)
      if alphas[lvl] != 0:
        bands[lvl] = cur - pyr_up(low, cur.shape[1:3], self.pyr_up_border)
      cur = low
    active = [i for i in range(levels) if bands[i] is not None]
    if not active:
      return jnp.zeros_like(clips)
    # One scan over time filters every active level at once.
    flat = [bands[i].reshape(bsz, t_count, -1) for i in active]
    sizes = [f.shape[-1] for f in flat]
    filtered = self.bandpass(jnp.concatenate(flat, axis=-1))
    parts = jnp.split(filtered, np.cumsum(sizes)[:-1], axis=-1)
    amplified = {}
    for i, part in zip(active, parts):
      amplified[i] = (float(alphas[i]) * part).reshape((bsz * t_count,) + tuple(shapes[i]) + (c,))
    # Collapse: coarsest first; an inactive level contributes zero.
    cur = None
    for lvl in range(levels - 1, -1, -1):
      if cur is not None:
        cur = pyr_up(cur, shapes[lvl], self.pyr_up_border)
      if lvl in amplified:
        cur = amplified[lvl] if cur is None else cur + amplified[lvl]
    motion = cur.reshape(bsz, t_count, h, w, c)
    if self.color_space == 'yiq':
      atten = jnp.asarray([1.0, self.chroma_attenuation, self.chroma_attenuation], motion.dtype)
      motion = jnp.einsum('...c,dc->...d', motion * atten,
                          jnp.asarray(np.linalg.inv(RGB_TO_YIQ), motion.dtype))
    return motion
