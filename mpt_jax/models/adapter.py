"""The group adapter (docs/method.md §6, eqs. 13-16).

A Pfeiffer-style bottleneck adapter sits on the MLP output of every encoder block, before the MLP's
residual add. MPT's "group adapter" keeps one bottleneck branch per token group: the class token,
the motion prompt tokens and the patch tokens, so each group is adapted with its own weights.

Initialisation follows AIM (random ``down``, zero ``up``), not VPT (which zeroes both and thereby
freezes the adapter: with GELU(0) = 0 neither weight matrix ever receives a gradient). With ``up``
zeroed the untrained adapter is the identity, so the untrained MPT equals the pretrained backbone.
"""

import functools
from typing import Any, Callable, Optional

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

ADAPTER_TYPES = ('group', 'shared', 'none')
GROUP_NAMES = ('cls', 'motion', 'patch')


def dot_general_for(dtype: Any) -> Optional[Callable[..., jnp.ndarray]]:
  """The ``dot_general`` of a Dense in compute ``dtype``: None (Flax's) for float32; for bfloat16 a
  bfloat16 x bfloat16 product accumulated and returned in float32 (on this project's CPU, XLA runs
  it at about twice the float32 rate; a product with a bfloat16 result is no faster than
  float32)."""
  if jnp.dtype(dtype) == jnp.float32:
    return None
  return functools.partial(lax.dot_general, preferred_element_type=jnp.float32)


class Bottleneck(nn.Module):
  """One adapter branch: ``h + Up(GELU(Down(h)))``.

  Attributes:
    reduction: ``r``; the bottleneck width is ``hidden // r``.
    dtype: compute dtype of the two products (bfloat16 products accumulate in float32).
  """
  reduction: int = 8
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray) -> jnp.ndarray:
    hidden = h.shape[-1]
    width = max(1, hidden // self.reduction)
    dot = dot_general_for(self.dtype)
    y = nn.Dense(width, kernel_init=nn.initializers.xavier_uniform(), dtype=self.dtype,
                 dot_general=dot, bias_init=nn.initializers.zeros, name='down')(h)
    y = nn.gelu(y, approximate=True)
    y = nn.Dense(hidden, kernel_init=nn.initializers.zeros, dtype=self.dtype, dot_general=dot,
                 bias_init=nn.initializers.zeros, name='up')(y)
    return h + y.astype(h.dtype)


class GroupAdapter(nn.Module):
  """Adapts the token groups of a sequence ``[cls, prompts..., patches...]``.

  Attributes:
    adapter_type: ``group`` (one branch per group), ``shared`` (one branch for all tokens, the
      paper's "primitive adapter") or ``none`` (identity, no parameters).
    reduction: bottleneck reduction ``r``.
    num_prompts: number of prompt tokens directly after the class token (0 without prompts, and
      then the ``group`` adapter has no ``motion`` branch).
    dtype: compute dtype of the branches' products.
  """
  adapter_type: str = 'group'
  reduction: int = 8
  num_prompts: int = 0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, h: jnp.ndarray, cls_only: bool = False) -> jnp.ndarray:
    """Adapts ``h`` (B, 1 + K + N, D); with ``cls_only``, ``h`` is (B, 1, D), the class token alone
    (the last block's class-token path), and only the class (or shared) branch runs."""
    if self.adapter_type == 'none':
      return h
    if self.adapter_type == 'shared':
      return Bottleneck(self.reduction, self.dtype, name='shared')(h)
    if self.adapter_type != 'group':
      raise ValueError(f'adapter_type must be one of {ADAPTER_TYPES}, got {self.adapter_type!r}')
    if cls_only:
      return Bottleneck(self.reduction, self.dtype, name='cls')(h)
    k = self.num_prompts
    # One branch per group that exists: without prompts there is no motion group and therefore no
    # motion branch (its parameters could never get a gradient).
    spans = {'cls': (0, 1), 'motion': (1, 1 + k), 'patch': (1 + k, h.shape[1])}
    outs = []
    for name in GROUP_NAMES:
      lo, hi = spans[name]
      if hi > lo:
        outs.append(Bottleneck(self.reduction, self.dtype, name=name)(h[:, lo:hi]))
    return jnp.concatenate(outs, axis=1)
