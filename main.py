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

from mpt_jax import console  # pylint: disable=g-bad-import-order
console.quiet_libraries(sys.argv)  # before TensorFlow/JAX are imported; --verbosity=0 for details

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from mpt_jax.errors import UserError

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
flags.DEFINE_bool('json', False, 'predict: print the result as one JSON line instead of a table.')


class _QuietLibraries(logging.logging.Filter):
  """Drops the per-save INFO chatter of Orbax (warnings and errors still pass)."""

  def filter(self, record):
    return record.levelno >= logging.logging.WARNING or '/orbax/' not in record.pathname


def _need_config():
  if FLAGS.config is None:
    raise UserError('--config is required, e.g. --config=configs/samm.py')
  return FLAGS.config


def _need_workdir():
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/samm')
  return FLAGS.workdir


def _run(mode):
  """Dispatches one mode; user mistakes raise :class:`UserError`."""
  # pylint: disable=g-import-not-at-top
  if mode == 'profile':
    from mpt_jax import profile
    print(json.dumps(profile.profile(_need_config())))
  elif mode == 'prepare':
    import tfds_builders.prepare as prep
    print(prep.format_report(prep.prepare(_need_config().data)))
  elif mode == 'train':
    from mpt_jax import loso, report
    config, workdir = _need_config(), _need_workdir()
    _maybe_distributed()
    summary = loso.train_and_evaluate(config, workdir)
    print(report.results_table(summary))
    print(f'Results: {os.path.join(os.path.abspath(workdir), "report.md")}')
  elif mode == 'eval':
    from mpt_jax import evaluate
    workdir = _need_workdir()
    config = FLAGS.config if FLAGS.config is not None else evaluate.load_run_config(workdir)
    print(evaluate.summary_lines(evaluate.evaluate(config, workdir)))
  elif mode == 'predict':
    if not FLAGS.input:
      raise UserError('--input is required: a folder of frames or a video file')
    from mpt_jax import predict as predict_lib
    result = predict_lib.predict(_need_workdir(), FLAGS.input, FLAGS.onset, FLAGS.offset,
                             FLAGS.crop_face)
    print(json.dumps(result) if FLAGS.json else console.prediction_table(result))


def _maybe_distributed():
  """Multi-host runs: initialise jax.distributed when a coordinator address is set."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.mode != 'profile':
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.set_visible_devices([], 'GPU')  # TF (TFDS, TensorBoard) must not take GPU memory
  try:
    _run(FLAGS.mode)
  except UserError as e:
    logging.error('%s', e)
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv):
  """Parses flags; a bad config override is one clear line, not a traceback."""
  try:
    return FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    print(f'error: cannot parse the command line ({type(e).__name__}: {e}). Config overrides '
          f'given: {overrides}; every key is listed in configs/common.py.', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
