"""The MPT model end to end: parameter counts, identity at init, gradients and freezing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import common
from mpt_jax import partition
from mpt_jax.models import mpt
from mpt_jax.models import vit
from tests import helpers

BRANCH = 768 * 96 + 96 + 96 * 768 + 768  # one Pfeiffer adapter branch at r = 8


def _param_shapes(model_overrides=None, num_classes=5):
  config = common.get_config()
  for k, v in (model_overrides or {}).items():
    config.model[k] = v
  model = mpt.build_model(config.model, num_classes)
  clip = jnp.zeros((1,) + mpt.input_shape(config.model))
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), clip)['params']


def test_default_b16_counts_exact():
  p = _param_shapes()
  parts = partition.count_by_part(p)
  assert BRANCH == 148_320
  # vit_jax models_test pins ViT-B_16 at 86_567_656 with a 1000-class head (769_000 params).
  assert parts == {'backbone': 86_567_656 - 769_000, 'adapter': 3 * 12 * BRANCH, 'prompt': 109_386,
                   'head': 768 * 5 + 5}
  assert partition.count_trainable(p, 'mpt') == 5_452_751
  assert sum(parts.values()) == 91_251_407


@pytest.mark.parametrize('overrides,trainable_strategy,expected', [
    ({'adapter_type': 'shared'}, 'mpt', 12 * BRANCH + 109_386 + 3845),
    ({'adapter_type': 'none'}, 'mpt', 109_386 + 3845),
    ({'prompt_type': 'none'}, 'mpt', 3 * 12 * BRANCH + 3845),
    ({'prompt_type': 'vpt_shallow'}, 'mpt', 3 * 12 * BRANCH + 5 * 768 + 3845),
    ({'prompt_type': 'vpt_deep'}, 'mpt', 3 * 12 * BRANCH + 12 * 5 * 768 + 3845),
    ({'adapter_reduction': 4}, 'mpt', 3 * 12 * (768 * 192 * 2 + 192 + 768) + 109_386 + 3845),
    ({'num_prompts': 10}, 'mpt', 3 * 12 * BRANCH + 109_386 + 2 * (1024 * 5 + 5) + 3845),
    ({'vit': 'B_32'}, 'mpt', 3 * 12 * BRANCH + 109_386 + 3845),
    ({}, 'linear_probe', 3845),
    ({}, 'prompt_only', 109_386 + 3845),
    ({}, 'adapter_only', 3 * 12 * BRANCH + 3845),
    ({}, 'full_finetune', 91_251_407),
])
def test_variant_counts(overrides, trainable_strategy, expected):
  p = _param_shapes(overrides)
  assert partition.count_trainable(p, trainable_strategy) == expected
  if overrides.get('vit') == 'B_32':
    assert partition.count_by_part(p)['backbone'] == 88_224_232 - 769_000  # vit_jax models_test: ViT-B_32 with a 1000-class head


def test_zero_adapters_no_prompts_equal_plain_backbone():
  config = helpers.tiny_config(prompt_type='none', adapter_type='group')
  model = mpt.build_model(config.model, 5)
  clips = helpers.random_clips()
  params = model.init(jax.random.PRNGKey(0), clips)['params']
  _, aux = model.apply({'params': params}, clips, return_aux=True)
  b = vit.vit_config('tiny')
  plain = vit.VisionTransformer(b.patch_size, b.hidden_size, b.mlp_dim, b.num_heads, b.num_layers)
  _, backbone = partition.split_params(params, 'mpt')
  plain_params = traverse_util.unflatten_dict(backbone, sep='/')
  ref = plain.apply({'params': plain_params}, mpt.normalise_input(aux['rgb_input'], 'minus_one_one'))
  np.testing.assert_array_equal(np.asarray(aux['features']), np.asarray(ref))


def _train_steps(strategy, steps, overrides=None):
  config = helpers.tiny_config(training_strategy=strategy, **(overrides or {}))
  model = mpt.build_model(config.model, 5)
  clips = helpers.random_clips(batch=4)
  labels = jnp.array([0, 1, 2, 3])
  params = model.init(jax.random.PRNGKey(0), clips)['params']
  tx = partition.make_optimizer(config.train, params, strategy, steps_per_epoch=1)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      logits = model.apply({'params': p}, clips)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads

  new = params
  grads = None
  for _ in range(steps):
    new, opt_state, grads = step(new, opt_state)
  return config, params, new, grads


def test_freezing_and_every_trainable_leaf_moves():
  config, before, after, _ = _train_steps('mpt', steps=3)
  last = f'Transformer/encoderblock_{vit.vit_config("tiny").num_layers - 1}/adapter/'
  fb = traverse_util.flatten_dict(before, sep='/')
  fa = traverse_util.flatten_dict(after, sep='/')
  trainable, frozen = partition.split_params(before, 'mpt')
  for k in frozen:
    np.testing.assert_array_equal(np.asarray(fb[k]), np.asarray(fa[k]), err_msg=k)
  for k in trainable:
    dead = k.startswith(last + 'motion/') or k.startswith(last + 'patch/')
    moved = not np.array_equal(np.asarray(fb[k]), np.asarray(fa[k]))
    # The head reads only the class token, so the last block's motion and patch branches never get
    # a gradient (SPEC §6); everything else trains.
    assert moved != dead, (k, moved)
  assert config.model.training_strategy == 'mpt'


def test_gradients_reach_tokenizer_adapters_head():
  _, _, _, grads = _train_steps('mpt', steps=3)
  flat = traverse_util.flatten_dict(grads, sep='/')
  norm = lambda prefix: sum(float(jnp.abs(v).sum()) for k, v in flat.items() if k.startswith(prefix))  # pylint: disable=unnecessary-lambda-assignment
  assert norm('tokenizer/') > 0
  assert norm('tokenizer/frame_conv') > 0 and norm('tokenizer/mu') > 0
  assert norm('Transformer/encoderblock_0/adapter/motion') > 0
  assert norm('Transformer/encoderblock_0/adapter/patch') > 0
  assert norm('Transformer/encoderblock_0/adapter/cls') > 0
  assert norm('head/') > 0


def test_full_finetune_moves_backbone():
  _, before, after, _ = _train_steps('full_finetune', steps=2)
  assert not np.array_equal(np.asarray(before['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel']),
                            np.asarray(after['Transformer']['encoderblock_0']['MlpBlock_3']['Dense_0']['kernel']))


@pytest.mark.parametrize('prompt_type', mpt.PROMPT_TYPES)
@pytest.mark.parametrize('adapter_type', ['group', 'shared', 'none'])
def test_every_variant_runs(prompt_type, adapter_type):
  config = helpers.tiny_config(prompt_type=prompt_type, adapter_type=adapter_type)
  model = mpt.build_model(config.model, 3)
  clips = helpers.random_clips()
  params = model.init(jax.random.PRNGKey(0), clips)['params']
  logits = model.apply({'params': params}, clips)
  assert logits.shape == (2, 3) and bool(jnp.isfinite(logits).all())


def test_unknown_options_raise():
  with pytest.raises(ValueError, match='training_strategy'):
    partition.trainable_parts('lora')
  with pytest.raises(ValueError, match='Unknown ViT variant'):
    vit.vit_config('H_14')
