"""mpt_jax command line: prepare datasets, train and evaluate with LOSO, predict, profile.

Kept short on purpose; the logic lives in importable modules:

  python main.py --config=configs/samm.py --workdir=runs/samm              # LOSO train + evaluate
  python main.py --mode=eval --config=configs/samm.py --workdir=runs/samm  # recompute metrics
  python main.py --mode=predict --workdir=runs/samm --input=/path/to/clip  # class probabilities
  python main.py --mode=prepare --config=configs/samm.py --config.data.manual_dir=/data/SAMM
  python main.py --mode=profile --config=configs/casme2.py                 # Table V numbers
"""

import json
import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

MODES = ('train', 'eval', 'predict', 'prepare', 'profile')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/samm.py or '
                                'configs/samm.py:smoke.', lock_config=True)
flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_string('workdir', None, 'Run directory (checkpoints, logs, results).')
flags.DEFINE_string('input', None, 'predict: a folder of frames or a video file.')
flags.DEFINE_integer('onset', None, 'predict: first frame (index in the sorted frames).')
flags.DEFINE_integer('offset', None, 'predict: last frame (index in the sorted frames).')
flags.DEFINE_bool('crop_face', False, 'predict: detect and crop the face (OpenCV Haar cascade).')


class UsageError(Exception):
  """A user mistake that is reported as one clear line, without a traceback."""


def _run(mode):
  config = FLAGS.config
  if mode == 'profile':
    if config is None:
      raise UsageError('--config is required, e.g. --config=configs/casme2.py')
    from mpt_jax import profile  # pylint: disable=g-import-not-at-top
    print(json.dumps(profile.profile(config)))
    return
  if mode == 'prepare':
    if config is None:
      raise UsageError('--config is required, e.g. --config=configs/casme2.py')
    import tfds_builders.prepare as prep  # pylint: disable=g-import-not-at-top
    from tfds_builders import common as tfds_common  # pylint: disable=g-import-not-at-top
    try:
      report = prep.prepare(config.data)
    except tfds_common.DatasetLayoutError as e:
      raise UsageError(str(e)) from e
    print(prep.format_report(report))
    return
  raise UsageError(f'--mode={mode} is not available yet')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    _run(FLAGS.mode)
  except UsageError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main)
