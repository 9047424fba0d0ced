"""CAS(ME)^3 part A, 3-class (negative, positive, surprise) by default, LOSO over its subjects.

``configs/casme3.py:smoke`` is a tiny CPU variant used by tests.
"""

from configs import common


def get_config(arg=None):
  config = common.dataset_config('casme3', 3, '3class', arg, smoke_subjects=('spNO.1', 'spNO.2'))
  return config
