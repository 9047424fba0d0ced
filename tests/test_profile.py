"""The profile mode's Table V numbers for the default config."""

import json
import os
import subprocess
import sys

from configs import casme2
from mpt_jax import profile


def test_default_profile_pinned():
  out = profile.profile(casme2.get_config())
  assert out['trainable_params'] == 5_452_751
  assert out['total_params'] == 91_251_407
  assert out['params_without_gradient'] == 2 * 148_320
  assert abs(out["gmacs"] - 18.631) < 0.01  # the paper: 18.7 GMACs
  parts = out['gmacs_by_part']
  assert abs(sum(parts.values()) - out['gmacs']) < 0.01
  assert 17.5 < parts['backbone'] < 17.7  # ViT-B/16 at 224 px, 197 tokens
  assert parts['magnification'] + parts['tokenizer'] < 0.3


def test_profile_command_prints_json_last_line():
  proc = subprocess.run([sys.executable, 'main.py', '--mode=profile', '--config=configs/samm.py:smoke'],
                        capture_output=True, text=True, check=True, timeout=300,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result['trainable_params'] > 0 and result['gflops'] > 0


def test_profile_without_prompts_counts_two_branches_per_block():
  from configs import ablations  # pylint: disable=g-import-not-at-top
  out = profile.profile(ablations.get_config('prompt=none'))
  assert out['trainable_params'] == 2 * 12 * 148_320 + 3845
  assert out['params_without_gradient'] == 148_320  # the last block's patch branch only
  assert 'prompt_tokens' not in out['gmacs_by_part'] and 'tokenizer' not in out['gmacs_by_part']
  assert abs(sum(out['gmacs_by_part'].values()) - out['gmacs']) < 0.01
  assert 'prompt=none adapter=group' in out['config']


def test_tokenizer_part_is_the_models_own_tokenizer():
  """The tokenizer's count follows the model's tokenizer settings: a 4 x 4 grid of cell means
  feeds 16x wider frame features to the centre, width and output heads."""
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  macs = {}
  for grid in (1, 4):  # the demo's model (its :smoke tokenizer rounds to the same 4 decimals)
    config = synthetic.get_config()
    config.model.tokenizer_grid = grid
    macs[grid] = profile.profile(config)['gmacs_by_part']['tokenizer']
  assert macs[4] > macs[1], macs
