"""The attention forms of the ViT blocks (``config.model.attention``) and their products.

* :func:`lean_attention`: softmax attention whose backward pass keeps no attention matrix (the
  CPU form), and :func:`lean_dot_general`, the attention projections' product whose backward pass
  transposes the kernel only when it needs it;
* :func:`attention_product`: one concrete form (``lean``, ``xla``, ``cudnn``) as a function of
  queries, keys and values; :func:`attention_fn` the same as Flax's ``attention_fn``;
* :func:`resolve_attention`: the concrete form ``auto`` means on a device.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp


def _products(dtype):
  """``einsum`` with operands cast to ``dtype`` and a float32 result (accumulated in float32)."""
  def einsum(spec, a, b):
    return jnp.einsum(spec, a.astype(dtype), b.astype(dtype), preferred_element_type=jnp.float32)
  return einsum


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def lean_attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, dtype: Any) -> jnp.ndarray:
  """Softmax attention whose backward pass keeps no (B, heads, Q, K) matrix at all.

  The forward is the usual ``softmax(q k^T / sqrt(d)) v`` (softmax in float32; the products take
  ``dtype`` operands and accumulate in float32). Plain autodiff keeps both the exponentials and the
  normalised probabilities of every block until the backward pass (about 60 MB per block at batch
  16, 202 tokens, 12 heads: most of a training step's memory). This keeps ``q``, ``k`` and ``v``
  (which the backward needs anyway) and each row's log-sum-exp (flash attention's way), and the
  backward pass recomputes the probabilities from them: one more ``q k^T`` product per block, about
  1 % of a ViT-B/16 training step's flops. The recomputation reads the incoming gradient (times
  zero), so that XLA can neither run it in the forward pass (its CPU scheduler would, as
  optimization barriers are gone by then, and the matrix would live as long as before) nor merge
  it with the forward's product.

  Args:
    q: (..., Q, heads, d) queries (not yet scaled).
    k: (..., K, heads, d) keys.
    v: (..., K, heads, d) values.
    dtype: operand dtype of the products (float32 or bfloat16).

  Returns:
    (..., Q, heads, d) float32 attention output.
  """
  return _lean_attention_fwd(q, k, v, dtype)[0]


def _tied_to(x: jnp.ndarray, g: jnp.ndarray) -> jnp.ndarray:
  """``x`` plus the incoming gradient ``g``'s first element times zero: the same values, but a
  backward-pass computation that reads it cannot start before ``g`` exists, so XLA can neither
  move it into the forward pass nor merge it with the forward's identical computation."""
  return x + (g.reshape(-1)[0] * 0).astype(x.dtype)


def _attention_logits(q, k, einsum):
  depth = jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32)).astype(q.dtype)
  return einsum('...qhd,...khd->...hqk', q / depth, k)


def _lean_attention_fwd(q, k, v, dtype):
  einsum = _products(dtype)
  logits = _attention_logits(q, k, einsum)
  top = jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True))
  e = jnp.exp(logits - top)
  total = jnp.sum(e, axis=-1, keepdims=True)
  out = einsum('...hqk,...khd->...qhd', e / total, v)
  return out, (q, k, v, top + jnp.log(total))


def _lean_attention_bwd(dtype, res, g):
  q, k, v, log_sum_exp = res
  einsum = _products(dtype)
  scale = 1.0 / jnp.sqrt(jnp.asarray(q.shape[-1], jnp.float32))
  p = jnp.exp(_attention_logits(_tied_to(q, g), k, einsum) - log_sum_exp)
  dv = einsum('...hqk,...qhd->...khd', p, g)
  dp = einsum('...qhd,...khd->...hqk', g, v)
  ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))
  dq = einsum('...hqk,...khd->...qhd', ds, k) * scale
  dk = einsum('...hqk,...qhd->...khd', ds, q) * scale
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


lean_attention.defvjp(_lean_attention_fwd, _lean_attention_bwd)


def lean_dot_general(dtype: Any) -> Callable[..., jnp.ndarray]:
  """The ``dot_general`` of the attention projections: ``lax.dot_general`` (with ``dtype``
  operands accumulated in float32 when that is bfloat16) whose backward pass transposes the kernel
  only when it needs it.

  For the input's gradient XLA:CPU multiplies by a transposed copy of each projection kernel
  (768 x 768), and as the kernel is known from the start it makes those copies in the forward
  pass, where most of them stay alive until the training step's peak. Here the backward
  multiplies by the kernel plus the incoming gradient's first element times zero, so the copy can
  only be made when that gradient exists (the same values; see :func:`lean_attention`).
  """
  operand = jnp.dtype(dtype)

  def product(lhs, rhs, dimension_numbers, precision):
    if operand != jnp.float32:
      lhs, rhs = lhs.astype(operand), rhs.astype(operand)
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=jnp.float32)

  @functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
  def dot(lhs, rhs, dimension_numbers, precision):
    return product(lhs, rhs, dimension_numbers, precision)

  def fwd(lhs, rhs, dimension_numbers, precision):
    return product(lhs, rhs, dimension_numbers, precision), (lhs, rhs)

  def bwd(dimension_numbers, precision, res, g):
    lhs, rhs = res
    _, vjp = jax.vjp(lambda a, b: product(a, b, dimension_numbers, precision), lhs,
                     _tied_to(rhs, g))
    return vjp(g)

  dot.defvjp(fwd, bwd)

  def dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
    del preferred_element_type  # always float32
    return dot(lhs, rhs, dimension_numbers, precision)

  return dot_general


# ``config.model.attention``: the attention kernel of every block (see :func:`resolve_attention`).
ATTENTIONS = ('auto', 'xla', 'cudnn', 'lean')


def attention_product(form: str, dtype: Any) -> Callable[..., jnp.ndarray]:
  """``softmax(q k^T / sqrt(d)) v`` of ``(..., L, heads, d)`` queries, keys and values in one of
  the concrete forms of ``config.model.attention``; float32 output.

  * ``lean``: :func:`lean_attention` (memory-lean backward pass; the CPU form);
  * ``xla``: ``jax.nn.dot_product_attention(implementation=None)``, XLA's fused attention
    (plain autodiff; GPUs and TPUs fuse it well);
  * ``cudnn``: ``jax.nn.dot_product_attention(implementation='cudnn')``, cuDNN's flash attention
    (NVIDIA GPUs; bfloat16 or float16 operands only).

  For ``xla`` and ``cudnn`` the operands are cast to ``dtype`` (as :func:`lean_attention` does for
  its products); with bfloat16 the softmax still runs in float32 and the output is bfloat16, which
  the output projection casts to bfloat16 anyway.
  """
  if form == 'lean':
    return lambda q, k, v: lean_attention(q, k, v, dtype)
  if form not in ('xla', 'cudnn'):
    raise ValueError(f'attention must be one of {ATTENTIONS[1:]} here, got {form!r}')
  implementation = None if form == 'xla' else 'cudnn'

  def attention(q, k, v):
    q, k, v = (x.astype(dtype) for x in (q, k, v))
    out = jax.nn.dot_product_attention(q, k, v, implementation=implementation)
    return out.astype(jnp.float32)
  return attention


def attention_fn(dtype, form='lean'):
  """A ``MultiHeadDotProductAttention.attention_fn`` running :func:`attention_product`."""
  product = attention_product(form, dtype)

  def attention(query, key, value, **unused_kwargs):
    del unused_kwargs  # No mask, bias or dropout in these models.
    return product(query, key, value)
  return attention


def _is_cuda_gpu(device) -> bool:
  return device.platform == 'gpu' and 'nvidia' in str(getattr(device, 'device_kind', '')).lower()


def resolve_attention(name: str, dtype: str, device) -> str:
  """The concrete attention form of ``config.model.attention`` for a model computing in ``dtype``
  on ``device`` (a ``jax.Device``).

  ``auto``: ``lean`` on CPUs (its backward pass keeps no attention matrix: the CPU step's memory
  and speed were measured with it); on NVIDIA GPUs ``cudnn`` (flash attention) when the products
  are bfloat16 and the card is an Ampere or later (compute capability 8.0, which cuDNN's flash
  attention needs), else ``xla``; ``xla`` on every other accelerator. Raises ``ValueError`` with
  one line for ``cudnn`` where it cannot run (float32, or no NVIDIA GPU) and for unknown names.
  """
  if name not in ATTENTIONS:
    raise ValueError(f'config.model.attention must be one of {ATTENTIONS}, got {name!r}')
  if name == 'cudnn':
    if not _is_cuda_gpu(device):
      raise ValueError(f"config.model.attention='cudnn' needs an NVIDIA GPU; this process runs "
                       f"on {device.platform} ({getattr(device, 'device_kind', '?')}): use "
                       "'auto', 'xla' or 'lean'")
    if dtype != 'bfloat16':
      raise ValueError(f"config.model.attention='cudnn' needs config.model.dtype='bfloat16' "
                       f"(cuDNN's flash attention takes no float32), got {dtype!r}: use 'xla' "
                       'for float32')
    return 'cudnn'
  if name != 'auto':
    return name
  if device.platform == 'cpu':
    return 'lean'
  if _is_cuda_gpu(device) and dtype == 'bfloat16':
    try:
      major = float(str(getattr(device, 'compute_capability', '0')).split('.', 1)[0])
    except ValueError:
      major = 0
    if major >= 8:
      return 'cudnn'
  return 'xla'
