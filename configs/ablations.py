"""Ablations of the paper's Tables VI-XI and Fig. 5: one documented command per row.

``--config=configs/ablations.py:<overrides>`` where overrides are comma-separated ``key=value``:

  dataset=casme2|samm|smic|composite|casme3|synthetic   dataset (default casme2)
  strategy=mpt|scratch|full_finetune|linear_probe|prompt_only|adapter_only   Table VI
  prompt=motion|vpt_shallow|vpt_deep|none                                    Table VII
  adapter=group|shared|none                                                  Table VIII
  vit=B_16|B_32|clip_B_16|clip_B_32 (CLIP: HF model.safetensors, CLIP input norm)  Table IX
  alpha=<float>                                                              Table X
  r=<int>                                                                    Table XI
  K=<int>                                                                    Fig. 5
  input=dynamic_image|apex|apex_minus_onset|mesti      input modality (MESTI is our interpretation)
  smoke                                                tiny CPU variant (tests)

Table VI strategies: ``linear_probe`` trains only the head on the plain backbone (prompts and adapters
off); ``prompt_only`` trains the motion tokenizer and head (adapters off); ``adapter_only`` the group
adapters and head (prompts off); ``full_finetune`` trains every parameter of the MPT model from the
pretrained backbone, ``scratch`` the same from random initialisation.

Example: ``python main.py --config=configs/ablations.py:dataset=samm,alpha=10 --workdir=runs/samm_a10``.
"""

import importlib

from configs import common

DATASETS = ('casme2', 'samm', 'smic', 'composite', 'casme3', 'synthetic')
KEYS = ('dataset', 'strategy', 'prompt', 'adapter', 'vit', 'alpha', 'r', 'K', 'input')


def get_config(arg=None):
  flags, values = common.parse_arg(arg)
  unknown = sorted(set(values) - set(KEYS)) + sorted(flags - {'smoke'})
  if unknown:
    raise ValueError(f'Unknown ablation key(s) {unknown}; known: {list(KEYS)} and "smoke"')
  dataset = values.get('dataset', 'casme2')
  if dataset not in DATASETS:
    raise ValueError(f'dataset must be one of {DATASETS}, got {dataset!r}')
  base = importlib.import_module(f'configs.{dataset}')
  config = base.get_config('smoke' if 'smoke' in flags else None)
  return apply_overrides(config, values)


def apply_overrides(config, values):
  """Applies ablation ``key=value`` overrides (the keys above, minus ``dataset``) to a config."""
  m = config.model
  if 'strategy' in values:
    m.training_strategy = values['strategy']
    if values['strategy'] == 'linear_probe':
      m.prompt_type, m.adapter_type = 'none', 'none'
    elif values['strategy'] == 'prompt_only':
      m.adapter_type = 'none'
    elif values['strategy'] == 'adapter_only':
      m.prompt_type = 'none'
  if 'prompt' in values:
    m.prompt_type = values['prompt']
  if 'adapter' in values:
    m.adapter_type = values['adapter']
  if 'vit' in values:
    m.vit = values['vit']
    if values['vit'].startswith('clip_'):
      m.input_norm = 'clip'  # CLIP's own mean/std normalisation
  if 'alpha' in values:
    m.magnification.alpha = float(values['alpha'])
  if 'r' in values:
    m.adapter_reduction = int(values['r'])
  if 'K' in values:
    m.num_prompts = int(values['K'])
  if 'input' in values:
    m.input_modality = values['input']
  return config
