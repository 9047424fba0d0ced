"""CASME II, 5-class (happiness, surprise, disgust, repression, others), LOSO over 26 subjects.

Reproduces the CASME II column of the paper's Table II (Acc / F1). Prepare the data first:
``python main.py --mode=prepare --config=configs/casme2.py --config.data.manual_dir=/path/to/CASME2``.
``configs/casme2.py:smoke`` is a tiny CPU variant used by tests.
"""

from configs import common


def get_config(arg=None):
  config = common.dataset_config('casme2', 5, '5class', arg, smoke_subjects=('sub01', 'sub02'))
  # '5class' reads CASME2-coding-20190701.xlsx (249 clips); '5class_20140508' the original sheet.
  return config
