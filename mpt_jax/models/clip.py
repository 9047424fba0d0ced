"""CLIP ViT vision towers (Table IX) with CLIP's own semantics, in the tree layout of the in21k ViT.

CLIP's image encoder (Radford et al. 2021; HuggingFace ``CLIPVisionModel``) differs from the
``vit_jax`` ViT in five places, all kept here:

* the patch embedding conv has no bias;
* the class embedding is a (D,) vector prepended to the patch tokens, and the position embedding is
  added to ``[cls, patches]``;
* a LayerNorm (``pre_layrnorm`` in HuggingFace) runs on the embedded tokens before the first block;
* blocks are pre-LN with LayerNorm eps 1e-5 and QuickGELU (``x * sigmoid(1.702 x)``) in the MLP;
* the final LayerNorm (``post_layernorm``) is applied to the class token, which is the feature.

Images in [0, 1] are normalised with CLIP's mean/std (``input_norm='clip'`` in
:func:`mpt_jax.models.mpt.normalise_input`).

The parameter tree reuses the ViT's top-level names so that :mod:`mpt_jax.partition` and the frozen
backbone handling work unchanged::

  embedding/kernel                         patch conv (HWIO), no bias
  cls                                      (1, 1, D) class embedding
  Transformer/posembed_input/pos_embedding (1, 1 + N, D)
  Transformer/pre_norm/{scale,bias}        CLIP's LayerNorm before the encoder
  Transformer/encoderblock_{i}/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2,
                                MlpBlock_3, adapter}
  Transformer/encoder_norm/{scale,bias}    CLIP's post LayerNorm

MPT's additions are inserted exactly as for the in21k ViT: the K prompt tokens go directly after the
class token at the encoder's input (here after CLIP's pre-LayerNorm, i.e. where the first block's
input begins; they carry no position embedding), and every block carries a
:class:`~mpt_jax.models.adapter.GroupAdapter` on its MLP output before the residual add.

:func:`convert_hf_state` maps a HuggingFace ``openai/clip-vit-base-patch16`` / ``-patch32``
``model.safetensors`` (full ``CLIPModel``, whose text tower and projections are ignored, or
``CLIPVisionModel``) onto this tree.
"""

import re
from typing import Dict, List, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from mpt_jax import errors
from mpt_jax.models import vit

# OpenAI CLIP's input normalisation (the values of CLIPImageProcessor for the openai checkpoints).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
LN_EPS = 1e-5

# Vision towers of openai/clip-vit-base-patch16 / -patch32; ``clip_tiny`` is ours (tests).
CLIP_CONFIGS = {
    'clip_B_16': dict(patch_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    'clip_B_32': dict(patch_size=32, hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    'clip_tiny': dict(patch_size=8, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2),
}

# HuggingFace keys that are not part of the vision tower (ignored when loading).
_IGNORED = re.compile(r'^(text_model\.|text_projection\.|visual_projection\.|logit_scale$)'
                      r'|position_ids$')


class ClipConfigError(errors.UserError):
  """A config that cannot build a CLIP model (the message names the key)."""


def is_clip(name: str) -> bool:
  """Whether a ``config.model.vit`` value names a CLIP tower."""
  return str(name).startswith('clip_')


def clip_config(name: str) -> ml_collections.ConfigDict:
  """Hyper-parameters of a CLIP vision tower (``clip_B_16``, ``clip_B_32``, ``clip_tiny``)."""
  if name not in CLIP_CONFIGS:
    raise ClipConfigError(f'config.model.vit: unknown CLIP variant {name!r}; known: '
                          f'{sorted(CLIP_CONFIGS)}')
  return ml_collections.ConfigDict(dict(name=name, **CLIP_CONFIGS[name]))


def quick_gelu(x: jnp.ndarray) -> jnp.ndarray:
  """CLIP's activation: ``x * sigmoid(1.702 x)``."""
  return vit.activation_fn('quick_gelu')(x)


# CLIP's encoder: LayerNorm eps 1e-5, QuickGELU, Flax's default initialisers, a ``pre_norm``.
CLIP_STYLE = vit.Style(ln_eps=LN_EPS, activation='quick_gelu', vit_init=False, pre_norm=True)


class ClipBlock(vit.Encoder1DBlock):
  """CLIP's pre-LN encoder layer: :class:`vit.Encoder1DBlock` with LayerNorm eps 1e-5, QuickGELU
  and Flax's default initialisers; MPT's adapter sits on the MLP output before its residual add."""
  ln_eps: float = CLIP_STYLE.ln_eps
  activation: str = CLIP_STYLE.activation
  vit_init: bool = CLIP_STYLE.vit_init


class Encoder(vit.Encoder):
  """The ``Transformer`` subtree of a CLIP tower: :class:`vit.Encoder` with CLIP's ``pre_norm``
  LayerNorm after the position embedding (the prompts go in after it, so they carry neither),
  eps 1e-5, QuickGELU and Flax's default initialisers. The final ``encoder_norm`` is CLIP's
  ``post_layernorm`` (the features are its class token)."""
  style: vit.Style = CLIP_STYLE


def embed_patches(module: nn.Module, images: jnp.ndarray, patch_size: int,
                  hidden_size: int) -> jnp.ndarray:
  """CLIP's bias-free patch conv and class embedding; call inside ``module``'s compact method.

  Args:
    module: the enclosing compact module (its scope receives ``embedding`` and ``cls``).
    images: (B, H, W, 3) images after CLIP's normalisation.
    patch_size: patch size.
    hidden_size: token width D.

  Returns:
    (B, 1 + N, D) tokens without position embedding.
  """
  x = nn.Conv(hidden_size, (patch_size, patch_size), strides=(patch_size, patch_size),
              padding='VALID', use_bias=False, name='embedding')(images)
  b, h, w, d = x.shape
  x = x.reshape(b, h * w, d)
  cls = module.param('cls', nn.initializers.normal(stddev=0.02), (1, 1, d))
  return jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)


class ClipVisionTransformer(nn.Module):
  """Plain CLIP vision tower (no head, no projection): class token after the final LayerNorm.

  Takes images already normalised with CLIP's mean/std (as :class:`vit.VisionTransformer` takes
  normalised images); :func:`mpt_jax.pretrained.backbone_features` applies that normalisation.

  Attributes:
    patch_size: patch size.
    hidden_size: token width.
    mlp_dim: MLP width.
    num_heads: attention heads.
    num_layers: encoder blocks.
  """
  patch_size: int
  hidden_size: int
  mlp_dim: int
  num_heads: int
  num_layers: int

  @nn.compact
  def __call__(self, images: jnp.ndarray) -> jnp.ndarray:
    x = embed_patches(self, images, self.patch_size, self.hidden_size)
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads, cls_only_last=True,
                name='Transformer')(x)
    return x[:, 0]


def build_tower(name: str) -> ClipVisionTransformer:
  """The plain tower of a named CLIP variant."""
  cfg = clip_config(name)
  return ClipVisionTransformer(cfg.patch_size, cfg.hidden_size, cfg.mlp_dim, cfg.num_heads,
                               cfg.num_layers)


# ---------------------------------------------------------------------------------------------
# HuggingFace checkpoint layout.

def is_hf_clip(flat: Dict[str, np.ndarray]) -> bool:
  """Whether a flat state dict is a HuggingFace CLIPModel / CLIPVisionModel file."""
  return any(k.startswith('vision_model.embeddings.') for k in flat)


def _reshape(w: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
  """``w.reshape(shape)``, or ``w`` unchanged when the sizes disagree (the caller's shape check
  then reports the key as mis-shaped instead of failing here)."""
  try:
    return w.reshape(shape)
  except ValueError:
    return w


def _ln(w: np.ndarray, kind: str) -> Tuple[str, np.ndarray]:
  return ('scale' if kind == 'weight' else 'bias'), w


def convert_hf_state(flat: Dict[str, np.ndarray],
                     num_heads: int) -> Tuple[Dict[str, np.ndarray], List[str]]:
  """Maps HuggingFace CLIP vision keys onto this module's flat ``/`` tree.

  Args:
    flat: the file's tensors (``vision_model.*`` plus, in a full CLIPModel file, the text tower).
    num_heads: attention heads (to split the q/k/v/out projections per head).

  Returns:
    ``(converted, unknown)``: the vision tower's leaves under this module's names, and the keys of
    the file that are neither vision-tower keys nor known non-vision keys (the caller reports them).
  """
  out: Dict[str, np.ndarray] = {}
  unknown: List[str] = []
  for key, w in flat.items():
    if _IGNORED.search(key):
      continue
    w = np.asarray(w)
    if not key.startswith('vision_model.'):
      unknown.append(key)
      continue
    name = key[len('vision_model.'):]
    if name == 'embeddings.class_embedding':
      out['cls'] = w.reshape(1, 1, -1)
    elif name == 'embeddings.patch_embedding.weight':
      out['embedding/kernel'] = w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    elif name == 'embeddings.position_embedding.weight':
      out['Transformer/posembed_input/pos_embedding'] = w[None]
    elif name in ('pre_layrnorm.weight', 'pre_layrnorm.bias'):
      leaf, v = _ln(w, name.rsplit('.', 1)[1])
      out[f'Transformer/pre_norm/{leaf}'] = v
    elif name in ('post_layernorm.weight', 'post_layernorm.bias'):
      leaf, v = _ln(w, name.rsplit('.', 1)[1])
      out[f'Transformer/encoder_norm/{leaf}'] = v
    else:
      m = re.fullmatch(r'encoder\.layers\.(\d+)\.(.+)\.(weight|bias)', name)
      if not m:
        unknown.append(key)
        continue
      blk = f'Transformer/encoderblock_{int(m.group(1))}/'
      sub, kind = m.group(2), m.group(3)
      if sub in ('layer_norm1', 'layer_norm2'):
        leaf, v = _ln(w, kind)
        out[blk + ('LayerNorm_0/' if sub == 'layer_norm1' else 'LayerNorm_2/') + leaf] = v
      elif sub in ('self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj'):
        proj = {'q': 'query', 'k': 'key', 'v': 'value'}[sub[len('self_attn.')]]
        base = blk + f'MultiHeadDotProductAttention_1/{proj}/'
        if kind == 'weight':  # torch Linear (out, in) -> (in, heads, head_dim)
          out[base + 'kernel'] = _reshape(w.T, (w.shape[1], num_heads, -1))
        else:
          out[base + 'bias'] = _reshape(w, (num_heads, -1))
      elif sub == 'self_attn.out_proj':
        base = blk + 'MultiHeadDotProductAttention_1/out/'
        if kind == 'weight':  # (out, in) -> (heads, head_dim, out)
          out[base + 'kernel'] = _reshape(w.T, (num_heads, -1, w.shape[0]))
        else:
          out[base + 'bias'] = w
      elif sub in ('mlp.fc1', 'mlp.fc2'):
        dense = 'Dense_0' if sub == 'mlp.fc1' else 'Dense_1'
        out[blk + f'MlpBlock_3/{dense}/' + ('kernel' if kind == 'weight' else 'bias')] = (
            w.T if kind == 'weight' else w)
      else:
        unknown.append(key)
  return out, sorted(unknown)
