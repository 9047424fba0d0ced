"""Pretrained ViT loading from tiny random checkpoints written in each real file format."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
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
