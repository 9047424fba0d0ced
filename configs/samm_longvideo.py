"""SAMM Long Videos: spotting MaE and ME intervals, 30 subjects, 200 fps (spotted at 200 / 7 fps).

Prepare: ``python main.py --mode=prepare --config=configs/samm_longvideo.py
--config.data.manual_dir=/path/to/SAMMLV``; spot and score (MEGC metric):
``python main.py --mode=spot --config=configs/samm_longvideo.py --workdir=runs/spot_samm``.
"""

from configs import common


def get_config(arg=None):
  if arg:
    raise ValueError(f'Unknown config argument {arg!r}; this config takes none.')
  return common.spotting_config('samm_longvideo')
