"""CLIP vision towers: HuggingFace layout, CLIP semantics against plain numpy, parameter counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from configs import ablations
from mpt_jax import errors
from mpt_jax import pretrained
from mpt_jax.models import clip
from mpt_jax.models import mpt
from tests import helpers

# clip_tiny: patch 8, width 32, MLP 64, 2 heads, 2 layers; 32 px images -> 4x4 patches.
D, M, H, L, P, SIZE = 32, 64, 2, 2, 8, 32
N = (SIZE // P) ** 2


def _hf_vision_state(seed=0, prefix='vision_model.'):
  """Random CLIP vision weights under the real HuggingFace key names and torch layouts."""
  rng = np.random.default_rng(seed)

  def r(*shape):
    return (rng.standard_normal(shape) * 0.2).astype(np.float32)

  st = {
      'embeddings.class_embedding': r(D),
      'embeddings.patch_embedding.weight': r(D, 3, P, P),
      'embeddings.position_embedding.weight': r(N + 1, D),
      'embeddings.position_ids': np.arange(N + 1, dtype=np.int64)[None],
      'pre_layrnorm.weight': 1 + r(D), 'pre_layrnorm.bias': r(D),
      'post_layernorm.weight': 1 + r(D), 'post_layernorm.bias': r(D),
  }
  for i in range(L):
    b = f'encoder.layers.{i}.'
    for proj in ('q_proj', 'k_proj', 'v_proj', 'out_proj'):
      st[b + f'self_attn.{proj}.weight'] = r(D, D)
      st[b + f'self_attn.{proj}.bias'] = r(D)
    st[b + 'layer_norm1.weight'], st[b + 'layer_norm1.bias'] = 1 + r(D), r(D)
    st[b + 'layer_norm2.weight'], st[b + 'layer_norm2.bias'] = 1 + r(D), r(D)
    st[b + 'mlp.fc1.weight'], st[b + 'mlp.fc1.bias'] = r(M, D), r(M)
    st[b + 'mlp.fc2.weight'], st[b + 'mlp.fc2.bias'] = r(D, M), r(D)
  return {prefix + k: v for k, v in st.items()}


def _full_clip_model_state(seed=0):
  """A full CLIPModel file: vision tower + (tiny) text tower + projections + logit_scale."""
  st = _hf_vision_state(seed)
  rng = np.random.default_rng(seed + 1)
  st.update({
      'text_model.embeddings.token_embedding.weight':
          rng.standard_normal((10, 16)).astype('f4'),
      'text_model.embeddings.position_ids': np.arange(7, dtype=np.int64)[None],
      'text_model.final_layer_norm.weight': np.ones(16, 'f4'),
      'text_projection.weight': rng.standard_normal((8, 16)).astype('f4'),
      'visual_projection.weight': rng.standard_normal((8, D)).astype('f4'),
      'logit_scale': np.array(2.6592, 'f4'),
  })
  return st


# --- plain numpy CLIP (torch Linear convention y = x W^T + b), written from CLIP's definition ---

def _ln(x, w, b, eps=1e-5):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) / np.sqrt(var + eps) * w + b


def _np_block(x, st, i):
  def g(name):
    return st[f'vision_model.encoder.layers.{i}.{name}'].astype(np.float64)

  h = _ln(x, g('layer_norm1.weight'), g('layer_norm1.bias'))
  q = h @ g('self_attn.q_proj.weight').T + g('self_attn.q_proj.bias')
  k = h @ g('self_attn.k_proj.weight').T + g('self_attn.k_proj.bias')
  v = h @ g('self_attn.v_proj.weight').T + g('self_attn.v_proj.bias')
  b, t, _ = x.shape
  hd = D // H

  def split(a):
    return a.reshape(b, t, H, hd).transpose(0, 2, 1, 3)

  q, k, v = split(q) * hd ** -0.5, split(k), split(v)
  a = q @ k.transpose(0, 1, 3, 2)
  a = np.exp(a - a.max(-1, keepdims=True))
  a /= a.sum(-1, keepdims=True)
  o = (a @ v).transpose(0, 2, 1, 3).reshape(b, t, D)
  x = x + o @ g('self_attn.out_proj.weight').T + g('self_attn.out_proj.bias')
  h = _ln(x, g('layer_norm2.weight'), g('layer_norm2.bias'))
  h = h @ g('mlp.fc1.weight').T + g('mlp.fc1.bias')
  h = h / (1 + np.exp(-1.702 * h))  # QuickGELU = h * sigmoid(1.702 h)
  return x + h @ g('mlp.fc2.weight').T + g('mlp.fc2.bias')


def _np_features(images, st):
  """CLIP vision tower on [0, 1] images: normalise, embed, pre-LN, blocks, post-LN of cls."""
  def g(name):
    return st['vision_model.' + name].astype(np.float64)

  x = (images - np.array(clip.CLIP_MEAN)) / np.array(clip.CLIP_STD)
  b = x.shape[0]
  w = g('embeddings.patch_embedding.weight')  # (D, 3, P, P)
  patches = x.reshape(b, SIZE // P, P, SIZE // P, P, 3).transpose(0, 1, 3, 5, 2, 4)
  tok = patches.reshape(b, N, 3 * P * P) @ w.reshape(D, -1).T
  cls = np.broadcast_to(g('embeddings.class_embedding'), (b, 1, D))
  x = np.concatenate([cls, tok], 1) + g('embeddings.position_embedding.weight')[None]
  x = _ln(x, g('pre_layrnorm.weight'), g('pre_layrnorm.bias'))
  for i in range(L):
    x = _np_block(x, st, i)
  return _ln(x[:, 0], g('post_layernorm.weight'), g('post_layernorm.bias'))


def _images(n=2):
  return np.random.default_rng(3).random((n, SIZE, SIZE, 3))


@pytest.mark.slow
@pytest.mark.parametrize('kind', ['vision_model', 'clip_model'])
def test_hf_checkpoint_features_match_numpy_clip(tmp_path, kind):
  st = _hf_vision_state() if kind == 'vision_model' else _full_clip_model_state()
  path = str(tmp_path / 'model.safetensors')
  save_file(st, path)
  model, params = pretrained.load_vit(path, 'clip_tiny', image_size=SIZE)
  images = _images()
  feats = np.asarray(pretrained.backbone_features(model, params, jnp.asarray(images, jnp.float32)))
  np.testing.assert_allclose(feats, _np_features(images, st), atol=2e-4, rtol=2e-4)


def test_one_block_matches_numpy(tmp_path):
  st = _hf_vision_state(seed=4)
  flat, unknown = clip.convert_hf_state(st, H)
  assert not unknown
  block_params = {}
  prefix = 'Transformer/encoderblock_1/'
  for k, v in flat.items():
    if k.startswith(prefix):
      node = block_params
      parts = k[len(prefix):].split('/')
      for p in parts[:-1]:
        node = node.setdefault(p, {})
      node[parts[-1]] = jnp.asarray(v)
  x = np.random.default_rng(0).standard_normal((2, N + 1, D))
  block = clip.ClipBlock(M, H)
  out = block.apply({'params': block_params}, jnp.asarray(x, jnp.float32))
  np.testing.assert_allclose(np.asarray(out), _np_block(x, st, 1), atol=2e-4, rtol=2e-4)


@pytest.mark.slow
def test_mpt_with_clip_backbone_untrained_equals_tower(tmp_path):
  """Adapters (zero ``up``) inserted as for the ViT leave CLIP's class token unchanged."""
  st = _hf_vision_state(seed=2)
  path = str(tmp_path / 'model.safetensors')
  save_file(st, path)
  config = helpers.tiny_config(vit='clip_tiny', input_norm='clip', prompt_type='none',
                               adapter_type='group', input_modality='apex',
                               pretrained_path=path, training_strategy='mpt')
  model = mpt.build_model(config.model, 3)
  assert model.backbone.family == 'clip'
  params = pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
  assert 'adapter' in params['Transformer']['encoderblock_0']
  assert 'pre_norm' in params['Transformer']
  clips = helpers.random_clips(frames=8, size=SIZE)
  _, aux = model.apply({'params': params}, clips, return_aux=True)
  ref = _np_features(np.asarray(aux['rgb_input'], np.float64), st)
  np.testing.assert_allclose(np.asarray(aux['features']), ref, atol=3e-4, rtol=3e-4)
  # Motion prompts go in after the class token; the model runs with them and the CLIP tree.
  config.model.prompt_type = 'motion'
  model = mpt.build_model(config.model, 3)
  params = pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
  logits = model.apply({'params': params}, clips)
  assert logits.shape == (2, 3) and np.all(np.isfinite(np.asarray(logits)))


# CLIP ViT-B/16 and B/32 vision towers without the visual projection, counted by hand:
# conv 3*P*P*768 (no bias) + class 768 + position (1+N)*768 + pre-LN 1536
# + 12 * (4*(768*768+768) + 2*1536 + 768*3072+3072 + 3072*768+768) + post-LN 1536.
# With HF's 768x512 visual_projection (393,216) these are CLIP's published 86.2M / 87.8M.
@pytest.mark.parametrize('variant,count', [('clip_B_16', 85_799_424), ('clip_B_32', 87_456_000)])
def test_parameter_counts_of_real_shapes(variant, count):
  tower = clip.build_tower(variant)
  shapes = jax.eval_shape(tower.init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))['params']
  assert sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes)) == count


def test_errors_are_one_line_user_errors(tmp_path):
  st = _hf_vision_state()
  st['vision_model.encoder.layers.0.mystery.weight'] = np.zeros(3, 'f4')
  path = str(tmp_path / 'extra.safetensors')
  save_file(st, path)
  with pytest.raises(pretrained.CheckpointError, match='mystery'):
    pretrained.load_vit(path, 'clip_tiny', image_size=SIZE)
  st = _hf_vision_state()
  del st['vision_model.pre_layrnorm.bias']
  save_file(st, path)
  with pytest.raises(pretrained.CheckpointError, match='pre_norm/bias'):
    pretrained.load_vit(path, 'clip_tiny', image_size=SIZE)
  st = _hf_vision_state()
  st['vision_model.encoder.layers.1.self_attn.k_proj.bias'] = np.zeros(D + 1, 'f4')
  save_file(st, path)
  with pytest.raises(pretrained.CheckpointError, match='mis-shaped.*encoderblock_1.*key/bias'):
    pretrained.load_vit(path, 'clip_tiny', image_size=SIZE)
  with pytest.raises(errors.UserError, match='input_norm'):
    mpt.build_model(helpers.tiny_config(vit='clip_tiny').model, 3)
  with pytest.raises(errors.UserError, match='clip_B_99'):
    mpt.build_model(helpers.tiny_config(vit='clip_B_99', input_norm='clip').model, 3)


def test_ablation_config_rows():
  for v in ('clip_B_16', 'clip_B_32'):
    cfg = ablations.get_config(f'dataset=smic,vit={v}')
    assert cfg.model.vit == v and cfg.model.input_norm == 'clip'
    mpt.build_model(cfg.model, 3)  # builds (no allocation)
