"""Pretrained ViT loading from tiny random checkpoints written in each real file format."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import save_file

from mpt_jax import pretrained
from mpt_jax.models import mpt
from mpt_jax.models import vit
from tests import helpers

LINEN = {'MultiHeadDotProductAttention_1': 'MultiHeadDotProductAttention_0',
         'LayerNorm_2': 'LayerNorm_1', 'MlpBlock_3': 'MlpBlock_0'}


def _images(n=2, size=32):
  return jnp.asarray(np.random.default_rng(5).random((n, size, size, 3)), jnp.float32)


def _write_all_formats(tmp_path, flat, num_heads):
  paths = {}
  paths['npz'] = str(tmp_path / 'ViT-tiny.npz')
  np.savez(paths['npz'], **flat)
  paths['npz_opt_target'] = str(tmp_path / 'opt_target.npz')
  np.savez(paths['npz_opt_target'], **{'opt/target/' + k: v for k, v in flat.items()},
           **{'opt/state/step': np.array(3)})
  linen = {}
  for k, v in flat.items():
    parts = k.split('/')
    if len(parts) > 2 and parts[1].startswith('encoderblock_'):
      parts[2] = LINEN.get(parts[2], parts[2])
    linen['/'.join(parts)] = v
  paths['npz_linen'] = str(tmp_path / 'linen.npz')
  np.savez(paths['npz_linen'], **linen)
  augreg = {k: v for k, v in flat.items() if not k.startswith('pre_logits')}
  paths['augreg'] = str(tmp_path / 'augreg.npz')
  np.savez(paths['augreg'], **augreg)
  paths['hf'] = str(tmp_path / 'model.safetensors')
  save_file(helpers.to_hf_keys(flat, num_heads), paths['hf'])
  paths['hf_prefixed'] = str(tmp_path / 'prefixed.safetensors')
  save_file(helpers.to_hf_keys(flat, num_heads, prefix='vit.'), paths['hf_prefixed'])
  return paths


@pytest.mark.slow
def test_every_format_loads_to_identical_features(tmp_path):
  model, params, flat = helpers.fake_vit_checkpoint()
  ref = pretrained.backbone_features(model, params, _images())
  paths = _write_all_formats(tmp_path, flat, vit.vit_config('tiny').num_heads)
  for name, path in paths.items():
    m, p = pretrained.load_vit(path, 'tiny', image_size=32)
    got = pretrained.backbone_features(m, p, _images())
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), atol=1e-5, err_msg=name)


def test_mpt_loads_backbone_and_keeps_own_init(tmp_path):
  _, _, flat = helpers.fake_vit_checkpoint()
  path = str(tmp_path / 'ViT-tiny.npz')
  np.savez(path, **flat)
  config = helpers.tiny_config(pretrained_path=path)
  model = mpt.build_model(config.model, 5)
  params = pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(params['cls']), flat['cls'])
  np.testing.assert_array_equal(
      np.asarray(params['Transformer']['encoderblock_1']['MultiHeadDotProductAttention_1']['query']['kernel']),
      flat['Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel'])
  assert 'tokenizer' in params and 'adapter' in params['Transformer']['encoderblock_0']
  # 'scratch' ignores the checkpoint.
  config.model.training_strategy = 'scratch'
  scratch = pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
  assert not np.array_equal(np.asarray(scratch['cls']), flat['cls'])


def test_position_embedding_is_resampled(tmp_path):
  _, _, flat = helpers.fake_vit_checkpoint(image_size=32)  # 4x4 grid
  path = str(tmp_path / 'ViT-tiny.npz')
  np.savez(path, **flat)
  m, p = pretrained.load_vit(path, 'tiny', image_size=48)  # 6x6 grid
  pe = np.asarray(p['Transformer']['posembed_input']['pos_embedding'])
  assert pe.shape == (1, 37, 32)
  np.testing.assert_array_equal(pe[:, 0], flat['Transformer/posembed_input/pos_embedding'][:, 0])
  assert pretrained.backbone_features(m, p, _images(size=48)).shape == (2, 32)


def test_errors_name_the_problem(tmp_path):
  _, _, flat = helpers.fake_vit_checkpoint()
  missing = dict(flat)
  del missing['Transformer/encoderblock_1/LayerNorm_2/scale']
  path = str(tmp_path / 'missing.npz')
  np.savez(path, **missing)
  with pytest.raises(pretrained.CheckpointError, match='encoderblock_1/LayerNorm_2/scale'):
    pretrained.load_vit(path, 'tiny', 32)
  extra = dict(flat, **{'Transformer/encoderblock_9/LayerNorm_0/scale': np.ones(32, np.float32)})
  path = str(tmp_path / 'extra.npz')
  np.savez(path, **extra)
  with pytest.raises(pretrained.CheckpointError, match='unexpected.*encoderblock_9'):
    pretrained.load_vit(path, 'tiny', 32)
  wrong = dict(flat, **{'Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel':
                        np.zeros((32, 128), np.float32)})
  path = str(tmp_path / 'wrong.npz')
  np.savez(path, **wrong)
  with pytest.raises(pretrained.CheckpointError, match='mis-shaped.*Dense_0/kernel'):
    pretrained.load_vit(path, 'tiny', 32)
  path = str(tmp_path / 'ViT-tiny.npz')
  np.savez(path, **flat)
  # Truncated files.
  data = open(path, 'rb').read()
  trunc = tmp_path / 'truncated.npz'
  trunc.write_bytes(data[: len(data) // 2])
  with pytest.raises(pretrained.CheckpointError, match='truncated.npz'):
    pretrained.load_vit(str(trunc), 'tiny', 32)
  hf = tmp_path / 'model.safetensors'
  save_file(helpers.to_hf_keys(flat, 2), str(hf))
  bad = tmp_path / 'bad.safetensors'
  bad.write_bytes(hf.read_bytes()[:100])
  with pytest.raises(pretrained.CheckpointError, match='bad.safetensors'):
    pretrained.load_vit(str(bad), 'tiny', 32)
  with pytest.raises(pretrained.CheckpointError, match='not found'):
    pretrained.load_vit(str(tmp_path / 'nope.npz'), 'tiny', 32)


def test_pickled_npz_is_refused(tmp_path):
  path = str(tmp_path / 'pickled.npz')
  np.savez(path, cls=np.array([{'a': 1}], dtype=object))
  with pytest.raises(pretrained.CheckpointError, match='pickled.npz'):
    pretrained.load_vit(path, 'tiny', 32)
  assert os.path.exists(path)


def test_frozen_random_backbone_needs_explicit_consent():
  config = helpers.tiny_config(allow_random_backbone=False)
  model = mpt.build_model(config.model, 5)
  with pytest.raises(pretrained.CheckpointError, match='pretrained_path is empty'):
    pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
  config.model.training_strategy = 'scratch'  # trains everything: no checkpoint needed
  assert 'cls' in pretrained.init_params(model, config.model, jax.random.PRNGKey(0))


# ---------------------------------------------------------------------------------------------
# The released files' real key names and shapes, written from the documented
# layouts, not from our model's tree:
# * ViT-B_16.npz, ImageNet-21k (google-research/vision_transformer): the Flax tree of
#   vit_jax/models_vit.py flattened with '/', pre-Linen numbering inside the blocks, the class token
#   ``cls``, and the in21k head with its 768-wide ``pre_logits`` layer (vit_jax/checkpoint.py's
#   load_pretrained drops ``pre_logits`` when representation_size is None) and 21,843 classes;
# * google/vit-base-patch16-224-in21k model.safetensors (a transformers ViTModel with its pooler,
#   converted by convert_vit_timm_to_pytorch.py with base_model=True, so no 'vit.' prefix): PyTorch
#   layouts, Linear weights (out, in), the patch conv (out, in, kh, kw), q/k/v as separate Linears.

D, MLP, HEADS, LAYERS, PATCH, TOKENS, CLASSES_21K = 768, 3072, 12, 12, 16, 197, 21843


def vit_b16_npz_keys():
  keys = {
      'cls': (1, 1, D),
      'embedding/kernel': (PATCH, PATCH, 3, D),
      'embedding/bias': (D,),
      'Transformer/posembed_input/pos_embedding': (1, TOKENS, D),
      'Transformer/encoder_norm/scale': (D,),
      'Transformer/encoder_norm/bias': (D,),
      'pre_logits/kernel': (D, D),
      'pre_logits/bias': (D,),
      'head/kernel': (D, CLASSES_21K),
      'head/bias': (CLASSES_21K,),
  }
  for i in range(LAYERS):
    b = f'Transformer/encoderblock_{i}/'
    keys.update({
        b + 'LayerNorm_0/scale': (D,), b + 'LayerNorm_0/bias': (D,),
        b + 'LayerNorm_2/scale': (D,), b + 'LayerNorm_2/bias': (D,),
        b + 'MlpBlock_3/Dense_0/kernel': (D, MLP), b + 'MlpBlock_3/Dense_0/bias': (MLP,),
        b + 'MlpBlock_3/Dense_1/kernel': (MLP, D), b + 'MlpBlock_3/Dense_1/bias': (D,),
        b + 'MultiHeadDotProductAttention_1/out/kernel': (HEADS, D // HEADS, D),
        b + 'MultiHeadDotProductAttention_1/out/bias': (D,),
    })
    for proj in ('query', 'key', 'value'):
      keys[b + f'MultiHeadDotProductAttention_1/{proj}/kernel'] = (D, HEADS, D // HEADS)
      keys[b + f'MultiHeadDotProductAttention_1/{proj}/bias'] = (HEADS, D // HEADS)
  return keys


def hf_vit_b16_in21k_keys():
  keys = {
      'embeddings.cls_token': (1, 1, D),
      'embeddings.position_embeddings': (1, TOKENS, D),
      'embeddings.patch_embeddings.projection.weight': (D, 3, PATCH, PATCH),
      'embeddings.patch_embeddings.projection.bias': (D,),
      'layernorm.weight': (D,),
      'layernorm.bias': (D,),
      'pooler.dense.weight': (D, D),
      'pooler.dense.bias': (D,),
  }
  for i in range(LAYERS):
    b = f'encoder.layer.{i}.'
    for proj in ('query', 'key', 'value'):
      keys[b + f'attention.attention.{proj}.weight'] = (D, D)
      keys[b + f'attention.attention.{proj}.bias'] = (D,)
    keys.update({
        b + 'attention.output.dense.weight': (D, D), b + 'attention.output.dense.bias': (D,),
        b + 'intermediate.dense.weight': (MLP, D), b + 'intermediate.dense.bias': (MLP,),
        b + 'output.dense.weight': (D, MLP), b + 'output.dense.bias': (D,),
        b + 'layernorm_before.weight': (D,), b + 'layernorm_before.bias': (D,),
        b + 'layernorm_after.weight': (D,), b + 'layernorm_after.bias': (D,),
    })
  return keys


def test_pinned_release_layouts():
  npz, hf = vit_b16_npz_keys(), hf_vit_b16_in21k_keys()
  assert len(npz) == 10 + 16 * LAYERS == 202
  assert len(hf) == 8 + 16 * LAYERS == 200
  # vit_jax's models_test pins ViT-B_16 at 86,567,656 parameters with a 1000-class head.
  body = sum(int(np.prod(s)) for k, s in npz.items() if not k.startswith(('head/', 'pre_logits/')))
  assert body == 86_567_656 - (D * 1000 + 1000)
  assert sum(int(np.prod(s)) for k, s in hf.items() if not k.startswith('pooler.')) == body


def _random_file_arrays(keys, seed):
  # int8 keeps the 86 M-parameter files small; the loader converts to the model's float32.
  rng = np.random.default_rng(seed)
  return {k: rng.integers(-100, 100, size=s, dtype=np.int8) for k, s in keys.items()}


def _b16_shapes():
  config = helpers.tiny_config()
  config.model.vit, config.model.image_size = 'B_16', 224
  config.model.tokenizer_patch, config.model.magnification.lambda_c = 16, 16.0
  model = mpt.build_model(config.model, 5)
  clip = jnp.zeros((1,) + mpt.input_shape(config.model))
  return jax.eval_shape(model.init, jax.random.PRNGKey(0), clip)['params']


def test_released_vit_b16_npz_layout_loads(tmp_path):
  shapes = _b16_shapes()
  arrays = _random_file_arrays(vit_b16_npz_keys(), 0)
  path = str(tmp_path / 'ViT-B_16.npz')
  np.savez(path, **arrays)
  params = pretrained.load_backbone(path, shapes, num_heads=HEADS)
  flat = {'/'.join(k): v for k, v in traverse_util.flatten_dict(params).items()}
  loaded = {k: v for k, v in flat.items() if isinstance(v, jax.Array)}
  # Every backbone leaf, and only those, came from the file, value for value.
  assert set(loaded) == set(vit_b16_npz_keys()) - {'pre_logits/kernel', 'pre_logits/bias',
                                                   'head/kernel', 'head/bias'}
  for key in loaded:
    np.testing.assert_array_equal(np.asarray(loaded[key]), arrays[key].astype(np.float32),
                                  err_msg=key)


def test_released_hf_in21k_safetensors_layout_loads(tmp_path):
  shapes = _b16_shapes()
  arrays = _random_file_arrays(hf_vit_b16_in21k_keys(), 1)
  path = str(tmp_path / 'model.safetensors')
  save_file(arrays, path)
  params = pretrained.load_backbone(path, shapes, num_heads=HEADS)
  t = params['Transformer']
  f32 = lambda k: arrays[k].astype(np.float32)  # pylint: disable=unnecessary-lambda-assignment
  np.testing.assert_array_equal(params['cls'], f32('embeddings.cls_token'))
  np.testing.assert_array_equal(params['embedding']['kernel'],
                                f32('embeddings.patch_embeddings.projection.weight').transpose(
                                    2, 3, 1, 0))
  np.testing.assert_array_equal(t['posembed_input']['pos_embedding'],
                                f32('embeddings.position_embeddings'))
  np.testing.assert_array_equal(t['encoder_norm']['scale'], f32('layernorm.weight'))
  blk = t['encoderblock_7']
  attn = blk['MultiHeadDotProductAttention_1']
  # torch Linear: y = x W^T + b, W (out, in); Flax DenseGeneral: kernel (in, heads, head_dim).
  np.testing.assert_array_equal(
      attn['key']['kernel'], f32('encoder.layer.7.attention.attention.key.weight').T.reshape(
          D, HEADS, D // HEADS))
  np.testing.assert_array_equal(attn['key']['bias'],
                                f32('encoder.layer.7.attention.attention.key.bias').reshape(
                                    HEADS, D // HEADS))
  np.testing.assert_array_equal(
      attn['out']['kernel'], f32('encoder.layer.7.attention.output.dense.weight').T.reshape(
          HEADS, D // HEADS, D))
  np.testing.assert_array_equal(blk['MlpBlock_3']['Dense_1']['kernel'],
                                f32('encoder.layer.7.output.dense.weight').T)
  np.testing.assert_array_equal(blk['LayerNorm_2']['bias'],
                                f32('encoder.layer.7.layernorm_after.bias'))
  flat = traverse_util.flatten_dict(params)
  assert sum(isinstance(v, jax.Array) for v in flat.values()) == 200 - 2  # all but the pooler
