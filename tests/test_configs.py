"""Every config builds, every ablation row maps to the right model settings."""

import importlib

import pytest

from configs import ablations
from mpt_jax import errors
from mpt_jax import partition
from mpt_jax.models import dynamic_image
from mpt_jax.models import mpt

NAMES = ('casme2', 'samm', 'smic', 'composite', 'casme3', 'synthetic')


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('arg', [None, 'smoke'])
def test_configs_build(name, arg):
  config = importlib.import_module(f'configs.{name}').get_config(arg)
  assert config.train.batch_size > 0 and config.data.num_classes in (3, 5)
  mpt.build_model(config.model, config.data.num_classes)
  if arg is None and name != 'synthetic':
    m = config.model
    assert (m.vit, m.num_frames, m.image_size, m.num_prompts, m.adapter_reduction) == (
        'B_16', 16, 224, 5, 8)
    assert m.magnification.alpha == 20.0
    assert (config.train.optimizer, config.train.learning_rate, config.train.batch_size) == (
        'adam', 3e-4, 16)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match='only "smoke"'):
    importlib.import_module('configs.samm').get_config('tiny')
  with pytest.raises(ValueError, match='Unknown ablation'):
    ablations.get_config('lr=3')


def _arch(m):
  return partition.resolve_architecture(m)


@pytest.mark.parametrize('arg,check', [
    ('strategy=linear_probe', lambda m: _arch(m) == ('none', 'none')),
    ('strategy=prompt_only', lambda m: _arch(m) == ('motion', 'none')),
    ('strategy=adapter_only', lambda m: _arch(m) == ('none', 'group')),
    ('strategy=scratch', lambda m: _arch(m) == ('none', 'none')),
    ('strategy=full_finetune', lambda m: _arch(m) == ('none', 'none')),
    ('strategy=mpt', lambda m: _arch(m) == ('motion', 'group')),
    ('strategy=prompt_only,prompt=vpt_deep', lambda m: _arch(m) == ('vpt_deep', 'none')),
    ('dataset=synthetic,strategy=linear_probe', lambda m: _arch(m) == ('none', 'none')),
    ('dataset=synthetic,K=3', lambda m: _arch(m) == ('motion', 'group') and m.num_prompts == 3),
    ('prompt=vpt_deep', lambda m: _arch(m) == ('vpt_deep', 'group')),
    ('adapter=shared', lambda m: _arch(m) == ('motion', 'shared')),
    ('vit=B_32', lambda m: m.vit == 'B_32'),
    ('dataset=samm,alpha=10', lambda m: m.magnification.alpha == 10.0),
    ('r=16', lambda m: m.adapter_reduction == 16),
    ('K=3', lambda m: m.num_prompts == 3),
    ('input=mesti', lambda m: m.input_modality == 'mesti'),
])
def test_ablation_rows(arg, check):
  config = ablations.get_config(arg)
  assert check(config.model)
  assert config.model.training_strategy in partition.STRATEGIES
  assert config.model.input_modality in dynamic_image.INPUT_MODALITIES


def test_dataset_configs_leave_the_architecture_to_the_strategy():
  for name in NAMES:
    for arg in (None, 'smoke'):
      m = importlib.import_module(f'configs.{name}').get_config(arg).model
      if name == 'synthetic' and arg is None:
        # The demo trains the full MPT model from scratch: an explicit choice.
        assert (m.training_strategy, m.prompt_type, m.adapter_type) == ('scratch', 'motion', 'group')
      else:
        assert (m.prompt_type, m.adapter_type) == ('', ''), name
        assert _arch(m) == ('motion', 'group')


def test_contradicting_ablation_row_is_refused():
  with pytest.raises(errors.UserError, match="prompt_type='motion' contradicts"):
    ablations.get_config('strategy=linear_probe,prompt=motion')
  with pytest.raises(errors.UserError, match="adapter_type='group' contradicts"):
    ablations.get_config('strategy=prompt_only,adapter=group')
