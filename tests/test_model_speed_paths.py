"""The model's speed paths give the results of the plain path: the class-token-only last block,
the motion cache (:meth:`MPT.precompute`), per-block remat, and bfloat16 compute (within a
documented tolerance)."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax import errors
from mpt_jax.models import attention
from mpt_jax.models import mpt
from mpt_jax.models import vit
from tests import helpers

pytestmark = pytest.mark.slow  # compiles many model variants and their gradients

FAMILIES = {'vit': {}, 'clip': dict(vit='clip_tiny', input_norm='clip')}


def _model_and_params(num_classes=4, **overrides):
  config = helpers.tiny_config(**overrides)
  config.model.vit_num_layers = 3
  model = mpt.build_model(config.model, num_classes)
  clips = helpers.random_clips(batch=3)
  params = helpers.randomised(jax.jit(model.init)(jax.random.PRNGKey(0), clips)['params'])
  return model, params, clips


@pytest.mark.parametrize('family,prompt_type,adapter_type', [
    ('vit', 'motion', 'group'), ('vit', 'vpt_deep', 'group'), ('vit', 'vpt_shallow', 'shared'),
    ('vit', 'none', 'none'), ('clip', 'motion', 'group'), ('clip', 'vpt_deep', 'shared')])
def test_class_token_only_last_block_equals_full_block(family, prompt_type, adapter_type):
  model, params, clips = _model_and_params(prompt_type=prompt_type, adapter_type=adapter_type,
                                           **FAMILIES[family])
  assert model.compute.cls_only_last  # the default
  full = model.clone(compute=dataclasses.replace(model.compute, cls_only_last=False))

  def outputs(m):
    """Logits, class-token features and the loss's gradients, in one jitted program (one
    compilation rather than an op-by-op forward and backward)."""
    def loss(p):
      logits, aux = m.apply({'params': p}, clips, return_aux=True)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.arange(3) % 4).mean()
      return ce, (logits, aux['features'])
    (_, (logits, features)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, features, grads

  fast, features, g_fast = outputs(model)
  ref, ref_features, g_ref = outputs(full)
  assert float(jnp.abs(ref).max()) > 1.0  # the head and adapters carry real weights
  np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(features), np.asarray(ref_features), rtol=1e-5, atol=1e-5)
  # The gradients of what trains are those of the full block too.
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('prompt_type,modality', [
    ('motion', 'dynamic_image'), ('vpt_shallow', 'dynamic_image'), ('none', 'dynamic_image'),
    ('motion', 'apex'), ('none', 'apex_minus_onset'), ('motion', 'mesti')])
def test_precomputed_inputs_give_identical_logits(prompt_type, modality):
  model, params, clips = _model_and_params(prompt_type=prompt_type, input_modality=modality)
  apex = jnp.array([1, 4, 6])
  variables = {'params': params}
  direct = jax.jit(lambda v, c, a: model.apply(v, c, a))(variables, clips, apex)
  precompute = jax.jit(lambda c, a: model.apply({}, c, a, method=mpt.MPT.precompute))
  inputs = precompute(clips, apex)
  assert set(inputs) == ({'rgb', 'motion'} if prompt_type == 'motion' else {'rgb'})
  assert inputs['rgb'].shape == (3, 32, 32, 3) and inputs['rgb'].dtype == jnp.float32
  if prompt_type == 'motion':
    assert inputs['motion'].shape == clips.shape and inputs['motion'].dtype == jnp.float32
  from_inputs = jax.jit(lambda v, i: model.apply(v, None, precomputed=i))
  cached = from_inputs(variables, inputs)
  # The same operations compiled in two programs: equal up to float32 summation order (logits of
  # magnitude up to ~5 here agree to 2e-6).
  np.testing.assert_allclose(np.asarray(cached), np.asarray(direct), rtol=1e-5, atol=1e-5)
  # The cache depends on the clip: another clip gives other logits.
  other = precompute(clips[::-1], apex)  # the same programs, other inputs
  assert not np.allclose(np.asarray(from_inputs(variables, other)), np.asarray(direct), atol=1e-4)


def test_precomputed_without_motion_is_refused_for_motion_prompts():
  model, params, clips = _model_and_params(prompt_type='motion')
  with pytest.raises(ValueError, match="lack 'motion'"):  # refused before anything is computed
    model.apply({'params': params}, None, precomputed={'rgb': jnp.zeros(clips.shape[:1] +
                                                                        clips.shape[2:])})
  with pytest.raises(ValueError, match='clips or precomputed'):
    model.apply({'params': params}, None)


def test_remat_gives_the_same_logits_and_gradients():
  model, params, clips = _model_and_params(prompt_type='motion', training_strategy='full_finetune')
  remat = model.clone(compute=dataclasses.replace(model.compute, remat=True))
  labels = jnp.arange(3) % 4

  def outputs(m):  # logits and gradients in one jitted program
    def loss(p):
      logits = m.apply({'params': p}, clips)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), logits
    (_, logits), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    return logits, grads

  (logits, grads), (ref_logits, ref_grads) = outputs(remat), outputs(model)
  np.testing.assert_allclose(np.asarray(logits), np.asarray(ref_logits), rtol=1e-6, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  config = helpers.tiny_config(remat=True)
  assert mpt.build_model(config.model, 3).compute.remat


def test_config_fields_reach_the_model():
  assert mpt.build_model(helpers.tiny_config().model, 3).compute.cls_only_last
  assert not mpt.build_model(helpers.tiny_config(cls_only_last_block=False).model, 3).compute.cls_only_last
  assert not mpt.build_model(helpers.tiny_config().model, 3).compute.remat


# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %); through 3 blocks of the
# randomised tiny model the logits' largest error is 0.8-4.2 % of their largest magnitude
# (measured over 7 draws of the randomised weights, middle and spread tokenizer starts); a wrong
# cast or a wrong weight is off by tens of percent.
BF16_TOLERANCE = 0.06


@pytest.mark.parametrize('family', ['vit', 'clip'])
def test_bfloat16_logits_close_to_float32(family):
  model, params, clips = _model_and_params(prompt_type='motion', **FAMILIES[family])
  config = helpers.tiny_config(dtype='bfloat16', **FAMILIES[family])
  config.model.vit_num_layers = 3
  bf16 = mpt.build_model(config.model, 4)
  assert bf16.compute.dtype == 'bfloat16'
  # Parameters stay float32 (the same tree initialises either way).
  shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), clips)['params']
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  ref = np.asarray(jax.jit(model.apply)({'params': params}, clips))
  out, aux = jax.jit(functools.partial(bf16.apply, return_aux=True))({'params': params}, clips)
  assert out.dtype == jnp.float32 and aux['rgb_input'].dtype == jnp.float32
  assert aux['motion'].dtype == jnp.float32
  err = float(np.abs(np.asarray(out) - ref).max())
  scale = float(np.abs(ref).max())
  assert err <= BF16_TOLERANCE * scale, (err, scale)
  assert err > 0  # the products really ran in bfloat16


def test_unknown_dtype_is_a_user_error():
  with pytest.raises(errors.UserError, match='config.model.dtype'):
    mpt.build_model(helpers.tiny_config(dtype='float16').model, 3)


def _reference_attention(q, k, v):
  """softmax(q k^T / sqrt(d)) v by plain autodiff (what flax's dot_product_attention computes)."""
  w = jnp.einsum('...qhd,...khd->...hqk', q / jnp.sqrt(q.shape[-1]), k)
  return jnp.einsum('...hqk,...khd->...qhd', jax.nn.softmax(w, axis=-1), v)


@pytest.mark.parametrize('num_queries', [7, 1])  # 1: the class-token-only last block
def test_lean_attention_matches_plain_autodiff(num_queries):
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.normal(size=(2, n, 3, 8)), jnp.float32) * 2
             for n in (num_queries, 7, 7))
  g = jnp.asarray(rng.normal(size=(2, num_queries, 3, 8)), jnp.float32)
  out, vjp = jax.vjp(lambda *a: attention.lean_attention(*a, jnp.float32), q, k, v)
  ref, ref_vjp = jax.vjp(_reference_attention, q, k, v)
  np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
  for got, want in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)
  # bfloat16 operands: the same gradients to bfloat16 precision.
  out16, vjp16 = jax.vjp(lambda *a: attention.lean_attention(*a, jnp.bfloat16), q, k, v)
  np.testing.assert_allclose(out16, ref, atol=0.05)
  for got, want in zip(vjp16(g), ref_vjp(g)):
    np.testing.assert_allclose(got, want, atol=0.05 * float(jnp.abs(want).max()))


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_lean_dot_general_matches_dot_general(dtype):
  """The attention projections' product: values and both gradients (the kernel's, for the
  strategies that train the backbone) of ``lax.dot_general`` with float32 accumulation."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(16, 4, 3)), jnp.float32)  # (in, heads, depth), as DenseGeneral
  dims = (((2,), (0,)), ((), ()))
  ours = lambda a, b: attention.lean_dot_general(dtype)(a, b, dims)  # pylint: disable=unnecessary-lambda-assignment
  ref = lambda a, b: jax.lax.dot_general(a.astype(dtype), b.astype(dtype), dims,  # pylint: disable=unnecessary-lambda-assignment
                                         preferred_element_type=jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 5, 4, 3)), jnp.float32)
  out, vjp = jax.vjp(ours, x, w)
  want, ref_vjp = jax.vjp(ref, x, w)
  assert out.dtype == jnp.float32
  np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
  for a, b in zip(vjp(g), ref_vjp(g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 if dtype == jnp.float32 else 0.05)


def test_attention_projections_transpose_their_kernels_late(monkeypatch):
  """With the frozen kernels passed as arguments (as in the training step), XLA makes the
  transposed kernel copies for the input's gradient in the backward pass, one at a time, not all
  in the forward (4 blocks x 4 projections of 128 x 128)."""
  encoder = vit.Encoder(num_layers=4, mlp_dim=256, num_heads=2, adapter_type='none')
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 65, 128))
  params = encoder.init(jax.random.PRNGKey(1), x)['params']

  def temp_bytes():
    loss = lambda p, x: encoder.apply({'params': p}, x).sum()  # pylint: disable=unnecessary-lambda-assignment
    compiled = jax.jit(jax.grad(loss, argnums=1)).lower(params, x).compile()
    return compiled.memory_analysis().temp_size_in_bytes

  lean = temp_bytes()
  monkeypatch.setattr(attention, 'lean_dot_general', lambda dtype: None)  # Flax's own product
  assert temp_bytes() - lean >= 3 * 4 * 128 * 128 * 4


@pytest.mark.parametrize('name,reference', [
    ('gelu_tanh', lambda x: jax.nn.gelu(x, approximate=True)),
    ('quick_gelu', lambda x: x * jax.nn.sigmoid(1.702 * x))])
def test_activations_keep_plain_values_and_gradients(name, reference):
  x = jnp.linspace(-6.0, 6.0, 101)
  fn = vit.activation_fn(name)
  np.testing.assert_array_equal(fn(x), reference(x))
  np.testing.assert_allclose(jax.vmap(jax.grad(fn))(x), jax.vmap(jax.grad(reference))(x),
                             atol=1e-6)


def test_layer_norm_is_flax_layer_norm_with_the_same_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 5, 16)) * 3 + 1
  params = {'scale': jax.random.normal(jax.random.PRNGKey(1), (16,)),
            'bias': jax.random.normal(jax.random.PRNGKey(2), (16,))}
  ours = lambda p, x: vit.LayerNorm(epsilon=1e-6).apply({'params': p}, x)  # pylint: disable=unnecessary-lambda-assignment
  ref = lambda p, x: nn.LayerNorm(epsilon=1e-6).apply({'params': p}, x)  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_array_equal(ours(params, x), ref(params, x))
  assert jax.tree.map(jnp.shape, vit.LayerNorm().init(jax.random.PRNGKey(0), x)) == \
      jax.tree.map(jnp.shape, nn.LayerNorm().init(jax.random.PRNGKey(0), x))
  g = jax.random.normal(jax.random.PRNGKey(3), x.shape)
  got = jax.vjp(ours, params, x)[1](g)
  want = jax.vjp(ref, params, x)[1](g)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_backward_pass_keeps_less_than_plain_autodiff(monkeypatch):
  """The point of lean_attention, the input-only activations and LayerNorm: the compiled backward
  pass's temporary memory (XLA's own count) is smaller than with plain autodiff of each of them
  (4 blocks, 2 heads, 65 tokens, batch 8; one attention matrix is 135 kB)."""
  encoder = vit.Encoder(num_layers=4, mlp_dim=64, num_heads=2, adapter_type='group',
                        num_prompts=0)
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 65, 32))
  params = encoder.init(jax.random.PRNGKey(1), x)['params']

  def temp_bytes():
    loss = lambda x: encoder.apply({'params': params}, x).sum()  # pylint: disable=unnecessary-lambda-assignment
    return jax.jit(jax.grad(loss)).lower(x).compile().memory_analysis().temp_size_in_bytes

  lean = temp_bytes()
  attention_matrix = 8 * 2 * 65 * 65 * 4
  hidden = 8 * 65 * 64 * 4
  # (plain replacement, bytes it must keep beyond ours): two attention matrices (the exponentials
  # and the probabilities; ours keeps only a log-sum-exp per row) and one MLP hidden array per
  # block, 3 of the 4 blocks at least; LayerNorm's saving is small at this width (34 kB
  # here, about 0.2 GB in the ViT-B/16 training step at batch 16), so it must only be positive.
  plain = {
      'attention_fn': (attention, lambda dtype, form: nn.dot_product_attention,
                       6 * attention_matrix),
      '_ACTIVATIONS': (vit, {'gelu_tanh': lambda x: nn.gelu(x, approximate=True)}, 3 * hidden),
      'LayerNorm': (vit, nn.LayerNorm, 1)}
  for name, (module, value, at_least) in plain.items():
    with monkeypatch.context() as m:
      m.setattr(module, name, value)
      assert temp_bytes() - lean >= at_least, name
