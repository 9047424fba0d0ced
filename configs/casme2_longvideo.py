"""CAS(ME)^2 long videos (``CASME_sq``): spotting MaE and ME intervals, 22 subjects, 30 fps.

Prepare: ``python main.py --mode=prepare --config=configs/casme2_longvideo.py
--config.data.manual_dir=/path/to/CASME_sq``; spot and score (MEGC metric):
``python main.py --mode=spot --config=configs/casme2_longvideo.py --workdir=runs/spot_casme2``.
``configs/casme2_longvideo.py:cropped`` reads the face-cropped long-video release instead.
"""

from configs import common


def get_config(arg=None):
  flags, values = common.parse_arg(arg)
  if flags - {'cropped'} or values:
    raise ValueError(f'Unknown config argument(s) {sorted(flags - {"cropped"}) + sorted(values)}; '
                     'this config takes only "cropped".')
  return common.spotting_config('casme2_longvideo', 'cropped' if 'cropped' in flags else '')
