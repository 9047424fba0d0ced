"""SAMM, 5-class (anger, contempt, happiness, surprise, other), LOSO over 27 subjects.

Reproduces the SAMM column of the paper's Table II (Acc / F1). SAMM frames are grayscale and are
replicated to 3 channels. ``configs/samm.py:smoke`` is a tiny CPU variant used by tests.
"""

from configs import common


def get_config(arg=None):
  config = common.dataset_config('samm', 5, '5class', arg, smoke_subjects=('006', '007'))
  return config
