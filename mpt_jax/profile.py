"""The paper's Table V figures for a config: parameter counts and per-clip compute.

Compute comes from XLA's cost analysis of the jitted forward pass for one clip (the lowered HLO, so
nothing is compiled). XLA counts a multiply-add as 2 flops; the paper's "18.7 GFLOPs" follows the
fvcore convention of counting multiply-accumulates, so ``gmacs = flops / 2`` is the number to
compare with the paper. The per-part breakdown is measured by switching parts off:

* ``backbone``: the plain ViT on ``[cls, patches]`` (no prompts, no adapters);
* ``prompt_tokens``: what the K extra tokens add to the backbone's attention and MLPs;
* ``adapters``: the adapters' cost (full model minus the same model without adapters);
* ``motion_branch``: magnification + Gaussian tokenizer; ``dynamic_image``: rank pooling.
"""

from typing import Any, Dict

import jax
import jax.numpy as jnp
import ml_collections

from mpt_jax import partition
from mpt_jax.models import dynamic_image
from mpt_jax.models import mpt as mpt_lib


def _flops(fn, *args) -> float:
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops']) if cost and 'flops' in cost else float('nan')


def _model_flops(model_config: ml_collections.ConfigDict, num_classes: int, **overrides) -> float:
  """Forward flops of ``model_config``'s model with some fields overridden.

  The overrides name the architecture explicitly (``prompt_type``, ``adapter_type``); the strategy
  is set to ``full_finetune``, which accepts every architecture, since flops do not depend on what
  trains.
  """
  cfg = ml_collections.ConfigDict(model_config.to_dict())
  prompt_type, adapter_type = partition.resolve_architecture(model_config)
  cfg.prompt_type, cfg.adapter_type = prompt_type, adapter_type
  cfg.training_strategy = 'full_finetune'
  cfg.cls_only_last_block = False  # the paper counts every token of every block
  for k, v in overrides.items():
    cfg[k] = v
  model = mpt_lib.build_model(cfg, num_classes)
  shape = (1,) + mpt_lib.input_shape(cfg)
  if (model, shape) not in _MODEL_FLOPS:
    clip = jax.ShapeDtypeStruct(shape, jnp.float32)
    params = jax.eval_shape(model.init, jax.random.PRNGKey(0), clip)['params']
    _MODEL_FLOPS[model, shape] = _flops(lambda p, x: model.apply({'params': p}, x), params, clip)
  return _MODEL_FLOPS[model, shape]


# Forward flops by (model, clip shape), a pure function of the two (Flax modules hash and compare
# by their fields): the parts of one profile and the rows of a table share variants (the plain
# backbone, the model without adapters), each traced once per process.
_MODEL_FLOPS: Dict[Any, float] = {}


def dead_adapter_params(params: Any) -> int:
  """Parameters of the last block's motion and patch adapter branches, which get no gradient."""
  blocks = sorted((k for k in params.get('Transformer', {}) if k.startswith('encoderblock_')),
                  key=lambda s: int(s.split('_')[1]))
  if not blocks:
    return 0
  adapter = params['Transformer'][blocks[-1]].get('adapter', {})
  return sum(int(x.size) for name in ('motion', 'patch') if name in adapter
             for x in jax.tree.leaves(adapter[name]))


def profile(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """Parameter counts and GFLOPs / GMACs per clip for ``config.model``."""
  mc = config.model
  num_classes = int(config.data.num_classes)
  model = mpt_lib.build_model(mc, num_classes)
  clip = jax.ShapeDtypeStruct((1,) + mpt_lib.input_shape(mc), jnp.float32)
  params = jax.eval_shape(model.init, jax.random.PRNGKey(0), clip)['params']
  by_part = partition.count_by_part(params)
  strategy = mc.training_strategy
  total = _model_flops(mc, num_classes)
  plain = _model_flops(mc, num_classes, prompt_type='none', adapter_type='none')
  no_adapter = _model_flops(mc, num_classes, adapter_type='none')
  di = _flops(lambda x: dynamic_image.rgb_input(x, mc.input_modality,
                                                jnp.zeros((1,), jnp.int32)), clip)
  parts = {'backbone': plain - di, 'adapters': total - no_adapter, 'dynamic_image': di}
  if model.prompt_type != 'none':
    with_tokens = _model_flops(mc, num_classes, adapter_type='none', prompt_type='vpt_shallow')
    parts['prompt_tokens'] = with_tokens - plain
  if model.prompt_type == 'vpt_deep':
    parts['prompt_tokens'] += no_adapter - with_tokens  # replacing the prompts at every block
  if model.prompt_type == 'motion':
    magnifier = mpt_lib.build_magnifier(mc)
    tok = mpt_lib.motion_tokenizer(model)  # the model's own tokenizer (its grid included)
    tok_params = jax.eval_shape(tok.init, jax.random.PRNGKey(0), clip)
    parts['magnification'] = _flops(magnifier, clip)
    parts['tokenizer'] = _flops(lambda p, m: tok.apply(p, m)[0], tok_params, clip)
  parts['head'] = 2.0 * model.backbone.hidden_size * num_classes
  return {
      'config': f'{mc.vit} {mc.training_strategy} prompt={model.prompt_type} '
                f'adapter={model.adapter_type} r={mc.adapter_reduction} K={mc.num_prompts}',
      'trainable_params': partition.count_trainable(params, strategy),
      'total_params': sum(by_part.values()),
      'params_by_part': by_part,
      'trainable_parts': list(partition.trainable_parts(strategy)),
      'params_without_gradient': dead_adapter_params(params) if 'adapter' in
                                 partition.trainable_parts(strategy) else 0,
      'gflops': round(total / 1e9, 3),
      'gmacs': round(total / 2e9, 3),
      'gmacs_by_part': {k: round(v / 2e9, 4) for k, v in parts.items()},
      'flops_convention': 'XLA cost analysis of the jitted forward for one clip; gmacs = flops / 2 '
                          '(the paper counts multiply-accumulates)',
  }
