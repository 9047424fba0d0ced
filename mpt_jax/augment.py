"""Training augmentation, drawn once per clip, applied identically to all frames (docs/method.md §1).

Horizontal flip (default) and, as options, a small random rotation and a random crop resized back
to the frame size (both off by default). The random draws are made on the host from the epoch's
seed together with the batch order (so a resumed run is identical to an uninterrupted one); the
warp itself runs inside the jitted step as a bilinear resampling of every frame with the clip's
one affine transform, so no motion is added between frames.
"""

import jax
import jax.numpy as jnp
import numpy as np


def draw_params(rng: np.random.Generator, n: int, hflip: bool, max_rotation_deg: float,
                min_crop_scale: float) -> np.ndarray:
  """(n, 5) float32 per-clip parameters: flip, angle (rad), crop side fraction, dy, dx.

  ``dy``/``dx`` are the crop centre's offset as a fraction of the frame side, drawn so that the
  crop stays inside the frame.
  """
  flip = (rng.random(n) < 0.5) if hflip else np.zeros(n, bool)
  angle = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, n)) if max_rotation_deg \
      else np.zeros(n)
  if min_crop_scale < 1.0:
    side = np.sqrt(rng.uniform(min_crop_scale, 1.0, n))  # area fraction -> side fraction
  else:
    side = np.ones(n)
  room = (1.0 - side) / 2.0
  dy = rng.uniform(-1.0, 1.0, n) * room
  dx = rng.uniform(-1.0, 1.0, n) * room
  return np.stack([flip, angle, side, dy, dx], axis=1).astype(np.float32)


def _warp_clip(clip: jnp.ndarray, p: jnp.ndarray) -> jnp.ndarray:
  """Bilinear resampling of (T, H, W, C) frames with one rotation + crop (edge-clamped)."""
  t_count, h, w, c = clip.shape
  angle, side, dy, dx = p[1], p[2], p[3], p[4]
  ys, xs = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                        indexing='ij')
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  u, v = (xs - cx) * side, (ys - cy) * side
  cos, sin = jnp.cos(angle), jnp.sin(angle)
  src_x = cos * u - sin * v + cx + dx * w
  src_y = sin * u + cos * v + cy + dy * h
  src_x = jnp.clip(src_x, 0.0, w - 1.0)
  src_y = jnp.clip(src_y, 0.0, h - 1.0)
  x0 = jnp.floor(src_x).astype(jnp.int32)
  y0 = jnp.floor(src_y).astype(jnp.int32)
  x1 = jnp.minimum(x0 + 1, w - 1)
  y1 = jnp.minimum(y0 + 1, h - 1)
  wx = (src_x - x0)[None, :, :, None]
  wy = (src_y - y0)[None, :, :, None]
  top = clip[:, y0, x0] * (1 - wx) + clip[:, y0, x1] * wx
  bottom = clip[:, y1, x0] * (1 - wx) + clip[:, y1, x1] * wx
  return top * (1 - wy) + bottom * wy


def flipped(params: jnp.ndarray) -> jnp.ndarray:
  """(B,) bool: the clips :func:`apply` flips horizontally (``params``: :func:`draw_params`)."""
  return params[:, 0] > 0.5


def apply(clips: jnp.ndarray, params: jnp.ndarray, geometric: bool) -> jnp.ndarray:
  """Applies per-clip augmentation to (B, T, H, W, C) clips; ``params`` from :func:`draw_params`.

  Args:
    clips: the batch.
    params: (B, 5) per-clip parameters.
    geometric: whether rotation/crop are enabled (a static choice, so a run without them pays
      nothing for the warp).
  """
  if geometric:
    clips = jax.vmap(_warp_clip)(clips, params)
  return jnp.where(flipped(params)[:, None, None, None, None], clips[:, :, :, ::-1, :], clips)
