"""The MPT model: dynamic image tokens + motion prompt tokens through an adapted, frozen ViT.

Forward pass for a batch of clips (B, T, H, W, 3) in [0, 1] (all inside one jitted function):

1. RGB branch (docs/method.md §2): the dynamic image (or another input modality), min-max to
   [0, 1], the backbone's input normalisation, the ``embedding`` conv and the ``cls`` token.
2. Motion branch (docs/method.md §3-4): Eulerian magnification extracts the motion sequence
   ``M`` and the temporal Gaussian tokenizer turns it into K prompt tokens.
3. Sequence ``[cls + pos_0, p_1..p_K, patches + pos_1..N]`` through the encoder, whose every block
   carries a group adapter (docs/method.md §5-6).
4. ``head`` on the final class token (docs/method.md §7).

Steps 1-2 before the backbone (the RGB-branch image and the magnified motion) depend on no
parameter, so they can be computed once per clip and fed back (the motion cache)::

  inputs = model.apply(variables, clips, apex_index, method=MPT.precompute)
  logits = model.apply(variables, None, precomputed=inputs)
  # logits == model.apply(variables, clips, apex_index)

Speed options (``config.model``): ``dtype`` (bfloat16 products with float32 accumulation in the
backbone, adapters and tokenizer; parameters, dynamic image, magnification and logits stay float32),
``remat`` (recompute each block in the backward pass) and the last block computing the class token
alone (always on: the head reads nothing else; exact).

Parameter tree (top level): ``embedding``, ``cls``, ``Transformer`` (the checkpoint's names plus
``encoderblock_i/adapter``), ``tokenizer`` or ``prompt``/``deep_prompt``, and ``head``.
"""

import dataclasses
import re
from typing import Any, Dict, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mpt_jax import errors
from mpt_jax import partition
from mpt_jax.models import attention as attention_lib
from mpt_jax.models import clip as clip_lib
from mpt_jax.models import dynamic_image
from mpt_jax.models import magnification
from mpt_jax.models import tokenizer as tokenizer_lib
from mpt_jax.models import vit

PROMPT_TYPES = partition.PROMPT_TYPES
INPUT_NORMS = ('minus_one_one', 'imagenet', 'clip')
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise_input(x: jnp.ndarray, mode: str) -> jnp.ndarray:
  """Backbone input normalisation of [0, 1] images: ``minus_one_one`` (in21k ViT) or ``imagenet``."""
  if mode == 'minus_one_one':
    return (x - 0.5) / 0.5
  if mode == 'imagenet':
    return (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
  if mode == 'clip':
    return (x - jnp.asarray(clip_lib.CLIP_MEAN, x.dtype)) / jnp.asarray(clip_lib.CLIP_STD, x.dtype)
  raise ValueError(f'input_norm must be one of {INPUT_NORMS}, got {mode!r}')


@dataclasses.dataclass(frozen=True)
class Backbone:
  """The backbone's shape (``vit.vit_config`` or ``clip.clip_config``, with the config's overrides).

  Attributes:
    family: ``vit`` (in21k ViT) or ``clip`` (:mod:`mpt_jax.models.clip`).
    patch_size: ViT patch size.
    hidden_size: ViT width D.
    mlp_dim: ViT MLP width.
    num_heads: ViT heads.
    num_layers: ViT blocks.
  """
  family: str = 'vit'
  patch_size: int = 16
  hidden_size: int = 768
  mlp_dim: int = 3072
  num_heads: int = 12
  num_layers: int = 12


@dataclasses.dataclass(frozen=True)
class Tokenizer:
  """The motion tokenizer's settings (:class:`tokenizer.GaussianTokenizer`).

  Attributes:
    feature_dim: C of the per-frame conv.
    patch_size: kernel size and stride of that conv.
    init: the start of the centre and width heads, a key of ``tokenizer.INITS``
      (docs/method.md §4).
    grid: 1 (the paper's mean over the frame) or g: each frame's conv features pooled over a g x g
      grid (``tokenizer.GaussianTokenizer.grid``).
  """
  feature_dim: int = 64
  patch_size: int = 16
  init: str = 'middle'
  grid: int = 1


@dataclasses.dataclass(frozen=True)
class Compute:
  """How the model computes; none of these changes the parameters or (beyond rounding) the logits.

  Attributes:
    dtype: ``float32`` | ``bfloat16``: compute dtype of the backbone's, adapters' and tokenizer's
      products (bfloat16 products accumulate in float32; parameters stay float32).
    attention: the blocks' attention form, ``lean`` | ``xla`` | ``cudnn``
      (:func:`mpt_jax.models.attention.attention_product`; :func:`build_model` resolves
      ``config.model.attention``, ``auto`` included, for the device).
    remat: recompute every encoder block in the backward pass (less memory, more time).
    cls_only_last: the last block computes the class token alone (exact; False runs it on every
      token, for comparisons).
  """
  dtype: str = 'float32'
  attention: str = 'lean'
  remat: bool = False
  cls_only_last: bool = True


class MPT(nn.Module):
  """Motion Prompt Tuning classifier.

  Attributes:
    num_classes: output classes.
    backbone: the ViT's family and shape (:class:`Backbone`).
    image_size: frame side length in pixels.
    input_modality: RGB-branch input (see :mod:`mpt_jax.models.dynamic_image`).
    input_norm: backbone input normalisation.
    prompt_type: ``motion`` | ``vpt_shallow`` | ``vpt_deep`` | ``none``.
    num_prompts: K.
    adapter_type: ``group`` | ``shared`` | ``none``.
    adapter_reduction: r.
    tokenizer: the motion tokenizer's settings (:class:`Tokenizer`).
    magnifier: the (parameter-free) motion extractor.
    compute: dtype, attention form, remat and the class-token-only last block (:class:`Compute`).
  """
  num_classes: int
  backbone: Backbone = Backbone()
  image_size: int = 224
  input_modality: str = 'dynamic_image'
  input_norm: str = 'minus_one_one'
  prompt_type: str = 'motion'
  num_prompts: int = 5
  adapter_type: str = 'group'
  adapter_reduction: int = 8
  tokenizer: Tokenizer = Tokenizer()
  magnifier: Optional[magnification.Magnifier] = None
  compute: Compute = Compute()

  @property
  def effective_prompts(self) -> int:
    return 0 if self.prompt_type == 'none' else self.num_prompts

  def precompute(self, clips: jnp.ndarray,
                 apex_index: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
    """The parameter-free inputs of the model, to compute once per clip (the motion cache).

    Call it as ``model.apply(variables, clips, apex_index, method=MPT.precompute)`` (no parameter
    is read, so ``{}`` works as ``variables`` too) and feed the result to
    ``model.apply(variables, None, precomputed=inputs)``, which gives the same logits as
    ``model.apply(variables, clips, apex_index)``. A geometric augmentation or a flip changes
    both entries: precompute per augmented clip.

    Args:
      clips: (B, T, H, W, 3) float frames in [0, 1].
      apex_index: optional (B,) apex positions (default: the middle).

    Returns:
      ``{'rgb': (B, H, W, 3) float32}``, the RGB-branch image in [0, 1] (the dynamic image or the
      configured modality, before the backbone's normalisation), plus, for ``prompt_type='motion'``,
      ``'motion': (B, T, H, W, 3) float32``, the magnified motion sequence the tokenizer reads.
    """
    b, t_count = clips.shape[:2]
    if apex_index is None:
      apex_index = jnp.full((b,), dynamic_image.middle_apex(t_count), jnp.int32)
    out = {'rgb': dynamic_image.rgb_input(clips, self.input_modality, apex_index)}
    if self.prompt_type == 'motion':
      magnifier = self.magnifier or magnification.Magnifier(
          image_size=(self.image_size, self.image_size))
      out['motion'] = magnifier(clips)
    return out

  @nn.compact
  def __call__(self, clips: Optional[jnp.ndarray], apex_index: Optional[jnp.ndarray] = None,
               return_aux: bool = False,
               precomputed: Optional[Dict[str, jnp.ndarray]] = None) -> Any:
    """Classifies clips.

    Args:
      clips: (B, T, H, W, 3) float frames in [0, 1]; None when ``precomputed`` is given.
      apex_index: optional (B,) apex positions on the T-frame timeline (default: the middle); not
        read when ``precomputed`` is given.
      return_aux: also return a dict of intermediate results (for plots and tests).
      precomputed: the output of :meth:`precompute` for these clips, used instead of ``clips``.

    Returns:
      logits (B, num_classes) in float32, or ``(logits, aux)``.
    """
    if self.prompt_type not in PROMPT_TYPES:
      raise ValueError(f'prompt_type must be one of {PROMPT_TYPES}, got {self.prompt_type!r}')
    if precomputed is None:
      if clips is None:
        raise ValueError('MPT needs clips or precomputed inputs')
      precomputed = self.precompute(clips, apex_index)
    elif self.prompt_type == 'motion' and 'motion' not in precomputed:
      raise ValueError("precomputed inputs lack 'motion' (made for a model without motion "
                       'prompts?)')
    dtype = vit.compute_dtype(self.compute.dtype)
    bb = self.backbone
    aux: Dict[str, Any] = {}
    rgb = precomputed['rgb']
    b = rgb.shape[0]
    aux['rgb_input'] = rgb
    family = clip_lib if bb.family == 'clip' else vit
    x = family.embed_patches(self, normalise_input(rgb, self.input_norm), bb.patch_size,
                             bb.hidden_size)
    k = self.effective_prompts
    prompts = deep = None
    if self.prompt_type == 'motion':
      motion = precomputed['motion']
      prompts, tok_aux = motion_tokenizer(self, name='tokenizer')(motion)
      aux['motion'] = motion
      aux.update(tok_aux)
    elif self.prompt_type in ('vpt_shallow', 'vpt_deep'):
      # VPT's init: uniform(-v, v) with v = sqrt(6 / (3 * p * p + D)).
      val = float(np.sqrt(6.0 / (3 * bb.patch_size ** 2 + bb.hidden_size)))
      init = lambda key, shape: nn.initializers.uniform(2 * val)(key, shape) - val  # pylint: disable=unnecessary-lambda-assignment
      prompt = self.param('prompt', init, (1, k, bb.hidden_size))
      prompts = jnp.broadcast_to(prompt, (b, k, bb.hidden_size))
      if self.prompt_type == 'vpt_deep' and bb.num_layers > 1:
        deep = self.param('deep_prompt', init, (bb.num_layers - 1, k, bb.hidden_size))
    enc = family.Encoder(bb.num_layers, bb.mlp_dim, bb.num_heads, self.adapter_type,
                         self.adapter_reduction, k, dtype=dtype,
                         cls_only_last=self.compute.cls_only_last, remat=self.compute.remat,
                         attention=self.compute.attention, name='Transformer')(x, prompts, deep)
    features = enc[:, 0].astype(jnp.float32)
    logits = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, dtype=jnp.float32,
                      name='head')(features)
    if return_aux:
      aux['features'] = features
      return logits, aux
    return logits


def motion_tokenizer(model: MPT, name: Optional[str] = None) -> tokenizer_lib.GaussianTokenizer:
  """The temporal Gaussian tokenizer of ``model`` (its settings, prompt count and compute dtype).

  :meth:`MPT.__call__` builds it as its ``tokenizer`` submodule; on its own it takes the model's
  ``params['tokenizer']``.
  """
  bb, tok = model.backbone, model.tokenizer
  return tokenizer_lib.GaussianTokenizer(
      model.num_prompts, bb.hidden_size, tok.feature_dim, tok.patch_size, grid=tok.grid,
      centre_init=tok.init, dtype=vit.compute_dtype(model.compute.dtype), name=name)


def motion_inputs(model: MPT, params: Any, clips: jnp.ndarray,
                  apex_index: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """The inputs the model builds before its backbone, for figures: the forward pass's
  ``return_aux`` entries ``rgb_input`` and, with motion prompts, ``motion`` and the tokenizer's
  ``mu``, ``sigma`` and ``weights`` (B, K, T), without running the backbone.

  Args:
    model: the model.
    params: its parameters (only ``params['tokenizer']`` is read).
    clips: (B, T, H, W, 3) float frames in [0, 1].
    apex_index: (B,) apex positions.
  """
  inputs = _precompute(model, clips, apex_index)
  out = {'rgb_input': inputs['rgb']}
  if model.prompt_type == 'motion':
    _, tok_aux = _tokenize(model, params['tokenizer'], inputs['motion'])
    out.update(motion=inputs['motion'], **tok_aux)
  return out


# Compiled once per model and shapes in a process (the model is a static argument: Flax modules
# hash and compare by their fields).
_precompute = jax.jit(lambda model, c, a: model.apply({}, c, a, method=MPT.precompute),
                      static_argnums=0)
_tokenize = jax.jit(lambda model, p, m: motion_tokenizer(model).apply({'params': p}, m),
                    static_argnums=0)


def build_magnifier(model_config: ml_collections.ConfigDict) -> magnification.Magnifier:
  """The motion extractor described by ``config.model.magnification``."""
  m = model_config.magnification
  size = int(model_config.image_size)
  return magnification.Magnifier(
      image_size=(size, size), alpha=float(m.alpha), lambda_c=float(m.lambda_c),
      low_hz=float(m.low_hz), high_hz=float(m.high_hz), fs=float(m.fs), order=int(m.order),
      levels=int(m.levels), amplification=str(m.amplification), color_space=str(m.color_space),
      chroma_attenuation=float(m.chroma_attenuation),
      pyr_up_border=str(m.get('pyr_up_border', 'cv2')))


def build_model(model_config: ml_collections.ConfigDict, num_classes: int,
                device: Optional[jax.Device] = None) -> MPT:
  """Builds :class:`MPT` from ``config.model`` (backbone variant, prompts, adapters, motion).

  The prompt and adapter types are those of :func:`mpt_jax.partition.resolve_architecture`: what the
  training strategy implies unless the config sets them explicitly (a contradiction raises
  :class:`mpt_jax.partition.StrategyError`). ``config.model.dtype`` and ``config.model.attention``
  (``auto`` included) are resolved for ``device`` (default: this process's first local device) by
  :func:`mpt_jax.models.vit.resolve_dtype` and :func:`mpt_jax.models.attention.resolve_attention`;
  the model's ``dtype`` and ``attention`` say what was chosen.
  """
  prompt_type, adapter_type = partition.resolve_architecture(model_config)
  is_clip = clip_lib.is_clip(model_config.vit)
  if is_clip and model_config.input_norm != 'clip':
    raise clip_lib.ClipConfigError(f'config.model.input_norm must be \'clip\' for the CLIP '
                                   f'backbone {model_config.vit!r}, got {model_config.input_norm!r}')
  if is_clip:
    backbone = clip_lib.clip_config(model_config.vit)
  else:
    try:
      backbone = vit.vit_config(model_config.vit)
    except ValueError as e:
      raise errors.UserError(f'config.model.vit: {e}') from e
  for key in ('patch_size', 'hidden_size', 'mlp_dim', 'num_heads', 'num_layers'):
    override = model_config.get(f'vit_{key}', None)
    if override:
      backbone[key] = override
  device = device or jax.local_devices()[0]
  try:
    dtype = vit.resolve_dtype(model_config.get('dtype', 'float32'),
                              bool(model_config.get('bfloat16_keeps_accuracy', False)), device)
  except ValueError as e:
    raise errors.UserError(str(e)) from e
  try:
    attention = attention_lib.resolve_attention(model_config.get('attention', 'auto'), dtype, device)
  except ValueError as e:
    raise errors.UserError(str(e)) from e
  tokenizer_init = model_config.get('tokenizer_init', 'middle')
  if tokenizer_init not in tokenizer_lib.INITS:
    raise errors.UserError(f'config.model.tokenizer_init must be one of '
                           f'{", ".join(tokenizer_lib.INITS)}, got {tokenizer_init!r}')
  tokenizer_grid = int(model_config.get('tokenizer_grid', 1))
  tokenizer_rows = int(model_config.image_size) // int(model_config.tokenizer_patch)
  if not 1 <= tokenizer_grid <= tokenizer_rows:
    raise errors.UserError(f'config.model.tokenizer_grid must lie in 1..{tokenizer_rows} (the '
                           f'rows of {model_config.tokenizer_patch} px patches of the '
                           f'{model_config.image_size} px frame), got {tokenizer_grid}')
  if model_config.image_size % backbone.patch_size:
    raise errors.UserError(f'config.model.image_size {model_config.image_size} is not a multiple '
                           f'of the patch size {backbone.patch_size}')
  return MPT(
      num_classes=num_classes,
      backbone=Backbone('clip' if is_clip else 'vit', int(backbone.patch_size),
                        int(backbone.hidden_size), int(backbone.mlp_dim),
                        int(backbone.num_heads), int(backbone.num_layers)),
      image_size=int(model_config.image_size), input_modality=model_config.input_modality,
      input_norm=model_config.input_norm, prompt_type=prompt_type,
      num_prompts=int(model_config.num_prompts), adapter_type=adapter_type,
      adapter_reduction=int(model_config.adapter_reduction),
      tokenizer=Tokenizer(int(model_config.tokenizer_dim), int(model_config.tokenizer_patch),
                          tokenizer_init, tokenizer_grid),
      magnifier=build_magnifier(model_config),
      compute=Compute(dtype, attention, bool(model_config.get('remat', False)),
                      bool(model_config.get('cls_only_last_block', True))))


# The leaves that the blocks' products cast to the compute dtype (Flax's Dense and DenseGeneral
# with ``dtype`` promote kernel and bias to it): the attention projections and the MLP.
_PRODUCT_LEAF = re.compile(r'^Transformer/encoderblock_\d+/(MultiHeadDotProductAttention_1/'
                           r'(query|key|value|out)|MlpBlock_3/Dense_[01])/(kernel|bias)$')


def frozen_for_compute(frozen: Dict[str, Any], dtype: str) -> Dict[str, Any]:
  """The flat frozen leaves as the training step reads them: with ``dtype`` ``bfloat16`` the
  backbone's product kernels and biases (the attention projections and the MLP, what the blocks
  cast to bfloat16 in every call) cast once, here, instead of in every step; the other leaves
  (LayerNorms, embeddings, the patch conv) stay float32. The step's results are the same bits
  (the cast is the same rounding), and the frozen backbone takes half the memory. ``float32``:
  ``frozen`` itself."""
  if dtype == 'float32':
    return frozen
  target = vit.compute_dtype(dtype)
  return {k: (jnp.asarray(v, target) if _PRODUCT_LEAF.match(k) else v) for k, v in frozen.items()}


def input_shape(model_config: ml_collections.ConfigDict) -> Tuple[int, ...]:
  """Shape of one clip: (T, H, W, 3)."""
  s = int(model_config.image_size)
  return (int(model_config.num_frames), s, s, 3)
