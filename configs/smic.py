"""SMIC-HS, 3-class (negative, positive, surprise), LOSO over 16 subjects.

Reproduces the SMIC column of the paper's Table II (Acc / F1). SMIC has no apex annotation; the
clip's middle frame stands in. ``configs/smic.py:smoke`` is a tiny CPU variant used by tests.
"""

from configs import common


def get_config(arg=None):
  config = common.dataset_config('smic', 3, 'hs_3class', arg, smoke_subjects=('s1', 's2'))
  return config
