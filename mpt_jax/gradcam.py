"""Gradient maps of a fold model over the patch grid (the paper's Fig. 8), and its features.

Maps come from the patch tokens entering the last encoder block, ``A`` (B, N, D), and the
gradient ``G = dy/dA`` of a class logit ``y`` with respect to them (the last block's *output* patch
tokens never reach the class token, so their gradient is zero; this is the target ``blocks[-1]``
input of pytorch-grad-cam's ViT recipe). Two maps over the patch grid, upsampled bilinearly:

* ``grad_norm`` (default): ``||G_n||_2`` per patch token, the size of the class logit's gradient at
  each patch position;
* ``gradcam``: classic Grad-CAM, ``relu(sum_c w_c A_nc)`` with ``w_c = mean_n G_nc``.

The default is ``grad_norm`` because it is the one that passes our localisation test
(``tests/test_figures.py``: a tiny ViT trained on clips where only one square moves, in a random
quadrant): its peak fell in the moving quadrant for 19/24 test clips, channel-weighted Grad-CAM for
only 5-8/24 (chance 6/24). The tokens are taken without changing the model:
``flax.linen.intercept_methods`` adds a zero perturbation to the last block's input, and the
gradient is taken with respect to that perturbation.
"""

from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mpt_jax import errors


def _block_input_shape(model, batch: int) -> Tuple[int, int, int]:
  tokens = 1 + model.effective_prompts + (model.image_size // model.backbone.patch_size) ** 2
  return batch, tokens, model.backbone.hidden_size


METHODS = ('grad_norm', 'gradcam')


def make_gradcam_fn(model, method: str = 'grad_norm'):
  """A jitted ``f(params, clips, apex, class_index) -> (cam (B, g, g), logits, features)``.

  Args:
    model: an :class:`mpt_jax.models.mpt.MPT` (ViT or CLIP backbone).
    method: ``grad_norm`` or ``gradcam`` (see the module docstring).
  """
  if method not in METHODS:
    raise errors.UserError(f'Grad-CAM method must be one of {METHODS}, got {method!r}')
  last = f'encoderblock_{model.backbone.num_layers - 1}'
  k = model.effective_prompts
  grid = model.image_size // model.backbone.patch_size

  def fn(params, clips, apex, class_index):
    def logit(delta):
      captured = {}

      def interceptor(next_fun, args, kwargs, context):
        if context.method_name == '__call__' and context.module.name == last:
          x = args[0] + delta.astype(args[0].dtype)
          captured['tokens'] = x
          return next_fun(x, *args[1:], **kwargs)
        return next_fun(*args, **kwargs)

      with nn.intercept_methods(interceptor):
        logits, aux = model.apply({'params': params}, clips, apex, return_aux=True)
      if 'tokens' not in captured:
        raise ValueError(f'Grad-CAM: no module named {last} was called')
      chosen = jnp.take_along_axis(logits, class_index[:, None], axis=1).sum()
      return chosen, (captured['tokens'], logits, aux['features'])

    delta = jnp.zeros(_block_input_shape(model, clips.shape[0]), jnp.float32)
    grads, (tokens, logits, features) = jax.grad(logit, has_aux=True)(delta)
    acts, grads = tokens[:, 1 + k:], grads[:, 1 + k:]  # patch tokens only
    if method == 'grad_norm':
      cam = jnp.sqrt(jnp.sum(jnp.square(grads), axis=-1))
    else:
      weights = grads.mean(axis=1)  # (B, D)
      cam = jax.nn.relu(jnp.einsum('bnd,bd->bn', acts.astype(jnp.float32), weights))
    return cam.reshape(-1, grid, grid), logits, features

  return jax.jit(fn)


def gradcam(model, params, clips, apex=None, class_index=None,
            method: str = 'grad_norm') -> np.ndarray:
  """Gradient maps (B, g, g) over the patch grid (default class: the predicted one)."""
  clips = jnp.asarray(clips, jnp.float32)
  b, t = clips.shape[:2]
  apex = jnp.full((b,), (t - 1) // 2, jnp.int32) if apex is None else jnp.asarray(apex, jnp.int32)
  fn = make_gradcam_fn(model, method)
  if class_index is None:
    logits = model.apply({'params': params}, clips, apex)
    class_index = jnp.argmax(logits, -1)
  cam, _, _ = fn(params, clips, apex, jnp.asarray(class_index, jnp.int32))
  return np.asarray(cam)


def upsample(cam: np.ndarray, size: int) -> np.ndarray:
  """A (g, g) map resized bilinearly to (size, size) and scaled to [0, 1]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  img = Image.fromarray(np.asarray(cam, np.float32), mode='F').resize((size, size), Image.BILINEAR)
  out = np.asarray(img, np.float32)
  span = out.max() - out.min()
  return (out - out.min()) / span if span > 0 else np.zeros_like(out)
