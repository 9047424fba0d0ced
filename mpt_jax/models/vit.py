"""ViT backbone with the original ``vit_jax`` semantics and parameter names.

The module and parameter names match the keys of the released ImageNet-21k ``.npz`` files (including
their pre-Linen numbering ``LayerNorm_0``, ``MultiHeadDotProductAttention_1``, ``LayerNorm_2``,
``MlpBlock_3``), so a checkpoint loads as a plain tree merge:

  embedding/{kernel,bias}                 patch embedding, a 16x16/16 conv (HWIO kernel)
  cls                                     (1, 1, D) class token, concatenated before the position
                                          embedding is added
  Transformer/posembed_input/pos_embedding  (1, 1 + N, D)
  Transformer/encoderblock_{i}/...        pre-LN blocks, LayerNorm eps 1e-6, tanh-approx GELU
  Transformer/encoder_norm

Two additions serve MPT and carry their own names, so they never collide with checkpoint keys:
prompt tokens inserted after the class token (VPT insertion, no position embedding) and an
``adapter`` submodule in every block (see :mod:`mpt_jax.models.adapter`).
"""

from typing import Optional

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from mpt_jax.models import adapter as adapter_lib

# Backbone variants (vit_jax/configs/models.py); ``small_demo`` (the CPU demo) and ``tiny`` (tests) are ours.
VIT_CONFIGS = {
    'B_16': dict(patch_size=16, hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    'B_32': dict(patch_size=32, hidden_size=768, mlp_dim=3072, num_heads=12, num_layers=12),
    'S_16': dict(patch_size=16, hidden_size=384, mlp_dim=1536, num_heads=6, num_layers=12),
    'Ti_16': dict(patch_size=16, hidden_size=192, mlp_dim=768, num_heads=3, num_layers=12),
    'small_demo': dict(patch_size=8, hidden_size=64, mlp_dim=128, num_heads=4, num_layers=4),
    'tiny': dict(patch_size=8, hidden_size=32, mlp_dim=64, num_heads=2, num_layers=2),
}


def vit_config(name: str) -> ml_collections.ConfigDict:
  """Returns the backbone hyper-parameters of a named variant (``B_16``, ``B_32``, ``tiny``...)."""
  if name not in VIT_CONFIGS:
    raise ValueError(f'Unknown ViT variant {name!r}; known: {sorted(VIT_CONFIGS)}')
  return ml_collections.ConfigDict(dict(name=name, **VIT_CONFIGS[name]))


class AddPositionEmbs(nn.Module):
  """Adds a learned position embedding (``pos_embedding``, shape (1, L, D))."""

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    shape = (1, x.shape[1], x.shape[2])
    pe = self.param('pos_embedding', nn.initializers.normal(stddev=0.02), shape)
    return x + pe


class MlpBlock(nn.Module):
  """Transformer MLP: Dense -> GELU (tanh approximation) -> Dense."""
  mlp_dim: int

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    y = nn.Dense(self.mlp_dim, kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6), name='Dense_0')(x)
    y = nn.gelu(y, approximate=True)
    return nn.Dense(d, kernel_init=nn.initializers.xavier_uniform(),
                    bias_init=nn.initializers.normal(stddev=1e-6), name='Dense_1')(y)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block with an adapter on the MLP output (before its residual add).

  Attributes:
    mlp_dim: MLP width.
    num_heads: attention heads.
    adapter_type: ``group`` | ``shared`` | ``none``.
    adapter_reduction: bottleneck reduction ``r``.
    num_prompts: prompt tokens after the class token (they form the adapter's motion group).
  """
  mlp_dim: int
  num_heads: int
  adapter_type: str = 'none'
  adapter_reduction: int = 8
  num_prompts: int = 0

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    y = nn.LayerNorm(epsilon=1e-6, name='LayerNorm_0')(x)
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, kernel_init=nn.initializers.xavier_uniform(),
        broadcast_dropout=False, deterministic=True, dropout_rate=0.0,
        name='MultiHeadDotProductAttention_1')(y, y)
    x = x + y
    y = nn.LayerNorm(epsilon=1e-6, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, name='MlpBlock_3')(y)
    y = adapter_lib.GroupAdapter(self.adapter_type, self.adapter_reduction, self.num_prompts,
                                 name='adapter')(y)
    return x + y


class Encoder(nn.Module):
  """The ``Transformer`` subtree: position embedding, prompt insertion, blocks, final norm.

  Attributes:
    num_layers: number of encoder blocks.
    mlp_dim: MLP width.
    num_heads: attention heads.
    adapter_type: adapter variant used in every block.
    adapter_reduction: bottleneck reduction ``r``.
    num_prompts: number of prompt tokens the caller passes (0 for none).
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  adapter_type: str = 'none'
  adapter_reduction: int = 8
  num_prompts: int = 0

  @nn.compact
  def __call__(self, x: jnp.ndarray, prompts: Optional[jnp.ndarray] = None,
               deep_prompts: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Encodes ``[cls, patches]``.

    Args:
      x: (B, 1 + N, D) class token and patch embeddings, without position embedding.
      prompts: optional (B, K, D) tokens inserted after the class token, after the position
        embedding is added (so they carry none).
      deep_prompts: optional (num_layers - 1, K, D) tokens that replace the prompt slots before
        every block after the first (VPT-deep).

    Returns:
      (B, 1 + K + N, D) encoded tokens after ``encoder_norm``.
    """
    x = AddPositionEmbs(name='posembed_input')(x)
    k = 0 if prompts is None else prompts.shape[1]
    if k != self.num_prompts:
      raise ValueError(f'Encoder built for {self.num_prompts} prompts, got {k}')
    if prompts is not None:
      x = jnp.concatenate([x[:, :1], prompts.astype(x.dtype), x[:, 1:]], axis=1)
    for lyr in range(self.num_layers):
      if deep_prompts is not None and lyr > 0:
        p = jnp.broadcast_to(deep_prompts[lyr - 1][None], (x.shape[0], k, x.shape[-1]))
        x = jnp.concatenate([x[:, :1], p.astype(x.dtype), x[:, 1 + k:]], axis=1)
      x = Encoder1DBlock(self.mlp_dim, self.num_heads, self.adapter_type, self.adapter_reduction,
                         k, name=f'encoderblock_{lyr}')(x)
    return nn.LayerNorm(epsilon=1e-6, name='encoder_norm')(x)


def embed_patches(module: nn.Module, images: jnp.ndarray, patch_size: int,
                  hidden_size: int) -> jnp.ndarray:
  """Applies the ``embedding`` conv and prepends ``cls``; must be called inside ``module``'s compact.

  Args:
    module: the enclosing compact module (its scope receives ``embedding`` and ``cls``).
    images: (B, H, W, 3) normalised images.
    patch_size: patch size.
    hidden_size: token width D.

  Returns:
    (B, 1 + N, D) tokens without position embedding.
  """
  x = nn.Conv(hidden_size, (patch_size, patch_size), strides=(patch_size, patch_size),
              padding='VALID', name='embedding')(images)
  b, h, w, d = x.shape
  x = x.reshape(b, h * w, d)
  cls = module.param('cls', nn.initializers.zeros, (1, 1, d))
  return jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)


class VisionTransformer(nn.Module):
  """Plain ViT feature extractor (no head): class-token features after ``encoder_norm``.

  This is the backbone alone, with exactly the checkpoint's tree, for users who only want features
  (:func:`mpt_jax.pretrained.backbone_features`) and for the "adapters off equals backbone" check.

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
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads, name='Transformer')(x)
    return x[:, 0]
