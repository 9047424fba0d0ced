"""``config.model.attention``: every form gives the logits and gradients of plain softmax attention.

Tolerances: float32, 1e-5 (relative and absolute) on the attention's values and gradients and on
the model's logits, 1e-4 on the model's trainable gradients (the forms sum in other orders);
bfloat16 products, 3 % of the largest value (bfloat16 keeps 8 bits of mantissa, and the forms round
at different places). ``cudnn`` runs only where an NVIDIA GPU is present.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax import errors
from mpt_jax.models import attention
from mpt_jax.models import mpt
from tests import helpers

HAS_CUDA = any(attention._is_cuda_gpu(d) for d in jax.devices())  # pylint: disable=protected-access
CPU_FORMS = ('lean', 'xla')
FORMS = CPU_FORMS + (('cudnn',) if HAS_CUDA else ())


def _numpy_attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v in float64 numpy, (B, L, heads, d) layout."""
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(q.shape[-1])
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum('bhqk,bkhd->bqhd', p, v)


def _qkv(num_queries, seed=0):
  rng = np.random.default_rng(seed)
  return [jnp.asarray(rng.normal(size=(2, n, 3, 16)) * 2, jnp.float32)
          for n in (num_queries, 9, 9)]


@pytest.mark.parametrize('num_queries', [9, 1])  # 1: the class-token-only last block
@pytest.mark.parametrize('form', FORMS)
def test_attention_forms_match_numpy_and_each_other(form, num_queries):
  q, k, v = _qkv(num_queries)
  g = jnp.asarray(np.random.default_rng(1).normal(size=q.shape), jnp.float32)
  dtype = jnp.bfloat16 if form == 'cudnn' else jnp.float32
  out, vjp = jax.vjp(attention.attention_product(form, dtype), q, k, v)
  want = _numpy_attention(q, k, v)
  assert out.dtype == jnp.float32 and out.shape == q.shape
  tol = dict(rtol=1e-5, atol=1e-5) if dtype == jnp.float32 else dict(atol=0.03 * np.abs(want).max())
  np.testing.assert_allclose(out, want, **tol)
  # Gradients against the lean form's hand-written backward pass and plain autodiff of the
  # reference softmax (flax's dot_product_attention).
  ref = lambda a, b, c: jnp.einsum(  # pylint: disable=unnecessary-lambda-assignment
      '...hqk,...khd->...qhd',
      jax.nn.softmax(jnp.einsum('...qhd,...khd->...hqk', a / jnp.sqrt(a.shape[-1] * 1.0), b), -1), c)
  _, ref_vjp = jax.vjp(ref, q, k, v)
  for got, expect in zip(vjp(g), ref_vjp(g)):
    scale = float(jnp.abs(expect).max())
    if dtype == jnp.float32:
      np.testing.assert_allclose(got, expect, rtol=1e-5, atol=1e-5 * scale)
    else:
      np.testing.assert_allclose(got.astype(jnp.float32), expect, atol=0.03 * scale)


def _model(attention, dtype='float32', **overrides):
  # VPT prompts (no magnification to compile: the attention sees the same [cls, prompts, patches]).
  overrides.setdefault('prompt_type', 'vpt_shallow')
  config = helpers.tiny_config(attention=attention, dtype=dtype, **overrides)
  return mpt.build_model(config.model, 4)


_PARAMS = {}


def _clips_and_params(**family):
  """Clips and randomised parameters of the tiny model of ``family`` (made once per family)."""
  key = tuple(sorted(family.items()))
  if key not in _PARAMS:
    clips = helpers.random_clips(batch=3)
    params = jax.jit(_model('lean', **family).init)(jax.random.PRNGKey(0), clips)['params']
    _PARAMS[key] = clips, helpers.randomised(params)
  return _PARAMS[key]


def _logits_and_grads(model, params, clips):
  def loss(p):
    logits = model.apply({'params': p}, clips)
    return optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(3) % 4).mean(), logits
  (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
  return np.asarray(logits), grads


@pytest.mark.parametrize('dtype,family', [
    ('float32', {}),
    pytest.param('bfloat16', {}, marks=pytest.mark.slow),
    pytest.param('float32', dict(vit='clip_tiny', input_norm='clip'), marks=pytest.mark.slow)],
    ids=['vit-float32', 'vit-bfloat16', 'clip-float32'])
def test_model_logits_and_gradients_do_not_depend_on_the_attention_form(dtype, family):
  clips, params = _clips_and_params(**family)
  want, want_g = _logits_and_grads(_model('lean', dtype, **family), params, clips)
  assert np.abs(want).max() > 1.0  # the head and adapters carry real weights
  for form in FORMS:
    if form == 'lean' or (form == 'cudnn' and dtype != 'bfloat16'):
      continue
    model = _model(form, dtype, **family)
    assert model.compute.attention == form
    got, got_g = _logits_and_grads(model, params, clips)
    if dtype == 'float32':
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
      np.testing.assert_allclose(got, want, atol=0.03 * np.abs(want).max())
    # Relative to the largest gradient of the tree: some leaves' gradients are zero up to
    # rounding (the key bias: a constant added to every logit of a row).
    scale = max(float(jnp.abs(b).max()) for b in jax.tree.leaves(want_g))
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(got_g), jax.tree.leaves(want_g)):
      tol = dict(rtol=1e-4, atol=1e-5 * scale) if dtype == 'float32' else dict(atol=0.05 * scale)
      np.testing.assert_allclose(a, b, err_msg=jax.tree_util.keystr(path), **tol)


def _device(platform, kind='cpu', capability=None):
  return types.SimpleNamespace(platform=platform, device_kind=kind, compute_capability=capability)


def test_auto_chooses_by_backend_and_dtype():
  cpu, h100 = _device('cpu'), _device('gpu', 'NVIDIA H100 80GB HBM3', '9.0')
  v100, tpu = _device('gpu', 'Tesla V100-SXM2-16GB', '7.0'), _device('tpu', 'TPU v4')
  assert attention.resolve_attention('auto', 'float32', cpu) == 'lean'
  assert attention.resolve_attention('auto', 'bfloat16', cpu) == 'lean'
  assert attention.resolve_attention('auto', 'bfloat16', h100) == 'cudnn'
  assert attention.resolve_attention('auto', 'float32', h100) == 'xla'  # cuDNN takes no float32
  assert attention.resolve_attention('auto', 'bfloat16', v100) == 'xla'  # no flash attention before sm80
  assert attention.resolve_attention('auto', 'bfloat16', tpu) == 'xla'
  for form in ('lean', 'xla'):
    assert attention.resolve_attention(form, 'float32', cpu) == form
  assert attention.resolve_attention('cudnn', 'bfloat16', h100) == 'cudnn'
  assert _model('auto').compute.attention == ('lean' if jax.devices()[0].platform == 'cpu' else 'xla')


@pytest.mark.parametrize('attention,dtype,match', [
    ('flash', 'float32', "attention must be one of"),
    ('cudnn', 'float32', "needs an NVIDIA GPU" if not HAS_CUDA else "needs config.model.dtype"),
])
def test_attention_config_errors_are_one_line_user_errors(attention, dtype, match):
  with pytest.raises(errors.UserError, match=match) as e:
    _model(attention, dtype)
  assert '\n' not in str(e.value) and 'config.model.attention' in str(e.value)


def test_cudnn_with_float32_on_a_gpu_is_refused():
  h100 = _device('gpu', 'NVIDIA H100 80GB HBM3', '9.0')
  with pytest.raises(ValueError, match="needs config.model.dtype='bfloat16'"):
    attention.resolve_attention('cudnn', 'float32', h100)
