"""What a person sees: no library noise on the console, progress lines, the predict table, --json.

The end-to-end tests run the real commands (``python main.py ...``) in subprocesses on the
``configs/synthetic.py:smoke`` dataset and assert on their captured stdout and stderr. One prepared
dataset and one finished run are shared by the module. The test environment's quieting variables
(``tests/conftest.py`` sets ``TF_CPP_MIN_LOG_LEVEL``) are removed so the commands run as a user's.
"""

import io
import json
import logging
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from mpt_jax import console
from mpt_jax import metric_writers
from tests import helpers
from tfds_builders import me_builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ('happiness', 'surprise', 'disgust', 'repression', 'others')

# Lines (or their telling part) that libraries print by default and the console must not show.
NOISE = (
    'oneDNN custom operations are on',  # TensorFlow C++ start-up (port.cc)
    'All log messages before absl::InitializeLog()',  # absl C++ logging before initialisation
    'cpu_feature_guard',  # TensorFlow C++ INFO
    "Unable to initialize backend 'tpu'",  # jax._src.xla_bridge probing (INFO)
    'xla_bridge.py',
    'Downloading and preparing dataset',  # TFDS banner (printed on stdout)
    'Unknown size',
    'downloaded and prepared to',  # TFDS closing line
    'Subsequent calls will reuse this data',
    'has no dataset_info.json',  # TFDS is_prepared() warning on a first preparation
    'dataset_info.py',  # TFDS INFO 'Load dataset info from ...'
    'logging_writer.py',  # clu's echo of the TensorBoard scalars
    'train_loss=',
    'Generating splits',  # TFDS's progress bars (off without a terminal)
    'Shuffling ',
)
ABSL_INFO_LINE = re.compile(r'^I\d{4} \d\d:\d\d:\d\d', re.M)  # absl / C++ INFO record prefix
FOLD_LINE = re.compile(r'^fold [1-3]/3  subject p0[1-3]  accuracy +\d+\.\d % \(\d+/10\)  in \d+ s',
                       re.M)


def _env():
  env = dict(os.environ)
  for key in ('TF_CPP_MIN_LOG_LEVEL', 'TF_ENABLE_ONEDNN_OPTS', 'GRPC_VERBOSITY'):
    env.pop(key, None)
  # One CPU device, as a user's run has, compiled with the tests' fast options (which print
  # nothing).
  env['XLA_FLAGS'] = helpers.FAST_COMPILE
  return env


def _main(*args):
  proc = subprocess.run([sys.executable, 'main.py', *args], cwd=ROOT, env=_env(),
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, f'main.py {args} failed:\n{proc.stdout}\n{proc.stderr}'
  return proc


def _assert_quiet(proc):
  for stream, text in (('stdout', proc.stdout), ('stderr', proc.stderr)):
    for noise in NOISE:
      assert noise not in text, f'{noise!r} on {stream}:\n{text}'
    assert not ABSL_INFO_LINE.search(text), f'an INFO log line on {stream}:\n{text}'


@pytest.fixture(scope='module')
def prepared(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('console_tfds'))
  proc = _main('--mode=prepare', '--config=configs/synthetic.py:smoke',
               f'--config.data.data_dir={data_dir}')
  return data_dir, proc


@pytest.fixture(scope='module')
def trained(prepared, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('console_run') / 'run')
  proc = _main('--config=configs/synthetic.py:smoke', f'--workdir={workdir}',
               f'--config.data.data_dir={prepared[0]}')
  return workdir, proc


@pytest.fixture(scope='module')
def frames(tmp_path_factory):
  folder = tmp_path_factory.mktemp('console_frames')
  rng = np.random.default_rng(0)
  for i in range(10):
    Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(folder / f'img{i}.png')
  return str(folder)


@pytest.mark.slow
def test_prepare_prints_our_line_instead_of_the_tfds_banner(prepared):
  data_dir, proc = prepared
  _assert_quiet(proc)
  lines = proc.stdout.splitlines()
  assert lines[0] == ('preparing synthetic_me/small (generated, no download) into '
                      f'{data_dir}/synthetic_me/small/{me_builder.MEBuilder.VERSION}'), proc.stdout
  assert lines[1].startswith(f'Prepared {data_dir}/synthetic_me/small/'), proc.stdout
  assert lines[2] == 'synthetic_me: 30 clips, 3 subjects', proc.stdout


@pytest.mark.slow
def test_train_prints_fold_lines_and_results_only(trained):
  workdir, proc = trained
  _assert_quiet(proc)
  assert 'epoch 1/2' not in proc.stderr + proc.stdout  # the per-epoch log line is a detail
  # Not a terminal: plain lines, no bar redrawn with carriage returns.
  assert '\r' not in proc.stdout + proc.stderr
  lines = proc.stdout.splitlines()
  assert [bool(FOLD_LINE.match(l)) for l in lines[:3]] == [True] * 3, proc.stdout
  assert [l.split()[3] for l in lines[:3]] == ['p01', 'p02', 'p03']
  assert lines[3].startswith('| Method | Acc (%)')
  assert lines[-1] == f'Results: {workdir}/report.md'
  # The fold accuracies printed are those of the folds' records.
  for line in lines[:3]:
    subject = line.split()[3]
    with open(os.path.join(workdir, 'seed_0', f'fold_{subject}', 'result.json')) as f:
      r = json.load(f)
    correct = sum(int(a == b) for a, b in zip(r['labels'], r['predictions']))
    assert f'({correct}/{len(r["labels"])})' in line
  # TensorBoard files are still written, per fold and for the run.
  for subject in ('p01', 'p02', 'p03'):
    fdir = os.path.join(workdir, 'seed_0', f'fold_{subject}')
    events = [f for f in os.listdir(fdir) if f.startswith('events.out.tfevents')]
    assert events, fdir
    with open(os.path.join(fdir, events[0]), 'rb') as f:
      content = f.read()
    assert b'train_loss' in content and b'test_accuracy' in content
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(workdir))


@pytest.mark.slow
def test_eval_is_quiet(trained):
  workdir, _ = trained
  proc = _main('--mode=eval', f'--workdir={workdir}')
  _assert_quiet(proc)
  assert proc.stdout.startswith('| Method | Acc (%)'), proc.stdout


@pytest.mark.slow
def test_predict_prints_a_table_and_the_chosen_class(trained, frames):
  workdir, _ = trained
  proc = _main('--mode=predict', f'--workdir={workdir}', f'--input={frames}')
  _assert_quiet(proc)
  lines = proc.stdout.splitlines()
  assert lines[0].split() == ['class', 'probability', 'folds'], proc.stdout
  rows = lines[1:1 + len(CLASSES)]
  assert sorted(r.split()[0] for r in rows) == sorted(CLASSES)
  for r in rows:
    assert re.fullmatch(r'\w+ +\d+\.\d % +[0-3]/3( +<- prediction)?', r), r
  probs = [float(r.split()[1]) for r in rows]
  assert probs == sorted(probs, reverse=True)
  assert abs(sum(probs) - 100.0) < 0.5
  assert sum(int(r.split()[3].split('/')[0]) for r in rows) == 3  # each fold votes once
  chosen = rows[0].split()[0]
  assert rows[0].endswith('<- prediction')
  assert lines[-1].startswith(f'prediction: {chosen} ('), proc.stdout


@pytest.mark.slow
def test_predict_json_parses_and_verbosity_brings_details_back(trained, frames):
  workdir, _ = trained
  proc = _main('--mode=predict', f'--workdir={workdir}', f'--input={frames}', '--json',
               '--verbosity=0')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert set(result['probabilities']) == set(CLASSES)
  assert result['prediction'] in CLASSES
  assert result['folds'] == 3 and len(result['per_fold']) == 3
  assert abs(sum(result['probabilities'].values()) - 1.0) < 1e-4
  # --verbosity=0: INFO lines are back (logs go to stdout, before the answer's last line).
  assert ABSL_INFO_LINE.search(proc.stdout + proc.stderr), proc.stdout + proc.stderr


class _Terminal(io.StringIO):

  def isatty(self):
    return True


def _simulate(stream, out):
  """A 3-fold x 2-epoch run whose first fold finished in an earlier process (resumed), reported
  as the LOSO loop reports it."""
  progress = console.Progress(num_folds=3, num_epochs=2, stream=stream, out=out)
  for fold, subject in ((1, 'p02'), (2, 'p03')):
    for epoch in (1, 2):
      progress.epoch(fold, epoch, {'train_loss': 1.5, 'train_accuracy': 0.5}, subject)
    progress.fold_done(fold, {'subject': subject, 'seed': 0, 'labels': [0, 1, 2, 3],
                              'predictions': [0, 1, 2, 0]}, 12.0)
  progress.close()


def test_progress_without_a_terminal_prints_plain_fold_lines():
  stream, out = io.StringIO(), io.StringIO()
  _simulate(stream, out)
  assert stream.getvalue() == ''  # no bar
  assert out.getvalue().splitlines() == [
      'fold 2/3  subject p02  accuracy  75.0 % (3/4)  in 12 s  ETA 0 s',
      'fold 3/3  subject p03  accuracy  75.0 % (3/4)  in 12 s']


def test_progress_on_a_terminal_draws_one_bar_over_folds_and_epochs():
  stream, out = _Terminal(), io.StringIO()
  _simulate(stream, out)
  bar = stream.getvalue()
  assert '\r' in bar
  assert '2/6 epochs' in bar  # the finished first fold counts as done
  assert '6/6 epochs' in bar
  assert 'fold=3/3 p03' in bar
  assert out.getvalue().splitlines()[0].startswith('fold 2/3  subject p02  accuracy  75.0 %')


def test_metric_writer_writes_tensorboard_files_without_the_console_echo(tmp_path, caplog):
  from clu import metric_writers as clu_writers  # pylint: disable=g-import-not-at-top
  for name, make in (('ours', metric_writers.create_writer),
                     ('clu', clu_writers.create_default_writer)):
    logdir = tmp_path / name
    with caplog.at_level(logging.INFO):
      caplog.clear()
      writer = make(str(logdir))
      writer.write_scalars(1, {'train_loss': 0.25})
      writer.close()
      echoed = any('train_loss' in r.getMessage() for r in caplog.records)
    assert echoed == (name == 'clu')  # clu's default echoes; ours does not
    events = [f for f in os.listdir(logdir) if f.startswith('events.out.tfevents')]
    assert len(events) == 1
    assert b'train_loss' in (logdir / events[0]).read_bytes()


@pytest.mark.parametrize('argv, level', [
    (['main.py'], None),
    (['main.py', '--verbosity=0'], 0),
    (['main.py', '--verbosity', '1'], 1),
    (['main.py', '-v=info'], 0),
    (['main.py', '-v', 'debug'], 1),
    (['main.py', '--verbosity=-1'], -1),
    (['main.py', '--verbosity=1', '--v=warning'], -1),
    (['main.py', '--config.train.verbosity_x=3', '--vv=1'], None),
])
def test_requested_verbosity(argv, level):
  assert console.requested_verbosity(argv) == level


def test_prediction_table_counts_fold_votes():
  result = {'input': 'clip.mp4', 'frames_used': [3, 40], 'prediction': 'b',
            'probabilities': {'a': 0.3, 'b': 0.5, 'c': 0.2},
            'per_fold': {'s1': {'a': 0.6, 'b': 0.3, 'c': 0.1}, 's2': {'a': 0.2, 'b': 0.7, 'c': 0.1},
                         's3': {'a': 0.1, 'b': 0.5, 'c': 0.4}}}
  assert console.prediction_table(result).splitlines() == [
      'class  probability  folds',
      'b           50.0 %  2/3  <- prediction',
      'a           30.0 %  1/3',
      'c           20.0 %  0/3',
      'prediction: b (50.0 %, mean of 3 fold models, 2 of 3 agree) for clip.mp4 (frames 3..40)']


def test_tfds_not_prepared_warning_is_dropped_in_quiet_mode(tmp_path, caplog):
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config('smoke')
  config.data.data_dir = str(tmp_path)
  with caplog.at_level(logging.WARNING):
    assert not prepare.builder_for(config.data).is_prepared()
  records = [r for r in caplog.records if 'dataset_info.json' in r.getMessage()]
  assert len(records) == 1  # what TFDS logs for a dataset not prepared yet
  drop = console._DropMisleadingWarnings()  # pylint: disable=protected-access
  assert not drop.filter(records[0])
  other = logging.LogRecord('absl', logging.WARNING, records[0].pathname, 1, 'disk full', (), None)
  assert drop.filter(other)


def test_log_lines_go_above_the_bar_and_the_handler_is_restored(monkeypatch):
  terminal = _Terminal()
  from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
  python_handler = absl_logging.get_absl_handler().python_handler
  monkeypatch.setattr(python_handler, 'stream', terminal)
  progress = console.Progress(num_folds=1, num_epochs=2, stream=terminal, out=terminal)
  progress.epoch(0, 1, {'train_loss': 1.0}, 'p01')
  # What absl's handler does with a record once the flags are parsed (no --logtostderr).
  logging.StreamHandler.emit(python_handler, logging.LogRecord(
      'absl', logging.WARNING, __file__, 1, 'disk nearly full', (), None))
  progress.epoch(0, 2, {'train_loss': 0.9}, 'p01')
  progress.close()
  assert python_handler.stream is terminal
  text = terminal.getvalue()
  # tqdm.write clears the bar first, so the record starts a line of its own.
  line = next(l for l in text.split('\n') if 'disk nearly full' in l)
  assert 'LOSO' not in line.split('\r')[-1], repr(line)
