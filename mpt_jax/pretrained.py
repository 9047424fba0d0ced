"""Loading the ImageNet-21k ViT checkpoints from local files, and backbone features.

Supported files (chosen by ``config.model.pretrained_path``; nothing is ever downloaded):

* the original ``ViT-B_16.npz`` / ``ViT-B_32.npz`` and the AugReg ``.npz`` files: flat ``/``-joined
  keys with the pre-Linen numbering (``MultiHeadDotProductAttention_1``, ``LayerNorm_2``,
  ``MlpBlock_3``), optionally under an ``opt/target/`` prefix. Files re-saved with Linen numbering
  (``MultiHeadDotProductAttention_0``, ``LayerNorm_1``, ``MlpBlock_0``) are accepted too;
* HuggingFace ``google/vit-base-patch16-224-in21k`` ``model.safetensors`` (classic transformers key
  names, with or without a ``vit.`` prefix). The layout is recognised from the keys in the file.

``pre_logits`` and the 21k ``head`` are dropped. The position embedding is resampled bilinearly
(``scipy.ndimage.zoom``, order 1, as ``vit_jax``) when the patch grid differs. Missing, unexpected or
mis-shaped keys raise :class:`CheckpointError` naming them. ``.npz`` files are opened with
``allow_pickle=False``.
"""

import os
import re
import zipfile
from typing import Any, Dict, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.ndimage
from flax import traverse_util

from mpt_jax import errors
from mpt_jax import host_memory
from mpt_jax import partition
from mpt_jax.models import clip as clip_lib
from mpt_jax.models import mpt as mpt_lib
from mpt_jax.models import vit

DROPPED_PREFIXES = ('pre_logits/', 'head/')
_LINEN_TO_FILE = {'MultiHeadDotProductAttention_0': 'MultiHeadDotProductAttention_1',
                  'LayerNorm_1': 'LayerNorm_2', 'MlpBlock_0': 'MlpBlock_3'}


class CheckpointError(errors.UserError):
  """A checkpoint file that cannot be loaded into the model (the message names the file and keys)."""


def _read_npz(path: str) -> Dict[str, np.ndarray]:
  if not zipfile.is_zipfile(path):
    with open(path, 'rb') as f:
      head = f.read(6)
    what = ('an empty file' if not head else 'a single .npy array, not an .npz archive'
            if head == b'\x93NUMPY' else 'not an .npz file (an .npz is a zip archive)')
    raise CheckpointError(f'{path}: {what}; give the ViT-B_16.npz or model.safetensors checkpoint')
  try:
    with np.load(path, allow_pickle=False) as data:
      return {k: np.asarray(data[k]) for k in data.files}
  except ValueError as e:
    if 'pickle' in str(e):
      raise CheckpointError(f'{path}: holds object (pickled) arrays, which are never loaded; a '
                            'ViT checkpoint holds plain number arrays') from e
    raise CheckpointError(
        f'{path}: not a readable .npz checkpoint ({type(e).__name__}: {e})') from e
  except (zipfile.BadZipFile, OSError, EOFError) as e:
    raise CheckpointError(
        f'{path}: not a readable .npz checkpoint ({type(e).__name__}: {e})') from e


def _read_safetensors(path: str) -> Dict[str, np.ndarray]:
  try:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    return dict(load_file(path))
  except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers.
    raise CheckpointError(f'{path}: not a readable .safetensors checkpoint ({e})') from e


def _normalise_npz_keys(flat: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Strips ``opt/target/`` and maps Linen numbering back to the file's pre-Linen names."""
  out = {}
  for key, value in flat.items():
    if key.startswith('opt/target/'):
      key = key[len('opt/target/'):]
    elif key.startswith('opt/'):
      continue  # optimizer state of a training checkpoint
    parts = key.split('/')
    if len(parts) > 2 and parts[0] == 'Transformer' and parts[1].startswith('encoderblock_'):
      parts[2] = _LINEN_TO_FILE.get(parts[2], parts[2])
    out['/'.join(parts)] = value
  return out


def _convert_hf(flat: Dict[str, np.ndarray], num_heads: int) -> Dict[str, np.ndarray]:
  """Maps HuggingFace ViT keys (classic naming) onto the vit_jax tree."""
  flat = {(k[4:] if k.startswith('vit.') else k): v for k, v in flat.items()}
  out: Dict[str, np.ndarray] = {}
  unknown = []
  for key, w in flat.items():
    w = np.asarray(w)
    if key == 'embeddings.cls_token':
      out['cls'] = w
    elif key == 'embeddings.position_embeddings':
      out['Transformer/posembed_input/pos_embedding'] = w
    elif key == 'embeddings.patch_embeddings.projection.weight':
      out['embedding/kernel'] = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif key == 'embeddings.patch_embeddings.projection.bias':
      out['embedding/bias'] = w
    elif key in ('layernorm.weight', 'layernorm.bias'):
      out['Transformer/encoder_norm/' + ('scale' if key.endswith('weight') else 'bias')] = w
    elif key.startswith(('pooler.', 'classifier.')):
      out['pre_logits/' + key] = w  # dropped below
    else:
      m = re.fullmatch(r'encoder\.layer\.(\d+)\.(.+)\.(weight|bias)', key)
      if not m:
        unknown.append(key)
        continue
      blk = f'Transformer/encoderblock_{int(m.group(1))}/'
      name, kind = m.group(2), m.group(3)
      d = w.shape[-1] if kind == 'weight' else w.shape[0]
      if name in ('layernorm_before', 'layernorm_after'):
        ln = 'LayerNorm_0' if name == 'layernorm_before' else 'LayerNorm_2'
        out[blk + f'{ln}/' + ('scale' if kind == 'weight' else 'bias')] = w
      elif name.startswith('attention.attention.'):
        proj = name.rsplit('.', 1)[1]  # query | key | value
        base = blk + f'MultiHeadDotProductAttention_1/{proj}/'
        if kind == 'weight':
          out[base + 'kernel'] = w.T.reshape(d, num_heads, -1)
        else:
          out[base + 'bias'] = w.reshape(num_heads, -1)
      elif name == 'attention.output.dense':
        base = blk + 'MultiHeadDotProductAttention_1/out/'
        if kind == 'weight':
          out[base + 'kernel'] = w.T.reshape(num_heads, -1, w.shape[0])
        else:
          out[base + 'bias'] = w
      elif name in ('intermediate.dense', 'output.dense'):
        dense = 'Dense_0' if name == 'intermediate.dense' else 'Dense_1'
        out[blk + f'MlpBlock_3/{dense}/' + ('kernel' if kind == 'weight' else 'bias')] = (
            w.T if kind == 'weight' else w)
      else:
        unknown.append(key)
  if unknown:
    raise CheckpointError(f'Unexpected HuggingFace ViT keys: {sorted(unknown)[:10]}')
  return out


def read_checkpoint(path: str, num_heads: int) -> Dict[str, np.ndarray]:
  """Reads a checkpoint file into flat vit_jax keys (``pre_logits``/``head`` still included)."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.isdir(path):
    raise CheckpointError(f'config.model.pretrained_path {path} is a folder; give the checkpoint '
                          'file itself (ViT-B_16.npz, an AugReg .npz or model.safetensors)')
  if not os.path.isfile(path):
    raise CheckpointError(f'Pretrained checkpoint not found: {path} (set config.model.pretrained_path '
                          'to a local ViT-B_16.npz, an AugReg .npz or a model.safetensors)')
  if path.endswith('.safetensors'):
    flat = _read_safetensors(path)
    if clip_lib.is_hf_clip(flat):  # openai/clip-vit-base-patch16/-32 (CLIPModel or CLIPVisionModel)
      out, unknown = clip_lib.convert_hf_state(flat, num_heads)
      if unknown:
        raise CheckpointError(f'{path}: unexpected HuggingFace CLIP keys: {unknown[:10]}')
      return out
    if any(k.startswith(('embeddings.', 'vit.embeddings.')) for k in flat):
      return _convert_hf(flat, num_heads)
    return _normalise_npz_keys(flat)  # a safetensors file written with vit_jax names
  flat = _read_npz(path)
  if any(k.startswith(('embeddings.', 'vit.embeddings.')) for k in flat):
    return _convert_hf(flat, num_heads)
  return _normalise_npz_keys(flat)


def resample_posemb(posemb: np.ndarray, num_tokens: int) -> np.ndarray:
  """Bilinearly resizes a (1, 1 + g*g, D) position embedding to ``num_tokens`` rows (class row kept)."""
  tok, grid = posemb[:, :1], posemb[0, 1:]
  g_old, g_new = int(round(np.sqrt(len(grid)))), int(round(np.sqrt(num_tokens - 1)))
  if g_old * g_old != len(grid) or g_new * g_new != num_tokens - 1:
    raise CheckpointError(f'Cannot resample a position embedding of {posemb.shape[1]} rows to '
                          f'{num_tokens}: the grids are not square')
  grid = scipy.ndimage.zoom(grid.reshape(g_old, g_old, -1), (g_new / g_old, g_new / g_old, 1),
                            order=1)
  return np.concatenate([tok, grid.reshape(1, g_new * g_new, -1)], axis=1)


def backbone_shapes(params: Any) -> Dict[str, Tuple[int, ...]]:
  """Flat ``{key: shape}`` of the backbone part of a parameter tree."""
  flat = traverse_util.flatten_dict(params)
  return {'/'.join(k): tuple(v.shape) for k, v in flat.items()
          if partition.part_of(k) == 'backbone'}


def load_backbone(path: str, params: Any, num_heads: int) -> Any:
  """Returns ``params`` with every backbone leaf replaced by the checkpoint's.

  Args:
    path: checkpoint file.
    params: the model's initialised parameters (their backbone shapes are the target).
    num_heads: attention heads (to reshape HuggingFace attention weights).

  Raises:
    CheckpointError: naming missing, unexpected or mis-shaped keys.
  """
  ckpt = read_checkpoint(path, num_heads)
  ckpt = {k: v for k, v in ckpt.items() if not k.startswith(DROPPED_PREFIXES)}
  expected = backbone_shapes(params)
  missing = sorted(set(expected) - set(ckpt))
  extra = sorted(set(ckpt) - set(expected))
  if missing or extra:
    raise CheckpointError(f'{path}: keys do not match the {len(expected)}-leaf backbone. '
                          f'Missing: {missing[:10]}{" ..." if len(missing) > 10 else ""}; '
                          f'unexpected: {extra[:10]}{" ..." if len(extra) > 10 else ""}')
  posemb_key = 'Transformer/posembed_input/pos_embedding'
  if ckpt[posemb_key].shape != expected[posemb_key] and ckpt[posemb_key].ndim == 3 and (
      ckpt[posemb_key].shape[2] == expected[posemb_key][2]):
    ckpt[posemb_key] = resample_posemb(ckpt[posemb_key], expected[posemb_key][1])
  bad = [f'{k}: file {ckpt[k].shape} vs model {expected[k]}' for k in sorted(expected)
         if tuple(ckpt[k].shape) != expected[k]]
  if bad:
    raise CheckpointError(f'{path}: mis-shaped keys (wrong ViT variant?): {bad[:10]}')
  flat = traverse_util.flatten_dict(params, sep='/')
  for key in sorted(expected):
    value = ckpt[key]
    if value.dtype.kind == 'V':  # bfloat16 stored by np.savez as raw void
      value = value.view(jnp.bfloat16)
    if value.dtype.kind not in 'fiu' and value.dtype != jnp.bfloat16:
      raise CheckpointError(f'{path}: key {key} holds {value.dtype} values, not numbers')
    value = jnp.asarray(value, dtype=flat[key].dtype)
    if not bool(jnp.isfinite(value).all()):
      bad = int((~jnp.isfinite(value)).sum())
      raise CheckpointError(f'{path}: key {key} holds {bad} NaN or infinite value(s); the file is '
                            'damaged (download it again)')
    flat[key] = value
  return traverse_util.unflatten_dict(flat, sep='/')


def check_backbone_source(model_config) -> None:
  """Refuses a strategy that starts from a pretrained backbone when ``pretrained_path`` is empty.

  Needs no file and no data: the training run calls it before loading anything.
  """
  strategy = model_config.training_strategy
  if (not str(model_config.pretrained_path or '').strip() and strategy != 'scratch'
      and not model_config.get('allow_random_backbone', False)):
    raise CheckpointError(
        f'training_strategy {strategy!r} starts from a pretrained backbone, but '
        'config.model.pretrained_path is empty. Download ViT-B_16.npz (ImageNet-21k) by hand and '
        'pass --config.model.pretrained_path=/path/to/ViT-B_16.npz (or use '
        '--config.model.training_strategy=scratch, or --config.model.allow_random_backbone=True to '
        'run on purpose with a random frozen backbone).')


# The model's initialiser, compiled once per model and input shape in a process: a model is a
# static argument (Flax modules hash and compare by their fields), so the seeds of a run and runs of
# the same model (a study's variants, a table's rows) reuse the program instead of tracing again.
_init = jax.jit(lambda model, rng, clip: model.init(rng, clip)['params'], static_argnums=0)


def init_params(model: mpt_lib.MPT, model_config, rng: jax.Array) -> Any:
  """Initialises the model and loads the pretrained backbone when ``pretrained_path`` is set."""
  check_backbone_source(model_config)
  strategy = model_config.training_strategy
  clip = jnp.zeros((1,) + mpt_lib.input_shape(model_config), jnp.float32)
  params = _init(model, rng, clip)
  if model_config.pretrained_path and strategy != 'scratch':
    params = load_backbone(model_config.pretrained_path, params, model.backbone.num_heads)
  # Drawing ViT-B/16's random init (and reading the file) leaves freed heap behind.
  host_memory.release_free_memory()
  return params


# ---------------------------------------------------------------------------------------------
# Features-only API.

def load_vit(path: str, variant: str = 'B_16', image_size: int = 224) -> Tuple[vit.VisionTransformer, Any]:
  """Loads a plain ViT (or CLIP vision tower) feature extractor from a local checkpoint.

  Args:
    path: ``.npz`` or ``.safetensors`` checkpoint (a HuggingFace CLIP ``model.safetensors`` for
      the ``clip_*`` variants).
    variant: backbone variant name (``B_16``, ``B_32``..., ``clip_B_16``, ``clip_B_32``).
    image_size: input side length (the position embedding is resampled if it differs).

  Returns:
    ``(model, params)`` for :func:`backbone_features`.
  """
  if clip_lib.is_clip(variant):
    cfg = clip_lib.clip_config(variant)
    model = clip_lib.build_tower(variant)
  else:
    cfg = vit.vit_config(variant)
    model = vit.VisionTransformer(cfg.patch_size, cfg.hidden_size, cfg.mlp_dim, cfg.num_heads,
                                  cfg.num_layers)
  params = jax.jit(model.init)(jax.random.PRNGKey(0),
                               jnp.zeros((1, image_size, image_size, 3)))['params']
  return model, load_backbone(path, params, cfg.num_heads)


def backbone_features(model: vit.VisionTransformer, params: Any, images: jnp.ndarray,
                      input_norm: str = 'minus_one_one') -> jnp.ndarray:
  """Class-token features (after the encoder norm) of (B, H, W, 3) images in [0, 1].

  A CLIP tower always gets CLIP's mean/std normalisation (``input_norm`` is ignored for it).

  Example:
    >>> model, params = load_vit('/data/ViT-B_16.npz')
    >>> feats = backbone_features(model, params, images)   # (B, 768)
  """
  if isinstance(model, clip_lib.ClipVisionTransformer):
    input_norm = 'clip'
  return _features_fn(model, input_norm)(params, images)


_FEATURE_FNS: Dict[Any, Any] = {}


def _features_fn(model, input_norm):
  key = (model, input_norm)
  if key not in _FEATURE_FNS:
    _FEATURE_FNS[key] = jax.jit(
        lambda p, x: model.apply({'params': p}, mpt_lib.normalise_input(x, input_norm)))
  return _FEATURE_FNS[key]
