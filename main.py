"""mpt_jax command line: prepare datasets, train and evaluate with LOSO, predict, profile.

Kept short on purpose; the logic lives in importable modules:

  python main.py --config=configs/samm.py --workdir=runs/samm              # LOSO train + evaluate
  python main.py --mode=eval --config=configs/samm.py --workdir=runs/samm  # recompute metrics
  python main.py --mode=predict --workdir=runs/samm --input=/path/to/clip  # class probabilities
  python main.py --mode=prepare --config=configs/samm.py --config.data.manual_dir=/data/SAMM
  python main.py --mode=profile --config=configs/casme2.py                 # Table V numbers
  python main.py --mode=figures --workdir=runs/smic --compare=runs/smic_lp   # Figs. 4-9
  python main.py --mode=figures --workdir=runs/casme2 --workdir=runs/samm --workdir=runs/smic
  python main.py --mode=table --table=VI --config=configs/smic.py --workdir=runs/table6
  python main.py --mode=config --config=configs/samm.py                    # the resolved config
  python main.py --mode=spot --config=configs/casme2_longvideo.py --workdir=runs/spot_casme2
  python main.py --mode=spot --config=configs/casme2_longvideo.py --config.spot.method=learned \
      --workdir=runs/spot_casme2_learned                      # the learned spotter, LOSO
  python main.py --mode=spot --workdir=runs/samm --input=/path/to/long_video.mp4
  python main.py --mode=spot --config=configs/samm_longvideo.py --recognise=runs/samm --workdir=W
  python main.py --mode=study --study=prompts --seeds=5 --config=configs/synthetic.py --workdir=W

Progress logs go to stdout; a user mistake is one line ``error: ...`` on stderr and exit code 2.
In-process (tests, notebooks): ``main.cli(['main.py', '--mode=eval', ...])`` returns 0 or raises
``SystemExit(2)`` after that line.
"""

import json
import os
import re
import sys
import threading

from mpt_jax import console  # pylint: disable=g-bad-import-order
console.quiet_libraries(sys.argv)  # before TensorFlow/JAX are imported; --verbosity=0 for details

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
from ml_collections import config_flags

from mpt_jax import datasets
from mpt_jax.errors import UserError


def _builder_for(data_config):
  """``tfds_builders.prepare.builder_for``, imported on first use: a run whose resampled clips are
  cached never imports TensorFlow Datasets."""
  import tfds_builders.prepare as prep  # pylint: disable=g-import-not-at-top
  return prep.builder_for(data_config)


def _builder_class(name):
  from tfds_builders import BUILDERS  # pylint: disable=g-import-not-at-top
  return BUILDERS[name]


datasets.provide(_builder_for, _builder_class)  # mpt_jax never imports the builders itself

# The persistent compilation cache: --jax_cache_dir, else $MPT_JAX_CACHE, else this folder.
DEFAULT_JAX_CACHE = '~/.cache/mpt_jax/jax_cache'
# Compilations shorter than this are not cached (the train and eval steps take seconds; the many
# tiny jits of initialisation, well under it, would only add files).
JAX_CACHE_MIN_COMPILE_SECS = 0.2
DETERMINISTIC_GPU_FLAG = '--xla_gpu_deterministic_ops=true'

MODES = ('train', 'eval', 'predict', 'prepare', 'profile', 'figures', 'table', 'config', 'spot', 'study')
# Modes that work on a finished run: without --config they read the run's own config.json.
RUN_MODES = ('eval', 'predict', 'config')

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file('config', None, 'Config file, e.g. configs/samm.py or '
                                'configs/samm.py:smoke.', lock_config=True)
flags.DEFINE_enum('mode', 'train', MODES, 'What to do.')
flags.DEFINE_multi_string('workdir', None, 'Run directory (checkpoints, logs, results); '
                          '--mode=figures takes it several times (e.g. the CASME II, SAMM and '
                          'SMIC runs for Fig. 4 side by side).')
flags.DEFINE_string('input', None, 'predict, spot: a folder of frames or a video file.')
flags.DEFINE_string('output', '', 'spot --input: folder for the results (default: the input\'s '
                    'path without extension + "_spots").')
flags.DEFINE_string('recognise', '', 'spot over a dataset: a trained recognition run; each '
                    'spotted ME is classified by the fold that never saw its subject (STRS).')
flags.DEFINE_float('fps', None, 'spot --input: frame rate of a frame folder (a video file says '
                   'its own).')
flags.DEFINE_integer('onset', None, 'predict: first frame (index in the sorted frames).')
flags.DEFINE_integer('offset', None, 'predict: last frame (index in the sorted frames).')
flags.DEFINE_bool('crop_face', False, 'predict: detect and crop the face (OpenCV Haar cascade).')
flags.DEFINE_bool('align_face', False, 'predict: align the face as the preparation does (dlib '
                  '5-point landmarks, then the Haar cascade, then a centre crop).')
flags.DEFINE_list('compare', [], 'figures: other run workdirs shown beside --workdir.')
flags.DEFINE_list('clips', [], 'figures: clips for Figs. 7-8 (subject/clip); default: the first '
                  'clip of each class.')
flags.DEFINE_string('table', None, 'table: which paper table to run (main or I..IV on the '
                    'dataset of --config, V..XI, fig5), optionally with rows, e.g. X:alpha_5.')
flags.DEFINE_list('pretrained', [], 'table IX: checkpoint per backbone, e.g. '
                  'B_32=/p/ViT-B_32.npz,clip_B_16=/p/clip16/model.safetensors.')
flags.DEFINE_string('study', None, 'study: which grid of mpt_jax/study.py to run (prompts, K, '
                    'alpha, ...), optionally with variants, e.g. K:K_5,K_1.')
flags.DEFINE_integer('seeds', 5, 'study: seeds per variant (config.seed onwards).')
flags.DEFINE_bool('json', False, 'predict: print the result as one JSON line instead of a table.')
flags.DEFINE_string('jax_cache_dir', None, 'Persistent XLA compilation cache (a repeated or resumed '
                    'run does not compile again). Default: $MPT_JAX_CACHE if set, else '
                    f'{DEFAULT_JAX_CACHE}; an empty value (or MPT_JAX_CACHE=off) turns it off.')


class _QuietLibraries(logging.logging.Filter):
  """Drops the per-save INFO chatter of Orbax (other warnings and errors still pass)."""

  def filter(self, record):
    if '/orbax/' not in record.pathname:
      return True
    # Read-only restores (eval, predict) are intended; Orbax warns about them.
    message = record.getMessage()
    return (record.levelno >= logging.logging.WARNING and 'read only' not in message
            and 'read_only' not in message)


def _need_config():
  if FLAGS.config is None:
    raise UserError('--config is required, e.g. --config=configs/samm.py')
  return FLAGS.config


def _need_workdirs():
  if not FLAGS.workdir:
    raise UserError('--workdir is required, e.g. --workdir=runs/samm')
  return [os.path.abspath(os.path.expanduser(w)) for w in FLAGS.workdir]


def _need_workdir():
  workdirs = _need_workdirs()
  if len(workdirs) > 1:
    raise UserError(f'--workdir given {len(workdirs)} times; only --mode=figures takes several')
  return workdirs[0]


def _run_config(workdir):
  """eval/predict/config: the run's recorded config; only ``--config.<key>=`` flags replace it.

  A ``--config`` file's own values (e.g. ``data.data_dir`` or ``pretrained_path`` defaults) never
  replace what the run recorded; one line says which keys the command line did replace.
  """
  from mpt_jax import workdir as wd  # pylint: disable=g-import-not-at-top
  overridden = sorted(config_flags.get_override_values(FLAGS['config'])) if FLAGS.config else []
  config = wd.load_run_config(workdir, FLAGS.config, overridden)
  if overridden:
    print(f'Using the config recorded in {wd.config_path(workdir)}, with '
          + ', '.join(f'{k}={config_path_value(config, k)!r}' for k in overridden)
          + ' from the command line')
  return config


def config_path_value(config, dotted):
  for part in dotted.split('.'):
    config = config[part]
  return config


def _run(mode):
  """Dispatches one mode; user mistakes raise :class:`UserError`."""
  # pylint: disable=g-import-not-at-top
  if mode == 'profile':
    from mpt_jax import profile
    print(json.dumps(profile.profile(_need_config())))
  elif mode == 'prepare':
    config = _need_config()
    _hide_gpus_from_tensorflow()
    import tfds_builders.prepare as prep
    print(prep.format_report(prep.prepare(config.data)))
  elif mode == 'train':
    from mpt_jax import loso, report
    config, workdir = _need_config(), _need_workdir()
    workdir = loso.preflight(config, workdir)  # fast checks before the slow TensorFlow import
    _hide_gpus_from_tensorflow()
    _maybe_distributed()
    summary = loso.train_and_evaluate(config, workdir, preflight_done=True)
    print(report.results_table(summary))
    print(f'Results: {os.path.join(workdir, "report.md")}')
  elif mode == 'eval':
    from mpt_jax import evaluate
    from mpt_jax import workdir as wd
    workdir = _need_workdir()
    config = _run_config(workdir)
    wd.read_run_info(workdir)
    _hide_gpus_from_tensorflow()
    print(evaluate.summary_lines(evaluate.evaluate(config, workdir)))
  elif mode == 'predict':
    if not FLAGS.input:
      raise UserError('--input is required: a folder of frames or a video file')
    from mpt_jax import predict as predict_lib
    from mpt_jax import workdir as wd
    workdir = _need_workdir()
    config = _run_config(workdir)
    wd.read_run_info(workdir)  # (predict runs no TensorFlow op: no GPU to hide from it)
    result = predict_lib.predict(workdir, FLAGS.input, FLAGS.onset, FLAGS.offset,
                                 FLAGS.crop_face, config=config,
                                 align_face=FLAGS.align_face)
    print(json.dumps(result) if FLAGS.json else console.prediction_table(result))
  elif mode == 'spot':
    from mpt_jax.spotting import run as spot_run
    workdir = _need_workdir()
    if FLAGS.input:  # one video, classified by the trained run in --workdir
      print(spot_run.spot_input(workdir, FLAGS.input, FLAGS.output, FLAGS.fps))
    else:  # a prepared long-video dataset, scored with the MEGC metric
      config = _need_config()
      _hide_gpus_from_tensorflow()
      print(spot_run.spot_dataset(config, workdir, FLAGS.recognise))
  elif mode == 'figures':
    from mpt_jax import figures
    for path in figures.write_figures(_need_workdirs() + list(FLAGS.compare),
                                      clip_names=FLAGS.clips):
      print(path)
  elif mode == 'table':
    from mpt_jax import tables
    if not FLAGS.table:
      raise UserError('--table is required: one of '
                      f'{", ".join(list(tables.TABLES) + list(tables.MAIN_ALIASES))}')
    print(tables.run_table(FLAGS.table, _need_config(), _need_workdir(),
                           tables.parse_pretrained(FLAGS.pretrained)))
  elif mode == 'config':  # the --workdir's run, as eval and predict read it, if it holds one
    from mpt_jax import workdir as wd
    workdir = _need_workdir() if FLAGS.workdir else None
    recorded = workdir and os.path.exists(wd.config_path(workdir))
    print(_run_config(workdir) if recorded else _need_config(), end='')
  elif mode == 'study':
    from mpt_jax import study
    if not FLAGS.study:
      raise UserError(f'--study is required: one of {", ".join(study.STUDIES)}')
    _hide_gpus_from_tensorflow()
    print(study.run_study(FLAGS.study, _need_config(), _need_workdir(), FLAGS.seeds,
                          command=' '.join(['python'] + sys.argv)))


def _hide_gpus_from_tensorflow():
  """TF (TFDS, TensorBoard) must not take GPU memory; imported late, only when needed."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')


def jax_cache_dir(flag_value=None, environ=None):
  """The compilation cache folder: the flag, else ``$MPT_JAX_CACHE``, else the default; None = off.

  ``off``, ``none``, ``0`` or an empty value turn the cache off.
  """
  environ = os.environ if environ is None else environ
  value = flag_value if flag_value is not None else environ.get('MPT_JAX_CACHE', DEFAULT_JAX_CACHE)
  if value.strip().lower() in ('', 'off', 'none', '0', 'false'):
    return None
  return os.path.abspath(os.path.expanduser(value))


def deterministic_xla_flags(xla_flags: str, deterministic: bool) -> str:
  """``XLA_FLAGS`` with GPU-deterministic ops added when asked (a value already there wins)."""
  if not deterministic or 'xla_gpu_deterministic_ops' in xla_flags:
    return xla_flags
  return (xla_flags + ' ' + DETERMINISTIC_GPU_FLAG).strip()


def configure_jax(config, cache_flag=None) -> None:
  """Compilation cache and deterministic GPU ops; call before JAX initialises a backend.

  * ``config.train.deterministic`` (default True when the config has no such key or there is no
    config yet, as for ``eval``/``predict`` before the run's config is read) adds
    ``--xla_gpu_deterministic_ops=true`` to ``XLA_FLAGS``: XLA:GPU then picks only deterministic
    kernels (no atomics-based scatter or reductions, deterministic autotuning), so a resumed run
    repeats an uninterrupted one on GPUs too. XLA reads ``XLA_FLAGS`` once, when the first backend
    starts, which is why this runs before any mode touches JAX. An ``xla_gpu_deterministic_ops``
    already in ``XLA_FLAGS`` is left as the user set it. CPUs ignore the flag (their ops are
    deterministic anyway).
  * The persistent compilation cache (:func:`jax_cache_dir`): compiled steps are stored there and
    reused by a later process with the same program, JAX, jaxlib, device and XLA flags, which skips
    the compilation of a resumed or repeated run. ``JAX_COMPILATION_CACHE_DIR``, when set, wins.
  """
  deterministic = True
  if config is not None and 'train' in config:
    deterministic = bool(config.train.get('deterministic', True))
  os.environ['XLA_FLAGS'] = deterministic_xla_flags(os.environ.get('XLA_FLAGS', ''), deterministic)
  import jax  # pylint: disable=g-import-not-at-top
  if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
    return
  path = jax_cache_dir(cache_flag)
  if path is None:
    return
  jax.config.update('jax_compilation_cache_dir', path)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', JAX_CACHE_MIN_COMPILE_SECS)


def _maybe_distributed():
  """Multi-host runs: initialise jax.distributed when a coordinator address is set."""
  if os.environ.get('JAX_COORDINATOR_ADDRESS'):
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()


def _is_closed_loop_error(exc_type, exc) -> bool:
  return exc_type is RuntimeError and str(exc) == 'Event loop is closed'


def _drop_late_loop_errors():
  """Hides tensorstore's late callbacks into Orbax's closed event loop after a failed restore.

  A damaged checkpoint fails the restore while tensorstore still reads other arrays; their
  completion callbacks then meet the closed loop and print ``RuntimeError: Event loop is closed``
  tracebacks from a library thread (also during interpreter shutdown, after ``SystemExit(2)``),
  after the one-line error already said what is wrong. Only that exact error is dropped; every
  other exception is shown as before. Installing it twice changes nothing.
  """
  if getattr(sys.excepthook, 'drops_late_loop_errors', False):
    return
  excepthook, unraisablehook = sys.excepthook, sys.unraisablehook
  threadhook = threading.excepthook

  def on_exception(exc_type, exc, tb):
    if not _is_closed_loop_error(exc_type, exc):
      excepthook(exc_type, exc, tb)

  def on_unraisable(unraisable):
    if not _is_closed_loop_error(unraisable.exc_type, unraisable.exc_value):
      unraisablehook(unraisable)

  def on_thread_exception(args):
    if not _is_closed_loop_error(args.exc_type, args.exc_value):
      threadhook(args)

  on_exception.drops_late_loop_errors = True
  sys.excepthook, sys.unraisablehook = on_exception, on_unraisable
  threading.excepthook = on_thread_exception


def main(argv):
  """Runs the parsed command line (``argv``: what the flags left, the program name only)."""
  del argv  # parse_flags refuses anything left over
  _drop_late_loop_errors()
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _QuietLibraries) for f in handler.filters):
    handler.addFilter(_QuietLibraries())
  # Logs (progress, warnings) on stdout; stderr carries only the one-line error of a user mistake.
  stream, handler.python_handler.stream = handler.python_handler.stream, sys.stdout
  logging.logging.captureWarnings(True)
  try:
    configure_jax(FLAGS.config, FLAGS.jax_cache_dir)
    _run(FLAGS.mode)
  except UserError as e:
    _fail(str(e))
  finally:
    handler.python_handler.stream = stream


def cli(argv) -> int:
  """The command line, in this process: ``argv`` as ``sys.argv`` would be (program name first).

  Returns:
    0 when the command succeeded.

  Raises:
    SystemExit: with code 2 for a user mistake, after one line ``error: ...`` on stderr.
  """
  argv = [str(a) for a in argv]
  saved_argv = sys.argv
  sys.argv = argv  # ml_collections' config flag reads its --config.<key> overrides from sys.argv
  try:
    _forget_flags()
    remaining = parse_flags(argv)
    logging.use_absl_handler()  # what app.run does before main
    main(remaining)
  finally:
    sys.argv = saved_argv
    logging.logging.captureWarnings(False)  # main turned it on; the caller's warnings are its own
  return 0


def _forget_flags():
  """Resets every flag to its default and drops the ``--config.<key>`` flags of an earlier parse."""
  FLAGS.unparse_flags()
  for name in [n for n in FLAGS if n.startswith('config.')]:
    delattr(FLAGS, name)


def _fail(message: str) -> None:
  """Prints ``error: <message>`` as one line on stderr and raises ``SystemExit(2)``."""
  print('error: ' + ' '.join(str(message).split()), file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  raise SystemExit(2)


def _config_argument(argv):
  for i, a in enumerate(argv[1:], 1):
    if a.startswith('--config='):
      return a[len('--config='):]
    if a == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _last_error_line(text: str) -> str:
  """The innermost ``SomeError: message`` line of a message that embeds a traceback."""
  lines = [l.strip() for l in str(text).splitlines() if l.strip()]
  errs = [l for l in lines if re.match(r'^[A-Za-z_.]*(Error|Exception): ', l)]
  return errs[-1] if errs else ' '.join(lines)


def _flag_value(argv, name):
  for i, a in enumerate(argv[1:], 1):
    if a.startswith(f'--{name}='):
      return a[len(name) + 3:]
    if a == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _run_config_for_overrides(argv, config_arg):
  """eval/predict/config with a ``--workdir`` but no ``--config``: the run's own config.

  ``--config.<key>=...`` overrides then apply to the workdir's ``config.json`` (read through
  :func:`mpt_jax.workdir.get_config`), e.g. ``--config.model.pretrained_path=/new/place.npz``.
  """
  mode = _flag_value(argv, 'mode')
  workdir = _flag_value(argv, 'workdir')
  if config_arg is not None or mode not in RUN_MODES or not workdir:
    return argv
  from mpt_jax import workdir as wd  # pylint: disable=g-import-not-at-top
  workdir = wd.resolve(workdir)
  try:
    wd.load_run_config(workdir)
  except UserError as e:
    _fail(str(e))
  here = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'mpt_jax', 'workdir.py')
  return [argv[0], f'--config={here}:{workdir}'] + list(argv[1:])


def parse_flags(argv):
  """Parses flags; a bad config file, argument or override is one clear line, not a traceback."""
  config_arg = _config_argument(argv)
  argv = _run_config_for_overrides(argv, config_arg)
  if config_arg is not None:
    path = config_arg.split(':', 1)[0]
    if not os.path.isfile(path):
      _fail(f'--config: no config file {path} (the dataset configs are in configs/, e.g. '
            '--config=configs/samm.py or configs/synthetic.py:smoke)')
  try:
    remaining = FLAGS(argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError) as e:
    overrides = [a.split('=')[0] for a in argv[1:] if a.startswith('--config.')]
    _fail(f'cannot parse the command line ({_last_error_line(e)}). Config overrides given: '
          f'{overrides}; every key is listed in configs/common.py.')
  if len(remaining) > 1:
    _fail(f'unexpected argument(s) {remaining[1:]}: every argument is a --flag=value (a space '
          'after "=" ends the flag, e.g. --config.model.pretrained_path= /w.npz)')
  return remaining


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
