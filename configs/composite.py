"""MEGC2019 composite (CASME II + SAMM + SMIC-HS), 3-class, LOSO over 68 subjects (UF1 / UAR).

Membership and labels come from the official ``combined_3class_gt.csv`` (442 clips).
``configs/composite.py:smoke`` is a tiny CPU variant used by tests.
"""

from configs import common


def get_config(arg=None):
  config = common.dataset_config('megc2019_composite', 3, '3class', arg,
                                 smoke_subjects=('sub01', 's1'))  # SMIC ids are unpadded
  return config
