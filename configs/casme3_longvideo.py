"""CAS(ME)^3 part A long videos: spotting MaE and ME intervals, 30 fps; eye blinks kept aside.

Prepare: ``python main.py --mode=prepare --config=configs/casme3_longvideo.py
--config.data.manual_dir=/path/to/CASME3``; spot and score (MEGC metric):
``python main.py --mode=spot --config=configs/casme3_longvideo.py --workdir=runs/spot_casme3``.
"""

from configs import common


def get_config(arg=None):
  if arg:
    raise ValueError(f'Unknown config argument {arg!r}; this config takes none.')
  return common.spotting_config('casme3_longvideo')
