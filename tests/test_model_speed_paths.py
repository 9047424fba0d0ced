"""The model's speed paths give the results of the plain path: the class-token-only last block,
the motion cache (:meth:`MPT.precompute`), per-block remat, and bfloat16 compute (within a
documented tolerance)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mpt_jax import errors
from mpt_jax.models import mpt
from tests import helpers

FAMILIES = {'vit': {}, 'clip': dict(vit='clip_tiny', input_norm='clip')}


def _randomised(params, seed=1, scale=0.3):
  """Every leaf non-trivial (the adapters' ``up`` and the head start at zero, which would hide a
  wrong routing of the class token)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
      tree, [l + scale * jax.random.normal(k, l.shape, l.dtype) for l, k in zip(leaves, keys)])


def _model_and_params(num_classes=4, **overrides):
  config = helpers.tiny_config(**overrides)
  config.model.vit_num_layers = 3
  model = mpt.build_model(config.model, num_classes)
  clips = helpers.random_clips(batch=3)
  params = _randomised(model.init(jax.random.PRNGKey(0), clips)['params'])
  return model, params, clips


@pytest.mark.parametrize('family,prompt_type,adapter_type', [
    ('vit', 'motion', 'group'), ('vit', 'vpt_deep', 'group'), ('vit', 'vpt_shallow', 'shared'),
    ('vit', 'none', 'none'), ('clip', 'motion', 'group'), ('clip', 'vpt_deep', 'shared')])
def test_class_token_only_last_block_equals_full_block(family, prompt_type, adapter_type):
  model, params, clips = _model_and_params(prompt_type=prompt_type, adapter_type=adapter_type,
                                           **FAMILIES[family])
  assert model.cls_only_last  # the default
  full = model.clone(cls_only_last=False)
  fast, aux = model.apply({'params': params}, clips, return_aux=True)
  ref, ref_aux = full.apply({'params': params}, clips, return_aux=True)
  assert float(jnp.abs(ref).max()) > 1.0  # the head and adapters carry real weights
  np.testing.assert_allclose(np.asarray(fast), np.asarray(ref), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(aux['features']), np.asarray(ref_aux['features']),
                             rtol=1e-5, atol=1e-5)
  # The gradients of what trains are those of the full block too.
  def loss(p, m):
    return optax.softmax_cross_entropy_with_integer_labels(
        m.apply({'params': p}, clips), jnp.arange(3) % 4).mean()
  g_fast = jax.grad(loss)(params, model)
  g_ref = jax.grad(loss)(params, full)
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
  inputs = jax.jit(lambda c, a: model.apply({}, c, a, method=mpt.MPT.precompute))(clips, apex)
  assert set(inputs) == ({'rgb', 'motion'} if prompt_type == 'motion' else {'rgb'})
  assert inputs['rgb'].shape == (3, 32, 32, 3) and inputs['rgb'].dtype == jnp.float32
  if prompt_type == 'motion':
    assert inputs['motion'].shape == clips.shape and inputs['motion'].dtype == jnp.float32
  cached = jax.jit(lambda v, i: model.apply(v, None, precomputed=i))(variables, inputs)
  # The same operations compiled in two programs: equal up to float32 summation order (logits of
  # magnitude up to ~5 here agree to 2e-6).
  np.testing.assert_allclose(np.asarray(cached), np.asarray(direct), rtol=1e-5, atol=1e-5)
  # The cache depends on the clip: another clip gives other logits.
  other = model.apply({}, clips[::-1], apex, method=mpt.MPT.precompute)
  assert not np.allclose(np.asarray(model.apply(variables, None, precomputed=other)),
                         np.asarray(direct), atol=1e-4)


def test_precomputed_without_motion_is_refused_for_motion_prompts():
  model, params, clips = _model_and_params(prompt_type='motion')
  inputs = model.apply({}, clips, method=mpt.MPT.precompute)
  with pytest.raises(ValueError, match="lack 'motion'"):
    model.apply({'params': params}, None, precomputed={'rgb': inputs['rgb']})
  with pytest.raises(ValueError, match='clips or precomputed'):
    model.apply({'params': params}, None)


def test_remat_gives_the_same_logits_and_gradients():
  model, params, clips = _model_and_params(prompt_type='motion', training_strategy='full_finetune')
  remat = model.clone(remat=True)
  labels = jnp.arange(3) % 4

  def loss(p, m):
    return optax.softmax_cross_entropy_with_integer_labels(m.apply({'params': p}, clips),
                                                           labels).mean()
  np.testing.assert_allclose(np.asarray(remat.apply({'params': params}, clips)),
                             np.asarray(model.apply({'params': params}, clips)), rtol=1e-6,
                             atol=1e-6)
  for a, b in zip(jax.tree.leaves(jax.grad(loss)(params, remat)),
                  jax.tree.leaves(jax.grad(loss)(params, model))):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  config = helpers.tiny_config(remat=True)
  assert mpt.build_model(config.model, 3).remat


def test_config_fields_reach_the_model():
  assert mpt.build_model(helpers.tiny_config().model, 3).cls_only_last
  assert not mpt.build_model(helpers.tiny_config(cls_only_last_block=False).model, 3).cls_only_last
  assert not mpt.build_model(helpers.tiny_config().model, 3).remat


# bfloat16 keeps 8 bits of mantissa (relative rounding 2^-9 = 0.2 %); through 3 blocks of the
# randomised tiny model the logits stay within 3 % of their largest magnitude (measured: about 1 %).
BF16_TOLERANCE = 0.03


@pytest.mark.parametrize('family', ['vit', 'clip'])
def test_bfloat16_logits_close_to_float32(family):
  model, params, clips = _model_and_params(prompt_type='motion', **FAMILIES[family])
  bf16 = mpt.build_model(helpers.tiny_config(dtype='bfloat16', **FAMILIES[family]).model, 4).clone(
      num_layers=3)
  assert bf16.dtype == 'bfloat16'
  # Parameters stay float32 (the same tree initialises either way).
  shapes = jax.eval_shape(bf16.init, jax.random.PRNGKey(0), clips)['params']
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  ref = np.asarray(model.apply({'params': params}, clips))
  out, aux = bf16.apply({'params': params}, clips, return_aux=True)
  assert out.dtype == jnp.float32 and aux['rgb_input'].dtype == jnp.float32
  assert aux['motion'].dtype == jnp.float32
  err = float(np.abs(np.asarray(out) - ref).max())
  scale = float(np.abs(ref).max())
  assert err <= BF16_TOLERANCE * scale, (err, scale)
  assert err > 0  # the products really ran in bfloat16


def test_unknown_dtype_is_a_user_error():
  with pytest.raises(errors.UserError, match='config.model.dtype'):
    mpt.build_model(helpers.tiny_config(dtype='float16').model, 3)
