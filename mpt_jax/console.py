"""What a person sees on the console: quiet libraries, run progress, readable predictions.

By default the command line prints only our own lines: the preparation line and report, one
progress bar for a LOSO run with a line per finished fold, the results table, the prediction table.
Where each library line came from and how it is silenced at its source (:func:`quiet_libraries`,
called at the very top of ``main.py`` before anything imports TensorFlow or JAX):

* ``I... port.cc] oneDNN custom operations are on ...`` (printed twice, once per TensorFlow shared
  library) and the ``WARNING: All log messages before absl::InitializeLog() is called are written
  to STDERR`` line that absl's C++ logging prints before the first such message: TensorFlow's C++
  start-up logs these without honouring ``TF_CPP_MIN_LOG_LEVEL``. ``TF_ENABLE_ONEDNN_OPTS=0``
  turns the oneDNN custom kernels, and with them the message, off. TensorFlow computes nothing here
  (it only encodes/decodes PNGs and writes TensorBoard files; JAX/XLA runs the model), so no number
  changes. ``TF_CPP_MIN_LOG_LEVEL=1`` drops the rest of TensorFlow's and XLA's C++ INFO lines (such
  as the CPU-feature notice) and keeps their warnings and errors.
* ``I... xla_bridge.py] Unable to initialize backend 'tpu' ...``: JAX probing for accelerators, an
  INFO record of the Python logger ``jax._src.xla_bridge``; TFDS's ``Load dataset info``,
  ``Generating dataset``, ``Done writing`` and clu's TensorBoard echo (``logging_writer.py``) are
  INFO records too. Without an explicit ``--verbosity`` the Python logging threshold is WARNING
  instead of absl's INFO, so warnings and errors still show.
* ``Downloading and preparing dataset Unknown size (download: Unknown size, ...)`` and
  ``Dataset ... downloaded and prepared to ...``: TFDS prints these with ``termcolor.cprint`` on
  stdout (not through logging). :func:`announce_preparation` prints our own line instead and turns
  TFDS's two lines into INFO log records.

absl's own ``--verbosity`` (``-v``) flag brings everything back: ``--verbosity=0`` shows every INFO
line (ours and the libraries', the TensorFlow C++ ones included), ``--verbosity=1`` adds DEBUG.
"""

import io
import math
import os
import re
import sys
import time
from typing import Any, Dict, Mapping, Optional, Sequence, TextIO

from absl import logging

# absl accepts these names for --verbosity besides integers (absl level: INFO 0, DEBUG 1).
_VERBOSITY_NAMES = {'debug': 1, 'info': 0, 'warning': -1, 'warn': -1, 'error': -2, 'fatal': -3}


def requested_verbosity(argv: Sequence[str]) -> Optional[int]:
  """The absl level of ``--verbosity``/``-v`` in ``argv`` (the last one wins), or None if absent.

  Read straight from the command line because the environment of TensorFlow's C++ logging must be
  set before TensorFlow is imported, which may happen before absl parses the flags. An unparsable
  value returns 0 (verbose); absl itself then reports the bad value.
  """
  level = None
  args = list(argv[1:])
  for i, arg in enumerate(args):
    m = re.fullmatch(r'--?(?:verbosity|v)(?:=(.*))?', arg)
    if not m:
      continue
    value = m.group(1) if m.group(1) is not None else (args[i + 1] if i + 1 < len(args) else '')
    value = value.strip().lower()
    try:
      level = int(value)
    except ValueError:
      level = _VERBOSITY_NAMES.get(value, 0)
  return level


def quiet_libraries(argv: Optional[Sequence[str]] = None) -> bool:
  """Silences the libraries' start-up noise at its sources unless ``--verbosity`` asks for INFO.

  Call it at the very top of ``main.py``, before TensorFlow or JAX is imported. Variables already
  set in the environment are respected.

  Args:
    argv: the command line (default ``sys.argv``).

  Returns:
    True if the console is quiet (no ``--verbosity`` of INFO or more on the command line).
  """
  level = requested_verbosity(sys.argv if argv is None else argv)
  # TensorFlow computes nothing here; without its oneDNN kernels it also prints no oneDNN notice.
  os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
  if level is not None and level >= 0:
    return False
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # C++ INFO off; warnings and errors stay.
  # FFmpeg (inside OpenCV) prints its decoder errors itself ("moov atom not found"); predict's own
  # one-line error says what is wrong with an unreadable video.
  os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
  logging.get_absl_handler().addFilter(_DropMisleadingWarnings())
  if level is None:
    from absl import app  # pylint: disable=g-import-not-at-top
    # absl raises an unset --verbosity to INFO once the flags are parsed; lower it back afterwards.
    app.call_after_init(_warnings_only_unless_asked)
  return True


class _DropMisleadingWarnings(logging.logging.Filter):
  """Drops library warnings that state the normal case as a problem.

  TFDS's ``DatasetBuilder.is_prepared()`` warns ``Variant folder ... has no dataset_info.json``
  for every dataset not prepared yet, i.e. at the start of every first preparation.
  """

  def filter(self, record):
    return not (record.msg == 'Variant folder %s has no %s'
                and 'tensorflow_datasets' in record.pathname)


def _warnings_only_unless_asked() -> None:
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


def _quiet_tfds_banner() -> None:
  """Turns TFDS's printed "Downloading and preparing ..." / "... prepared to" lines into INFO logs."""
  from tensorflow_datasets.core import dataset_builder  # pylint: disable=g-import-not-at-top
  cls = dataset_builder.DatasetBuilder
  if getattr(cls, '_mpt_jax_quiet', False):
    return

  def log_start(self):
    logging.info('TFDS: generating %s into %s', self.name, self.data_dir)

  def log_done(self):
    logging.info('TFDS: %s prepared in %s', self.name, self.data_dir)

  # Private TFDS methods (tensorflow-datasets is pinned); should they disappear, TFDS's lines
  # merely come back (tests/test_console.py notices).
  if not all(callable(getattr(cls, n, None)) for n in ('_log_download_bytes', '_log_download_done')):
    return
  cls._log_download_bytes = log_start  # pylint: disable=protected-access
  cls._log_download_done = log_done  # pylint: disable=protected-access
  cls._mpt_jax_quiet = True  # pylint: disable=protected-access


def preparation_line(name: str, config_name: Optional[str], manual_dir: Optional[str],
                     data_dir: str, prepared: bool) -> str:
  """One line saying what ``--mode=prepare`` is about to do."""
  full = f'{name}/{config_name}' if config_name else name
  if prepared:
    return f'{full}: already prepared in {data_dir}'
  source = f'from {manual_dir}' if manual_dir else '(generated, no download)'
  return f'preparing {full} {source} into {data_dir}'


def announce_preparation(builder, manual_dir: Optional[str], out: Optional[TextIO] = None) -> None:
  """Prints the one preparation line and silences TFDS's own banner (call before preparing);
  without a terminal on stderr (a log file, CI) TFDS's progress bars are off too."""
  _quiet_tfds_banner()
  if not _is_terminal(sys.stderr):
    from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
    tqdm_utils.disable_progress_bar()
  line = preparation_line(builder.name, builder.builder_config.name if builder.builder_config
                          else None, os.path.expanduser(manual_dir) if manual_dir else None,
                          builder.data_dir,
                          os.path.exists(os.path.join(builder.data_dir, 'dataset_info.json')))
  print(line, file=out or sys.stdout, flush=True)


def format_seconds(seconds: float) -> str:
  """``7 s``, ``3 min 05 s``, ``2 h 04 min``."""
  s = int(round(max(0.0, seconds)))
  if s < 60:
    return f'{s} s'
  if s < 3600:
    return f'{s // 60} min {s % 60:02d} s'
  return f'{s // 3600} h {s % 3600 // 60:02d} min'


class Progress:
  """Progress of a LOSO run: every (seed, fold) x epoch of the run is one step.

  On a terminal (``stream.isatty()``) one tqdm bar covers the whole run with an ETA, and a line per
  finished fold is printed above it. Otherwise (CI, a log file) there is no bar, only the plain fold
  lines, each carrying the ETA. Epochs finished by an earlier process (a resumed run) count as done
  but not in the speed, so the ETA stays honest.

  Usage (``mpt_jax/loso.py``)::

    progress = console.Progress(num_folds=seeds * subjects, num_epochs=epochs)
    progress.epoch(fold_number, epoch, scalars, subject)   # after every epoch of a fold
    ...
    progress.fold_done(fold_number, result, seconds)
    progress.close()
  """

  def __init__(self, num_folds: int, num_epochs: int, num_seeds: int = 1,
               stream: Optional[TextIO] = None, out: Optional[TextIO] = None,
               show: bool = True, bar: Optional[bool] = None):
    """Sets up the progress of ``num_folds`` (over all seeds) folds of ``num_epochs`` epochs.

    Args:
      num_folds: folds of the whole run (seeds x subjects).
      num_epochs: epochs per fold.
      num_seeds: seeds of the run (the fold lines name the seed when there are several).
      stream: where the bar goes (default ``sys.stderr``).
      out: where the fold lines go (default ``sys.stdout``).
      show: False prints nothing at all (e.g. on the non-first process of a multi-host run).
      bar: force the bar on or off (default: whether ``stream`` is a terminal).
    """
    self.num_folds, self.num_epochs, self.num_seeds = int(num_folds), int(num_epochs), num_seeds
    self.total = self.num_folds * self.num_epochs
    self.stream = stream if stream is not None else sys.stderr
    self.out = out if out is not None else sys.stdout
    self.show = show
    if bar is None:
      bar = _is_terminal(self.stream)
    self.use_bar = show and bar
    self._bar = None
    self._log_stream = None  # the absl handler's stream while the bar is shown
    self._position = 0  # epochs of the run done (earlier processes included)
    self._trained = 0  # epochs trained by this process
    self._t0 = None  # time of the first epoch trained by this process

  def _ensure_bar(self):
    if self._bar is None and self.use_bar:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self._bar = tqdm(total=self.total, initial=self._position, file=self.stream, unit='epoch',
                       desc='LOSO', dynamic_ncols=True, leave=True, miniters=1, mininterval=0,
                       bar_format='{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} epochs '
                                  '[{elapsed}<{remaining}]{postfix}')
      # Log lines (warnings; every INFO line with --verbosity=0) are printed above the bar
      # instead of through it.
      handler = logging.get_absl_handler().python_handler
      if handler.stream is self.stream:
        self._log_stream = handler.stream
        handler.stream = _AboveTheBar(self.stream)
    return self._bar

  def _postfix(self, fold_number: int, subject: Optional[str],
               scalars: Optional[Mapping[str, Any]] = None) -> None:
    if self._bar is not None:
      post = {'fold': f'{fold_number + 1}/{self.num_folds}' + (f' {subject}' if subject else '')}
      if scalars and 'train_loss' in scalars:
        post['loss'] = f"{float(scalars['train_loss']):.3f}"
      self._bar.set_postfix(post, refresh=True)

  def epoch(self, fold_number: int, epoch: int, scalars: Optional[Mapping[str, Any]] = None,
            subject: Optional[str] = None) -> None:
    """Epoch ``epoch`` (1-based) of the run's fold ``fold_number`` (0-based) has finished."""
    position = min(self.total, fold_number * self.num_epochs + int(epoch))
    # Epochs of a resumed fold were done by an earlier process: done, but not part of the speed.
    self._advance(position - 1, counted=False)
    # This process's first epoch includes the compilation: counted as done, not in the speed.
    first = self._t0 is None
    self._advance(position, counted=not first)
    if first:
      self._t0 = time.time()
    self._postfix(fold_number, subject, scalars)

  def _advance(self, position: int, counted: bool) -> None:
    """Moves to ``position``; ``counted`` steps enter the speed (and ETA), others do not."""
    steps = position - self._position
    if steps <= 0:
      return
    bar = self._ensure_bar()
    self._position = position
    if counted:
      self._trained += steps
      if bar is not None:
        bar.update(steps)
    else:
      if bar is not None:  # shift the bar's start, as tqdm's own ``initial`` does
        bar.n += steps
        bar.last_print_n += steps
        bar.initial += steps
        bar.last_print_t = bar._time()  # pylint: disable=protected-access
        bar.refresh()

  def eta_seconds(self) -> Optional[float]:
    """Remaining time from this process's speed so far, or None before the first epoch."""
    if not self._trained or self._t0 is None:
      return None
    return (time.time() - self._t0) / self._trained * (self.total - self._position)

  def fold_line(self, fold_number: int, subject: str, correct: int, n: int, seconds: float,
                seed: Optional[int] = None) -> str:
    """``fold 2/8  subject p02  accuracy 40.0 % (4/10)  in 23 s  ETA 2 min 41 s``."""
    width = len(str(self.num_folds))
    who = f'seed {seed} subject {subject}' if self.num_seeds > 1 and seed is not None \
        else f'subject {subject}'
    acc = 100.0 * correct / n if n else math.nan
    line = (f'fold {fold_number + 1:>{width}}/{self.num_folds}  {who}  accuracy {acc:5.1f} % '
            f'({correct}/{n})  in {format_seconds(seconds)}')
    eta = self.eta_seconds()
    if eta is not None and self._position < self.total:
      line += f'  ETA {format_seconds(eta)}'
    return line

  def fold_done(self, fold_number: int, result: Mapping[str, Any], seconds: float) -> None:
    """Prints the line of a finished fold (``result`` as written to its ``result.json``)."""
    if not self.show:
      return
    labels, preds = list(result['labels']), list(result['predictions'])
    correct = sum(int(l == p) for l, p in zip(labels, preds))
    line = self.fold_line(fold_number, str(result['subject']), correct, len(labels), seconds,
                          result.get('seed'))
    if self._bar is not None:
      self._bar.write(line, file=self.out)
    else:
      print(line, file=self.out, flush=True)

  def close(self) -> None:
    if self._bar is not None:
      handler = logging.get_absl_handler().python_handler
      if self._log_stream is not None and isinstance(handler.stream, _AboveTheBar):
        handler.stream = self._log_stream
      self._log_stream = None
      self._bar.close()
      self._bar = None


class _AboveTheBar:
  """A text stream for log handlers that prints each line above the active tqdm bars."""

  def __init__(self, stream: TextIO):
    self._stream = stream

  def write(self, text: str) -> None:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    tqdm.write(text, file=self._stream, end='')

  def flush(self) -> None:
    self._stream.flush()

  def isatty(self) -> bool:
    return self._stream.isatty()


def _is_terminal(stream) -> bool:
  """Whether ``stream`` is a terminal a bar can be drawn on (a pty of width 0 is not)."""
  isatty = getattr(stream, 'isatty', None)
  if not (isatty and isatty()):
    return False
  try:
    return os.get_terminal_size(stream.fileno()).columns > 0
  except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
    return True  # a terminal-like object without a file descriptor


def prediction_table(result: Dict[str, Any]) -> str:
  """A readable table of a ``predict`` result: class, probability, fold agreement, the choice.

  Classes are sorted by mean probability; "folds" counts the fold models whose own most probable
  class it is.
  """
  probs = result['probabilities']
  per_fold = result.get('per_fold', {})
  votes = {c: 0 for c in probs}
  for fold_probs in per_fold.values():
    votes[max(fold_probs, key=fold_probs.get)] += 1
  n_folds = len(per_fold)
  width = max(len('class'), *(len(c) for c in probs))
  lines = [f'{"class":<{width}}  probability  folds']
  for c in sorted(probs, key=lambda k: -probs[k]):
    mark = '  <- prediction' if c == result['prediction'] else ''
    lines.append(f'{c:<{width}}  {100.0 * probs[c]:9.1f} %  {votes[c]:>{len(str(n_folds))}}/'
                 f'{n_folds}{mark}')
  chosen = result['prediction']
  frames = result.get('frames_used')
  where = result.get('input', '')
  if frames:
    lo, hi = frames
    where += f' (frames {lo}..{"end" if hi is None else hi})'
  if result.get('face', 'none') != 'none':
    where += f', face: {result["face"]}'
  lines.append(f'prediction: {chosen} ({100.0 * probs[chosen]:.1f} %, mean of {n_folds} fold '
               f'models, {votes[chosen]} of {n_folds} agree) for {where}')
  return '\n'.join(lines)
