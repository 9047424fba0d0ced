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

Table VI: a strategy defines the architecture it names (:func:`mpt_jax.partition.resolve_architecture`):
``scratch`` ("w/o pretraining") and ``full_finetune`` train the plain ViT, from random init and from
the pretrained backbone; ``linear_probe`` ("partial fine-tuning") the head alone on the plain
backbone; ``prompt_only`` ("motion prompt") the motion tokenizer and head, no adapters;
``adapter_only`` ("group adapter") the group adapters and head, no prompts (so no motion branch);
``mpt`` all of MPT. ``prompt=`` and ``adapter=`` are explicit settings: combined with a strategy they
must agree with it (``strategy=linear_probe,prompt=motion`` is refused when the config is built).

``K=0``: no motion prompts (the group adapter keeps its class and patch branches), as the paper's
Fig. 5 bar K = 0.

Table X, alpha = 0: EVM's per-level gains are ``min(alpha, ...)``, so alpha = 0 zeroes every level
and the motion sequence ``M`` is exactly zero. The tokenizer then sees the same constant frame
feature at every t, so its K prompt tokens are one learned, input-independent prompt (tested): the
row measures "MPT with the motion information removed" (prompt slots and the adapters' motion
branch kept). For the band-passed motion without magnification use ``alpha=1``.

Example: ``python main.py --config=configs/ablations.py:dataset=samm,alpha=10 --workdir=runs/samm_a10``.
"""

import importlib

from configs import common
from mpt_jax import errors
from mpt_jax import paper_results
from mpt_jax import tables

DATASETS = ('casme2', 'samm', 'smic', 'composite', 'casme3', 'synthetic')
KEYS = ('dataset',) + tables.ABLATION_KEYS
apply_overrides = tables.apply_overrides

# Every row of the paper's ablation tables (VI-XI, Fig. 5) as (table, row, argument of this
# config), from the one grid definition, mpt_jax/tables.py (the paper's rows first, then ours).
ROWS = tuple((table, f'{row.id} (ours)' if row.ours else paper_results.paper_row(table, row.id)['label'],
              ','.join(f'{k}={v}' for k, v in row.overrides.items()))
             for table, grid in tables.TABLES.items() if table not in ('main', 'V')
             for row in grid)


def get_config(arg=None):
  flags, values = common.parse_arg(arg)
  unknown = sorted(set(values) - set(KEYS)) + sorted(flags - {'smoke'})
  if unknown:
    raise errors.UserError(f'Unknown ablation key(s) {unknown}; known: {list(KEYS)} and "smoke"')
  dataset = values.get('dataset', 'casme2')
  if dataset not in DATASETS:
    raise errors.UserError(f'ablations.py: dataset must be one of {DATASETS}, got {dataset!r}')
  base = importlib.import_module(f'configs.{dataset}')
  config = base.get_config('smoke' if 'smoke' in flags else None)
  return apply_overrides(config, values)
