"""The built-in synthetic micro-expression dataset (5 CASME II-style classes), what a new user runs first.

Needs no download: ``make demo`` prepares it and runs the LOSO demo with a small ViT trained from
scratch on CPU. ``configs/synthetic.py:smoke`` is the tiny variant used by the end-to-end tests.
"""

from configs import common


def get_config(arg=None):
  config = common.dataset_config('synthetic_me', 5, 'default', arg)
  if 'smoke' in common.parse_arg(arg)[0]:
    config.data.builder_config = 'small'  # 3 subjects x 5 classes x 2 clips
  return config
