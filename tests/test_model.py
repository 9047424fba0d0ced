"""The MPT model end to end: parameter counts, identity at init, gradients and freezing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from configs import ablations
from configs import common
from mpt_jax import errors
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


@pytest.mark.parametrize('overrides,expected', [
    ({'adapter_type': 'shared'}, 12 * BRANCH + 109_386 + 3845),
    ({'adapter_type': 'none'}, 109_386 + 3845),
    # Without prompts there is no motion group, hence no motion branch (2 branches per block).
    ({'prompt_type': 'none'}, 2 * 12 * BRANCH + 3845),
    ({'prompt_type': 'none', 'adapter_type': 'shared'}, 12 * BRANCH + 3845),
    ({'prompt_type': 'vpt_shallow'}, 3 * 12 * BRANCH + 5 * 768 + 3845),
    ({'prompt_type': 'vpt_deep'}, 3 * 12 * BRANCH + 12 * 5 * 768 + 3845),
    # The paper's VPT-Deep 5.8 M: about 50 prompts per block (docs/method.md §7).
    ({'prompt_type': 'vpt_deep', 'num_prompts': 50}, 5_804_165),
    ({'adapter_reduction': 4}, 3 * 12 * (768 * 192 * 2 + 192 + 768) + 109_386 + 3845),
    ({'num_prompts': 10}, 3 * 12 * BRANCH + 109_386 + 2 * (1024 * 5 + 5) + 3845),
    ({'vit': 'B_32'}, 3 * 12 * BRANCH + 109_386 + 3845),
])
def test_variant_counts(overrides, expected):
  p = _param_shapes(overrides)
  assert partition.count_trainable(p, 'mpt') == expected
  if overrides.get('vit') == 'B_32':
    assert partition.count_by_part(p)['backbone'] == 88_224_232 - 769_000  # vit_jax models_test: ViT-B_32 with a 1000-class head
  if overrides.get('prompt_type') == 'none' and 'adapter_type' not in overrides:
    blocks = [v['adapter'] for k, v in p['Transformer'].items() if k.startswith('encoderblock_')]
    assert len(blocks) == 12 and all(set(a) == {'cls', 'patch'} for a in blocks)


PLAIN_VIT_B16 = 86_567_656 - 769_000 + 768 * 5 + 5  # vit_jax's ViT-B_16 with a 5-class head
MPT_B16 = 5_452_751
# The trainable count of every row of configs/ablations.py (paper Tables VI-XI, Fig. 5), CASME II's
# 5 classes. Derivations: BRANCH = 148,320 per adapter branch at r = 8; tokenizer 109,386 at K = 5
# (+2,050 per extra K); head 3,845.
TABLE_COUNTS = {
    'strategy=scratch': PLAIN_VIT_B16,  # 85,802,501
    'strategy=full_finetune': PLAIN_VIT_B16,
    'strategy=linear_probe': 3845,
    'strategy=prompt_only': 109_386 + 3845,  # 113,231
    'strategy=adapter_only': 2 * 12 * BRANCH + 3845,  # 3,563,525
    'strategy=mpt': MPT_B16,
    'prompt=none': 2 * 12 * BRANCH + 3845,
    'prompt=vpt_shallow': 3 * 12 * BRANCH + 5 * 768 + 3845,  # 5,347,205
    'prompt=vpt_deep': 3 * 12 * BRANCH + 12 * 5 * 768 + 3845,  # 5,389,445
    'prompt=motion': MPT_B16,
    'adapter=none': 109_386 + 3845,
    'adapter=shared': 12 * BRANCH + 109_386 + 3845,  # 1,893,071
    'adapter=group': MPT_B16,
    'vit=B_16': MPT_B16,
    'vit=B_32': MPT_B16,  # the tokenizer's 16 x 16 conv does not depend on the ViT's patch
    'vit=clip_B_16': MPT_B16, 'vit=clip_B_32': MPT_B16,  # CLIP's towers are 768 wide too
    'alpha=0': MPT_B16, 'alpha=10': MPT_B16, 'alpha=20': MPT_B16, 'alpha=30': MPT_B16,
    'alpha=50': MPT_B16, 'alpha=5': MPT_B16, 'alpha=40': MPT_B16,
    'r=4': 10_764_623, 'r=8': MPT_B16, 'r=12': 3_682_127, 'r=16': 2_796_815, 'r=32': 1_468_847,
    'K=0': 2 * 12 * BRANCH + 3845,  # no prompts: the adapters' class and patch branches
    'K=1': 5_444_551, 'K=3': 5_448_651, 'K=5': MPT_B16, 'K=7': 5_456_851, 'K=9': 5_460_951,
}


def test_every_table_row_is_pinned():
  assert sorted(arg for _, _, arg in ablations.ROWS) == sorted(TABLE_COUNTS)
  assert 3 * 12 * BRANCH + 109_386 + 3845 == MPT_B16
  for r, n in ((4, 10_764_623), (12, 3_682_127), (16, 2_796_815), (32, 1_468_847)):
    w = 768 // r
    assert 3 * 12 * (2 * 768 * w + w + 768) + 109_386 + 3845 == n
  for k in (1, 3, 5, 7, 9):
    assert TABLE_COUNTS[f'K={k}'] == MPT_B16 + 2 * 1025 * (k - 5)


@pytest.mark.parametrize('arg', [arg for _, _, arg in ablations.ROWS])
def test_table_row_trainable_counts(arg):
  config = ablations.get_config(arg)
  model = mpt.build_model(config.model, config.data.num_classes)
  clip = jnp.zeros((1,) + mpt.input_shape(config.model))
  p = jax.eval_shape(model.init, jax.random.PRNGKey(0), clip)['params']
  strategy = config.model.training_strategy
  assert partition.count_trainable(p, strategy) == TABLE_COUNTS[arg]
  # No strategy leaves a frozen, randomly initialised prompt or adapter in the model: everything
  # that is not the (pretrained) backbone trains.
  _, frozen = partition.split_params(p, strategy)
  assert all(partition.part_of(tuple(k.split('/'))) == 'backbone' for k in frozen), sorted(frozen)


@pytest.mark.parametrize('strategy,has_tokenizer,has_adapter', [
    ('mpt', True, True), ('scratch', False, False), ('full_finetune', False, False),
    ('linear_probe', False, False), ('prompt_only', True, False), ('adapter_only', False, True),
])
def test_strategy_defines_architecture(strategy, has_tokenizer, has_adapter):
  p = _param_shapes({'training_strategy': strategy})
  assert ('tokenizer' in p) == has_tokenizer
  assert ('adapter' in p['Transformer']['encoderblock_0']) == has_adapter
  if strategy == 'adapter_only':
    assert set(p['Transformer']['encoderblock_0']['adapter']) == {'cls', 'patch'}


@pytest.mark.parametrize('strategy,overrides,keys', [
    ('linear_probe', {'prompt_type': 'motion'}, ['prompt_type']),
    ('linear_probe', {'adapter_type': 'group'}, ['adapter_type']),
    ('linear_probe', {'prompt_type': 'vpt_deep', 'adapter_type': 'shared'},
     ['prompt_type', 'adapter_type']),
    ('prompt_only', {'adapter_type': 'group'}, ['adapter_type']),
    ('prompt_only', {'prompt_type': 'none'}, ['prompt_type']),
    ('adapter_only', {'prompt_type': 'motion'}, ['prompt_type']),
    ('adapter_only', {'adapter_type': 'none'}, ['adapter_type']),
])
def test_contradicting_explicit_flags_are_refused(strategy, overrides, keys):
  config = common.get_config()
  config.model.training_strategy = strategy
  for k, v in overrides.items():
    config.model[k] = v
  with pytest.raises(errors.UserError) as info:
    mpt.build_model(config.model, 5)
  msg = str(info.value)
  assert '\n' not in msg and f"training_strategy='{strategy}'" in msg
  for k in keys:
    assert f'config.model.{k}=' in msg


def test_explicit_flags_that_agree_are_kept():
  for strategy, overrides, arch in [
      ('linear_probe', {'prompt_type': 'none', 'adapter_type': 'none'}, ('none', 'none')),
      ('prompt_only', {'prompt_type': 'vpt_deep'}, ('vpt_deep', 'none')),
      ('adapter_only', {'adapter_type': 'shared'}, ('none', 'shared')),
      ('mpt', {'prompt_type': 'none'}, ('none', 'group')),
      ('scratch', {'prompt_type': 'motion', 'adapter_type': 'group'}, ('motion', 'group')),
      ('full_finetune', {}, ('none', 'none')),
  ]:
    config = common.get_config()
    config.model.training_strategy = strategy
    for k, v in overrides.items():
      config.model[k] = v
    model = mpt.build_model(config.model, 5)
    assert (model.prompt_type, model.adapter_type) == arch, strategy
  config = common.get_config()
  config.model.prompt_type = 'prompts'
  with pytest.raises(errors.UserError, match='config.model.prompt_type must be one of'):
    mpt.build_model(config.model, 5)


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


@functools.lru_cache(maxsize=None)  # the tests read the same training (they change nothing)
def _train_steps(strategy, steps):
  config = helpers.tiny_config(training_strategy=strategy)
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


@pytest.mark.slow
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
    # a gradient (docs/method.md §6); everything else trains.
    assert moved != dead, (k, moved)
  assert config.model.training_strategy == 'mpt'


@pytest.mark.slow
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


@pytest.mark.slow
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


# ---------------------------------------------------------------------------------------------
# Token routing: which adapter branch sees which tokens, where the prompts go.

def _gelu_tanh(x):
  return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def test_group_adapter_routes_each_group_to_its_own_branch():
  from mpt_jax.models import adapter  # pylint: disable=g-import-not-at-top
  k, n, d = 3, 6, 16
  h = jnp.asarray(np.random.default_rng(0).normal(size=(2, 1 + k + n, d)), jnp.float32)
  module = adapter.GroupAdapter('group', reduction=4, num_prompts=k)
  params = module.init(jax.random.PRNGKey(0), h)['params']
  assert set(params) == {'cls', 'motion', 'patch'}
  # Distinct, non-zero weights in every branch (``up`` starts at zero, which would hide routing).
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda v: jnp.asarray(rng.normal(size=v.shape), v.dtype), params)
  out = np.asarray(module.apply({'params': params}, h))

  def branch(name, x):
    p = {m: {q: np.asarray(v, np.float64) for q, v in w.items()} for m, w in params[name].items()}
    y = _gelu_tanh(x @ p['down']['kernel'] + p['down']['bias'])
    return x + y @ p['up']['kernel'] + p['up']['bias']

  x = np.asarray(h, np.float64)
  ref = np.concatenate([branch('cls', x[:, :1]), branch('motion', x[:, 1:1 + k]),
                        branch('patch', x[:, 1 + k:])], axis=1)
  np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-4)


def _block_inputs(config, clips):
  """Initialises the model and records the input of every encoder block (in call order)."""
  model = mpt.build_model(config.model, 5)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), clips)['params']

  def run(params, clips):  # jitted: one compilation instead of an op-by-op forward
    seen = []

    def record(next_fun, args, kwargs, context):
      if isinstance(context.module, vit.Encoder1DBlock) and context.method_name == '__call__':
        seen.append(args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      _, aux = model.apply({'params': params}, clips, return_aux=True)
    return aux, seen

  aux, seen = jax.jit(run)(params, clips)
  return model, params, aux, [np.asarray(s) for s in seen]


def test_prompts_follow_the_class_token_without_position_embedding():
  config = helpers.tiny_config()  # motion prompts, K = 5
  clips = helpers.random_clips()
  model, params, aux, seen = _block_inputs(config, clips)
  k = model.num_prompts
  # The tokenizer's K tokens, computed on their own from the same parameters.
  from mpt_jax.models import tokenizer as tokenizer_lib  # pylint: disable=g-import-not-at-top
  tok = tokenizer_lib.GaussianTokenizer(k, model.backbone.hidden_size, config.model.tokenizer_dim,
                                        config.model.tokenizer_patch)
  prompts, _ = tok.apply({'params': params['tokenizer']}, aux['motion'])
  # The class token and patches with the position embedding, straight from the parameters.
  pos = np.asarray(params['Transformer']['posembed_input']['pos_embedding'])[0]
  patches = np.asarray(jax.lax.conv_general_dilated(
      mpt.normalise_input(aux['rgb_input'], 'minus_one_one'),
      params['embedding']['kernel'], (model.backbone.patch_size,) * 2, 'VALID',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))) + np.asarray(params['embedding']['bias'])
  patches = patches.reshape(patches.shape[0], -1, patches.shape[-1])
  cls = np.asarray(params['cls'])[0, 0] + pos[0]
  first = seen[0]
  assert first.shape[1] == 1 + k + patches.shape[1]
  np.testing.assert_allclose(first[:, 0], np.broadcast_to(cls, first[:, 0].shape), atol=1e-5)
  np.testing.assert_allclose(first[:, 1:1 + k], np.asarray(prompts), atol=1e-5)  # no pos. emb.
  np.testing.assert_allclose(first[:, 1 + k:], patches + pos[1:], atol=1e-4)


@pytest.mark.parametrize('overrides', [{'tokenizer_grid': 2, 'tokenizer_init': 'spread'},
                                       {'prompt_type': 'none'}])
def test_motion_inputs_are_the_forward_passes_aux(overrides):
  """The report's motion figure reads ``mpt.motion_inputs``: the forward pass's ``return_aux``
  entries of the RGB branch and the tokenizer, computed without the backbone."""
  config = helpers.tiny_config(**overrides)
  clips, apex = helpers.random_clips(), jnp.asarray([2, 5])
  model = mpt.build_model(config.model, 5)
  params = helpers.randomised(jax.jit(model.init)(jax.random.PRNGKey(0), clips)['params'])
  _, aux = jax.jit(lambda p: model.apply({'params': p}, clips, apex, return_aux=True))(params)
  got = mpt.motion_inputs(model, params, clips, apex)
  motion = model.prompt_type == 'motion'
  assert set(got) == {'rgb_input'} | ({'motion', 'mu', 'sigma', 'weights'} if motion else set())
  for key, value in got.items():
    np.testing.assert_allclose(np.asarray(value), np.asarray(aux[key]), atol=1e-5, err_msg=key)


@pytest.mark.parametrize('prompt_type', ['vpt_deep', 'vpt_shallow'])
def test_vpt_deep_replaces_the_prompts_at_every_block(prompt_type):
  config = helpers.tiny_config(prompt_type=prompt_type)
  config.model.vit_num_layers = 4  # more than two blocks, so "every block" means something
  clips = helpers.random_clips()
  model, params, _, seen = _block_inputs(config, clips)
  k = model.num_prompts
  assert len(seen) == 4
  shallow = np.asarray(params['prompt'])[0]
  np.testing.assert_allclose(seen[0][:, 1:1 + k], np.broadcast_to(shallow, seen[0][:, 1:1 + k].shape))
  if prompt_type == 'vpt_deep':
    deep = np.asarray(params['deep_prompt'])
    assert deep.shape == (3, k, model.backbone.hidden_size)
    for lyr in range(1, 4):
      np.testing.assert_allclose(seen[lyr][:, 1:1 + k],
                                 np.broadcast_to(deep[lyr - 1], seen[lyr][:, 1:1 + k].shape),
                                 err_msg=f'block {lyr}')
  else:
    assert 'deep_prompt' not in params
    for lyr in range(1, 4):  # the prompts carry on, transformed by the previous block
      assert not np.allclose(seen[lyr][:, 1:1 + k], shallow)
  # The class token and patches are never replaced.
  for lyr in range(1, 4):
    assert not np.allclose(seen[lyr][:, 0], seen[lyr - 1][:, 0])


@pytest.mark.slow
def test_alpha_zero_row_means_one_constant_prompt_repeated():
  """Table X's alpha = 0 (documented in configs/ablations.py): no motion reaches the tokenizer."""
  config = ablations.get_config('smoke,alpha=0')
  assert config.model.magnification.alpha == 0.0
  clips = helpers.random_clips(batch=3)
  model, _, aux, seen = _block_inputs(config, clips)
  k = model.num_prompts
  assert float(jnp.abs(aux['motion']).max()) == 0.0
  prompts = seen[0][:, 1:1 + k]
  # K identical tokens, the same for every clip: one input-independent prompt repeated K times.
  np.testing.assert_allclose(prompts, np.broadcast_to(prompts[:1, :1], prompts.shape), atol=1e-6)
  # With alpha = 1 the band-passed motion reaches the tokenizer and the prompts depend on the clip.
  config = ablations.get_config('smoke,alpha=1')
  _, _, aux, seen = _block_inputs(config, clips)
  assert float(jnp.abs(aux['motion']).max()) > 0
  assert not np.allclose(seen[0][0, 1:1 + k], seen[0][1, 1:1 + k])
