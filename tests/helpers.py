"""Shared test helpers: tiny configs and fake checkpoints written in the real file formats."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from configs import common
from mpt_jax.models import vit

# XLA's CPU backend at optimisation level 0, with the older loop emitters instead of the fusion
# emitters, for the tests and their subprocesses: level 0 about halves the compile time of the
# tiny test programs (which dominates them), the loop emitters take about a third off that, and
# their few-millisecond steps barely change (docs/benchmarks.md, "The test suite"). Users' runs
# keep XLA's defaults.
FAST_COMPILE = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'


def tiny_config(**model_overrides):
  """The smoke config's model (tiny ViT, 32 px, 8 frames) with optional overrides."""
  config = common.apply_smoke(common.get_config())
  for key, value in model_overrides.items():
    config.model[key] = value
  return config


def prepared_smoke_config(tmp_path_factory, name: str = 'tfds', **sections):
  """The synthetic ``:smoke`` config on a new data folder ``tmp_path_factory.mktemp(name)``, with
  its dataset prepared there (``tfds_builders.prepare``).

  Args:
    tmp_path_factory: pytest's fixture.
    name: the data folder's base name.
    **sections: values set before preparing, per config section, e.g.
      ``train={'num_epochs': 1}, data={'subjects': ('p01', 'p02')}``.
  """
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config('smoke')
  config.data.data_dir = str(tmp_path_factory.mktemp(name))
  for section, values in sections.items():
    for key, value in values.items():
      config[section][key] = value
  prepare.prepare(config.data)
  return config


# The shared smoke run (conftest ``smoke_run``): every fold at once (auto is sequential on CPU, and
# these tests guard the fold-parallel path), 2 epochs, the oracle epoch recorded too.
SMOKE_RUN_TRAIN = {'num_epochs': 2, 'oracle_best_epoch': True, 'folds_per_step': 3}
# The same as command-line overrides of configs/synthetic.py:smoke.
SMOKE_RUN_FLAGS = tuple(f'--config.train.{k}={v}' for k, v in SMOKE_RUN_TRAIN.items())


def smoke_run_config(data_dir, **train):
  """The synthetic ``:smoke`` config of the shared smoke run on ``data_dir`` (``train`` overrides)."""
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config('smoke')
  config.data.data_dir = str(data_dir)
  for k, v in {**SMOKE_RUN_TRAIN, **train}.items():
    config.train[k] = v
  return config


def randomised(params, seed=1, scale=0.3):
  """``params`` with every leaf made non-trivial (LayerNorm scales are all ones and the adapters'
  ``up`` and the head zeros at init, which would hide a wrong routing): ``+ scale * N(0, 1)``.

  The noise is numpy's (drawn on the host): one ``jax.random.normal`` per leaf shape would compile a
  program per shape, tens of seconds per model on a 2-core machine.
  """
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda l: jnp.asarray(np.asarray(l) + scale * rng.standard_normal(l.shape), l.dtype), params)


def random_clips(batch=2, frames=8, size=32, seed=0):
  return jnp.asarray(np.random.default_rng(seed).random((batch, frames, size, size, 3)), jnp.float32)


def fake_vit_checkpoint(variant='tiny', image_size=32, seed=0):
  """Random plain-ViT params as a flat dict in the file's key layout (plus pre_logits and head)."""
  cfg = vit.vit_config(variant)
  model = vit.VisionTransformer(cfg.patch_size, cfg.hidden_size, cfg.mlp_dim, cfg.num_heads,
                                cfg.num_layers)
  params = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, image_size, image_size, 3)))['params']
  params = randomised(params, seed + 1, scale=0.05)
  flat = {k: np.asarray(v) for k, v in traverse_util.flatten_dict(params, sep='/').items()}
  d = cfg.hidden_size
  flat['pre_logits/kernel'] = np.zeros((d, d), np.float32)
  flat['pre_logits/bias'] = np.zeros((d,), np.float32)
  flat['head/kernel'] = np.zeros((d, 21843), np.float32)
  flat['head/bias'] = np.zeros((21843,), np.float32)
  return model, params, flat


def to_hf_keys(flat, num_heads, prefix=''):
  """Writes vit_jax flat keys as HuggingFace ViT (classic names) tensors."""
  out = {}
  for k, v in flat.items():
    v = np.asarray(v)
    if k == 'cls':
      out['embeddings.cls_token'] = v
    elif k == 'Transformer/posembed_input/pos_embedding':
      out['embeddings.position_embeddings'] = v
    elif k == 'embedding/kernel':
      out['embeddings.patch_embeddings.projection.weight'] = v.transpose(3, 2, 0, 1)
    elif k == 'embedding/bias':
      out['embeddings.patch_embeddings.projection.bias'] = v
    elif k.startswith('Transformer/encoder_norm/'):
      out['layernorm.' + ('weight' if k.endswith('scale') else 'bias')] = v
    elif k.startswith('pre_logits/'):
      out['pooler.dense.' + ('weight' if k.endswith('kernel') else 'bias')] = (
          v.T if k.endswith('kernel') else v)
    elif k.startswith('head/'):
      continue  # ViTModel checkpoints have no classifier
    else:
      _, blk, mod, *rest = k.split('/')
      i = int(blk.split('_')[1])
      base = f'encoder.layer.{i}.'
      if mod in ('LayerNorm_0', 'LayerNorm_2'):
        name = 'layernorm_before' if mod == 'LayerNorm_0' else 'layernorm_after'
        out[base + name + ('.weight' if rest[0] == 'scale' else '.bias')] = v
      elif mod == 'MultiHeadDotProductAttention_1':
        proj, kind = rest
        if proj == 'out':
          if kind == 'kernel':
            out[base + 'attention.output.dense.weight'] = v.reshape(-1, v.shape[-1]).T
          else:
            out[base + 'attention.output.dense.bias'] = v
        else:
          if kind == 'kernel':
            out[base + f'attention.attention.{proj}.weight'] = v.reshape(v.shape[0], -1).T
          else:
            out[base + f'attention.attention.{proj}.bias'] = v.reshape(-1)
      elif mod == 'MlpBlock_3':
        dense, kind = rest
        name = 'intermediate.dense' if dense == 'Dense_0' else 'output.dense'
        out[base + name + ('.weight' if kind == 'kernel' else '.bias')] = (
            v.T if kind == 'kernel' else v)
  return {prefix + k: np.ascontiguousarray(v) for k, v in out.items()}
