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

The blocks compute what Flax's modules compute, but their attention
(:func:`mpt_jax.models.attention.lean_attention`), activation and LayerNorm (:class:`LayerNorm`)
have hand-written gradients that keep less for the backward pass than autodiff does. With the frozen
backbone the backward pass still runs through every block (to reach the prompts and adapters), and
what autodiff kept of each block was most of a training step's memory: XLA's temporary buffers for
the ViT-B/16 MPT step at batch 16 went from 3.18 to 1.93 GiB, and less again with the log-sum-exp
attention and the late kernel transposes (:func:`mpt_jax.models.attention.lean_dot_general`)
(docs/benchmarks.md; ``benchmarks/bench_vs_peer.py`` measures the process's peak RSS).
"""

import dataclasses
import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from mpt_jax.models import adapter as adapter_lib
from mpt_jax.models import attention as attention_lib

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


ACTIVATIONS = ('gelu_tanh', 'quick_gelu')
DTYPES = ('float32', 'bfloat16')
# ``config.model.dtype``: a compute dtype, or ``auto`` (:func:`resolve_dtype`).
DTYPE_CHOICES = ('auto',) + DTYPES
# /proc/cpuinfo flags of CPUs with bfloat16 products in hardware (Intel AMX, AVX512-BF16; the
# latter also on AMD Zen 4 and later).
CPU_BF16_FLAGS = ('amx_bf16', 'avx512_bf16')


def cpu_flags(path: str = '/proc/cpuinfo') -> frozenset:
  """The CPU feature flags of ``/proc/cpuinfo`` (empty where the file is missing, as on macOS)."""
  try:
    with open(path) as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return frozenset()


def hardware_has_bfloat16(device, flags: Optional[frozenset] = None) -> bool:
  """Whether ``device`` multiplies bfloat16 in hardware: NVIDIA GPUs from Ampere (compute
  capability 8.0) on, TPUs, and CPUs with one of :data:`CPU_BF16_FLAGS` (``flags``, default
  :func:`cpu_flags`). Elsewhere XLA emulates bfloat16 products, no faster than float32."""
  if device.platform == 'tpu':
    return True
  if device.platform == 'gpu':
    try:
      major = float(str(getattr(device, 'compute_capability', '0')).split('.', 1)[0])
    except ValueError:
      major = 0
    return major >= 8
  if device.platform == 'cpu':
    flags = cpu_flags() if flags is None else flags
    return any(f in flags for f in CPU_BF16_FLAGS)
  return False


def resolve_dtype(name: str, bfloat16_keeps_accuracy: bool, device,
                  flags: Optional[frozenset] = None) -> str:
  """The compute dtype of ``config.model.dtype`` on ``device``.

  ``float32`` and ``bfloat16`` are kept as they are. ``auto`` is ``bfloat16`` where the hardware
  multiplies it (:func:`hardware_has_bfloat16`) AND ``config.model.bfloat16_keeps_accuracy`` says
  that bfloat16 keeps MPT's accuracy, ``float32`` otherwise.
  """
  if name not in DTYPE_CHOICES:
    raise ValueError(f'config.model.dtype must be one of {DTYPE_CHOICES}, got {name!r}')
  if name != 'auto':
    return name
  if bfloat16_keeps_accuracy and hardware_has_bfloat16(device, flags):
    return 'bfloat16'
  return 'float32'


def compute_dtype(name: str) -> Any:
  """The jnp dtype of a ``config.model.dtype`` name."""
  if name not in DTYPES:
    raise ValueError(f'dtype must be one of {DTYPES}, got {name!r}')
  return jnp.bfloat16 if name == 'bfloat16' else jnp.float32


dot_general_for = adapter_lib.dot_general_for


def _gelu_tanh(x):
  return nn.gelu(x, approximate=True)


def _quick_gelu(x):
  return x * jax.nn.sigmoid(1.702 * x)


def _input_only_vjp(fn: Callable[..., jnp.ndarray]) -> Callable[..., jnp.ndarray]:
  """``fn`` whose backward pass keeps only its inputs and recomputes the rest.

  For an elementwise step the intermediates that autodiff would keep (the tanh of the tanh GELU)
  are each another (B, tokens, width) array per block until the backward pass; recomputing them
  costs a few elementwise passes.
  """
  @jax.custom_vjp
  def f(*args):
    return fn(*args)

  def fwd(*args):
    return fn(*args), args

  def bwd(args, g):
    # The barrier keeps XLA from merging the recomputation with the forward's values (CSE).
    args, g = jax.lax.optimization_barrier((args, g))
    return jax.vjp(fn, *args)[1](g)

  f.defvjp(fwd, bwd)
  return f


_ACTIVATIONS = {'gelu_tanh': _input_only_vjp(_gelu_tanh),
                'quick_gelu': _input_only_vjp(_quick_gelu)}


def activation_fn(name: str) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """``gelu_tanh`` (the in21k ViT's tanh-approximated GELU) or ``quick_gelu`` (CLIP's).

  Both keep only their input for the backward pass (see :func:`_input_only_vjp`).
  """
  if name not in _ACTIVATIONS:
    raise ValueError(f'activation must be one of {ACTIVATIONS}, got {name!r}')
  return _ACTIVATIONS[name]


def _statistics(x, epsilon):
  """Flax's LayerNorm statistics: the mean and 1 / sqrt(var + eps), with ``use_fast_variance``'s
  variance E[x^2] - E[x]^2 clipped at 0."""
  mean = jnp.mean(x, axis=-1, keepdims=True)
  var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axis=-1, keepdims=True) - jnp.square(mean))
  return mean, jax.lax.rsqrt(var + epsilon)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray,
               epsilon: float) -> jnp.ndarray:
  """LayerNorm over the last axis whose backward pass keeps only ``x`` (see :class:`LayerNorm`)."""
  mean, rstd = _statistics(x, epsilon)
  return (x - mean) * (rstd * scale) + bias  # Flax's order of operations: the same bits.


def _layer_norm_fwd(x, scale, bias, epsilon):
  return layer_norm(x, scale, bias, epsilon), (x, scale)


def _layer_norm_bwd(epsilon, res, g):
  # The barrier keeps XLA from merging the recomputed statistics with the forward's (CSE), which
  # would keep the forward's normalised copy alive instead of ``x``.
  (x, scale), g = jax.lax.optimization_barrier((res, g))
  mean, rstd = _statistics(x, epsilon)
  x_hat = (x - mean) * rstd
  gs = g * scale
  dx = rstd * (gs - jnp.mean(gs, axis=-1, keepdims=True)
               - x_hat * jnp.mean(gs * x_hat, axis=-1, keepdims=True))
  batch_axes = tuple(range(g.ndim - 1))
  return dx, jnp.sum(g * x_hat, axis=batch_axes), jnp.sum(g, axis=batch_axes)


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class LayerNorm(nn.Module):
  """Flax's ``nn.LayerNorm`` (same parameters, names, initialisers and arithmetic) whose backward
  pass keeps only its input: autodiff would keep the centred and the normalised copies, each
  another (B, tokens, width) array per block, and XLA would materialise the scale broadcast to
  that shape for every block; the hand-written gradient recomputes the statistics instead.

  Attributes:
    epsilon: added to the variance.
  """
  epsilon: float = 1e-6

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    scale = self.param('scale', nn.initializers.ones, (d,))
    bias = self.param('bias', nn.initializers.zeros, (d,))
    return layer_norm(x, scale, bias, self.epsilon)


class MlpBlock(nn.Module):
  """Transformer MLP: Dense -> activation -> Dense.

  Attributes:
    mlp_dim: hidden width.
    activation: ``gelu_tanh`` (ViT) or ``quick_gelu`` (CLIP).
    vit_init: the in21k ViT's initialisers (Xavier kernels, N(0, 1e-6) biases); False: Flax's
      defaults (CLIP; only random initialisation differs, a checkpoint replaces both).
    dtype: compute dtype of the products (parameters stay float32).
  """
  mlp_dim: int
  activation: str = 'gelu_tanh'
  vit_init: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    d = x.shape[-1]
    init = (dict(kernel_init=nn.initializers.xavier_uniform(),
                 bias_init=nn.initializers.normal(stddev=1e-6)) if self.vit_init else {})
    dense = functools.partial(nn.Dense, dtype=self.dtype, dot_general=dot_general_for(self.dtype),
                              **init)
    y = dense(self.mlp_dim, name='Dense_0')(x)
    y = activation_fn(self.activation)(y)
    return dense(d, name='Dense_1')(y)


class Encoder1DBlock(nn.Module):
  """Pre-LN transformer block with an adapter on the MLP output (before its residual add).

  With ``cls_only`` the block computes the class token's output alone: its query attends to the
  keys and values of every token, and LayerNorm_2, the MLP and the adapter's class branch run on
  the class token only. That output is exactly the class token of the full block (the other
  tokens' outputs are not computed); the last block uses it because the head reads only the class
  token. At initialisation the full block runs, so every parameter exists either way.

  Attributes:
    mlp_dim: MLP width.
    num_heads: attention heads.
    adapter_type: ``group`` | ``shared`` | ``none``.
    adapter_reduction: bottleneck reduction ``r``.
    num_prompts: prompt tokens after the class token (they form the adapter's motion group).
    ln_eps: LayerNorm epsilon (1e-6 ViT, 1e-5 CLIP).
    activation: MLP activation (see :func:`activation_fn`).
    vit_init: the in21k ViT's initialisers (else Flax's defaults, as CLIP).
    dtype: compute dtype of the products (:func:`dot_general_for`); LayerNorm, softmax and the
      residual stream stay float32.
    cls_only: return only the class token's output, shape (B, 1, D).
    attention: ``lean`` | ``xla`` | ``cudnn`` (:func:`mpt_jax.models.attention.attention_product`).
  """
  mlp_dim: int
  num_heads: int
  adapter_type: str = 'none'
  adapter_reduction: int = 8
  num_prompts: int = 0
  ln_eps: float = 1e-6
  activation: str = 'gelu_tanh'
  vit_init: bool = True
  dtype: Any = jnp.float32
  cls_only: bool = False
  attention: str = 'lean'

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    cls_only = self.cls_only and not self.is_initializing()
    y = LayerNorm(epsilon=self.ln_eps, name='LayerNorm_0')(x)
    bf16 = jnp.dtype(self.dtype) != jnp.float32
    extra = {}
    if self.vit_init:
      extra.update(kernel_init=nn.initializers.xavier_uniform(), broadcast_dropout=False)
    extra.update(qkv_dot_general=attention_lib.lean_dot_general(self.dtype),
                 out_dot_general=attention_lib.lean_dot_general(self.dtype))
    attention = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, deterministic=True, dropout_rate=0.0,
        dtype=self.dtype if bf16 else None,
        attention_fn=attention_lib.attention_fn(self.dtype, self.attention),
        name='MultiHeadDotProductAttention_1', **extra)
    if cls_only:
      x = x[:, :1]
      y = attention(y[:, :1], y)
    else:
      y = attention(y, y)
    x = x + y.astype(x.dtype)
    y = LayerNorm(epsilon=self.ln_eps, name='LayerNorm_2')(x)
    y = MlpBlock(self.mlp_dim, self.activation, self.vit_init, self.dtype, name='MlpBlock_3')(y)
    y = adapter_lib.GroupAdapter(self.adapter_type, self.adapter_reduction, self.num_prompts,
                                 dtype=self.dtype, name='adapter')(y, cls_only=cls_only)
    return x + y.astype(x.dtype)


@dataclasses.dataclass(frozen=True)
class Style:
  """What tells one backbone family's encoder from another's (the in21k ViT's by default; CLIP's in
  :data:`mpt_jax.models.clip.CLIP_STYLE`).

  Attributes:
    ln_eps: LayerNorm epsilon (1e-6 ViT, 1e-5 CLIP).
    activation: MLP activation (see :func:`activation_fn`).
    vit_init: the in21k ViT's initialisers (else Flax's defaults, as CLIP).
    pre_norm: a LayerNorm (``pre_norm``) after the position embedding, before the prompts (CLIP).
  """
  ln_eps: float = 1e-6
  activation: str = 'gelu_tanh'
  vit_init: bool = True
  pre_norm: bool = False


class Encoder(nn.Module):
  """The ``Transformer`` subtree: position embedding, prompt insertion, blocks, final norm.

  The same module serves CLIP towers (:class:`mpt_jax.models.clip.Encoder` only changes the
  :class:`Style`: a ``pre_norm`` LayerNorm, eps 1e-5, QuickGELU, Flax's initialisers).

  Attributes:
    num_layers: number of encoder blocks.
    mlp_dim: MLP width.
    num_heads: attention heads.
    adapter_type: adapter variant used in every block.
    adapter_reduction: bottleneck reduction ``r``.
    num_prompts: number of prompt tokens the caller passes (0 for none).
    dtype: compute dtype of the blocks' products.
    cls_only_last: the last block computes the class token alone (see :class:`Encoder1DBlock`);
      the output then has one token.
    remat: recompute every block's activations in the backward pass (``nn.remat``): less memory
      for the strategies that train the whole backbone, about one more forward of time.
    style: the family's LayerNorm epsilon, activation, initialisers and ``pre_norm``
      (:class:`Style`).
    attention: the blocks' attention form, ``lean`` | ``xla`` | ``cudnn`` (see
      :func:`mpt_jax.models.attention.resolve_attention` for ``config.model.attention``).
  """
  num_layers: int
  mlp_dim: int
  num_heads: int
  adapter_type: str = 'none'
  adapter_reduction: int = 8
  num_prompts: int = 0
  dtype: Any = jnp.float32
  cls_only_last: bool = False
  remat: bool = False
  style: Style = Style()
  attention: str = 'lean'

  @nn.compact
  def __call__(self, x: jnp.ndarray, prompts: Optional[jnp.ndarray] = None,
               deep_prompts: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """Encodes ``[cls, patches]``.

    Args:
      x: (B, 1 + N, D) class token and patch embeddings, without position embedding.
      prompts: optional (B, K, D) tokens inserted after the class token, after the position
        embedding (and ``pre_norm``) is applied (so they carry none).
      deep_prompts: optional (num_layers - 1, K, D) tokens that replace the prompt slots before
        every block after the first (VPT-deep).

    Returns:
      (B, 1 + K + N, D) encoded tokens after ``encoder_norm``; (B, 1, D), the class token alone,
      with ``cls_only_last``.
    """
    x = AddPositionEmbs(name='posembed_input')(x)
    style = self.style
    if style.pre_norm:
      x = nn.LayerNorm(epsilon=style.ln_eps, name='pre_norm')(x)
    k = 0 if prompts is None else prompts.shape[1]
    if k != self.num_prompts:
      raise ValueError(f'Encoder built for {self.num_prompts} prompts, got {k}')
    if prompts is not None:
      x = jnp.concatenate([x[:, :1], prompts.astype(x.dtype), x[:, 1:]], axis=1)
    block_cls = nn.remat(Encoder1DBlock) if self.remat else Encoder1DBlock
    for lyr in range(self.num_layers):
      if deep_prompts is not None and lyr > 0:
        p = jnp.broadcast_to(deep_prompts[lyr - 1][None], (x.shape[0], k, x.shape[-1]))
        x = jnp.concatenate([x[:, :1], p.astype(x.dtype), x[:, 1 + k:]], axis=1)
      x = block_cls(self.mlp_dim, self.num_heads, self.adapter_type, self.adapter_reduction, k,
                    ln_eps=style.ln_eps, activation=style.activation, vit_init=style.vit_init,
                    dtype=self.dtype,
                    cls_only=self.cls_only_last and lyr == self.num_layers - 1,
                    attention=self.attention, name=f'encoderblock_{lyr}')(x)
    return nn.LayerNorm(epsilon=style.ln_eps, name='encoder_norm')(x)


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
    x = Encoder(self.num_layers, self.mlp_dim, self.num_heads, cls_only_last=True,
                name='Transformer')(x)
    return x[:, 0]
