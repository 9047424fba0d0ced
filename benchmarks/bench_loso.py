"""A complete LOSO run, sequential vs fold-parallel, back to back: one JSON line.

Usage:
  python -m benchmarks.bench_loso [--config=configs/synthetic.py[:arg]] [--set=train.num_epochs=3]
      [--data=random|faces|prepared] [--subjects=8] [--clips=160] [--frames=T] [--image_size=S]
      [--vit=V] [--folds_per_step=1,all] [--check_same] [--without=tensorflow,clu]

Each variant (one value of ``--folds_per_step``) runs ``loso.train_and_evaluate`` on the same
in-memory data in a fresh subprocess (so its peak RSS is its own) with a fresh workdir, and reports:

* ``loso_s``: wall time of ``train_and_evaluate`` (checks, data to the device, init, every fold's
  training and evaluation, checkpoints, records, report); ``report_s``: the part spent writing the
  report and figures; ``train_s = loso_s - report_s``;
* ``train_clips_per_s``: real (unpadded) training clips over all folds, epochs and seeds divided by
  ``train_s``;
* ``compile_s``: JAX's own compile-time events (tracing + lowering + XLA compilation, summed, from
  ``jax.monitoring``) and ``compiles``: how many XLA compilations ran;
* ``peak_rss_mib``: the subprocess's ``ru_maxrss``; ``device_peak_mib``: the accelerator's peak
  allocation where the backend reports one (GPUs), else null.

``--folds_per_step=1`` is the sequential loop; ``F > 1`` trains F folds in one vmapped step.
``--check_same``
compares every fold's predictions (exactly) and probabilities (``--atol``) between variants.

Data (``--data``): ``random`` (default) makes uniform-noise clips in memory, fine for speed but
not for accuracy; ``faces`` renders the built-in synthetic faces (the ``make demo`` dataset's
generator, needs tensorflow-datasets importable but no preparation); ``prepared`` loads the config's
prepared TFDS dataset. Clips are assigned to subjects round-robin and to classes cyclically.

``--without=tensorflow,tensorflow_datasets,clu`` hides those packages (as on a GPU image that has
JAX but not TensorFlow), to check the runner needs none of them. ``--compile_cache=DIR`` sets up
main.py's persistent compilation cache in every variant (none by default: cold compiles).
"""

import argparse
import collections
import json
import os
import resource
import sys
import tempfile
import shutil
import time

from benchmarks import common
from benchmarks.common import BenchError, device_peak_mib, hide_modules  # pylint: disable=unused-import

ROOT = common.ROOT


def set_folds_per_step(config, folds: int) -> None:
  config.train.folds_per_step = int(folds)


# ------------------------------------------------------------------------------------ the data
def make_clipset(clips, labels, apex, subjects, names, classes):
  """An ``input_pipeline.ClipSet`` (its import needs no TensorFlow or TFDS)."""
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  return input_pipeline.ClipSet(clips, labels, apex, subjects, names, classes)


random_data = common.random_clipset


def faces_data(num_subjects, num_clips, frames, size):
  """The synthetic demo faces (``tfds_builders/synthetic.py``'s generator), resampled in memory."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  try:
    from tfds_builders import synthetic  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise BenchError(f'--data=faces needs tensorflow-datasets importable ({e}); use --data=random')
  cfg = synthetic.SyntheticConfig(name='bench')
  clips, labels, apex, subjects, names = [], [], [], [], []
  for i in range(num_clips):
    s, c = i % num_subjects, (i // num_subjects) % len(synthetic.CLASSES)
    emotion = synthetic.CLASSES[c]
    raw, onset, apex_frame, _ = synthetic.make_clip(s, emotion, i // num_subjects, cfg)
    clips.append(input_pipeline.prepare_clip(list(raw), frames, size))
    labels.append(c)
    apex.append(input_pipeline.apex_on_timeline(apex_frame - onset, len(raw), frames))
    subjects.append(f'p{s + 1:02d}')
    names.append(f'synthetic_me/p{s + 1:02d}/{emotion}_{i:04d}')
  return make_clipset(np.stack(clips), np.asarray(labels, np.int32), np.asarray(apex, np.int32),
                      np.asarray(subjects), np.asarray(names), tuple(synthetic.CLASSES))


def build_config(args):
  """The config of ``args`` (the same in every variant's subprocess)."""
  config = common.load_config(args.config, args.set)
  if args.vit:
    config.model.vit = args.vit
  if args.frames:
    config.model.num_frames = args.frames
  if args.image_size:
    config.model.image_size = args.image_size
  return config


def build_data(args, config):
  """The clips of ``args`` (the same in every variant); sets the config's classes to match."""
  frames, size = int(config.model.num_frames), int(config.model.image_size)
  num_classes = int(config.data.get('num_classes', 5) or 5)
  if args.data == 'random':
    data = random_data(args.subjects, args.clips, frames, size, num_classes)
  elif args.data == 'faces':
    data = faces_data(args.subjects, args.clips, frames, size)
  else:
    import importlib  # pylint: disable=g-import-not-at-top
    importlib.import_module('main')  # main.py provides the dataset builders to mpt_jax
    from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
    data = input_pipeline.load(config)
  if args.data != 'prepared':
    config.data.num_classes = len(data.classes)
    config.data.subjects = ()
  return data


# ---------------------------------------------------------------------- one variant (a child)
class CompileClock:
  """Sums JAX's compile-time events (``jax.monitoring``) while it is installed."""

  EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
            '/jax/core/compile/jaxpr_to_mlir_module_duration',
            '/jax/core/compile/backend_compile_duration')

  def __init__(self):
    import jax  # pylint: disable=g-import-not-at-top
    self.seconds = collections.defaultdict(float)
    self.counts = collections.Counter()
    jax.monitoring.register_event_duration_secs_listener(self._on)

  def _on(self, name, secs, **_):
    if name in self.EVENTS:
      self.seconds[name] += secs
      self.counts[name] += 1

  @property
  def total_s(self):
    return sum(self.seconds.values())

  @property
  def backend_compiles(self):
    return self.counts[self.EVENTS[-1]]


def read_folds(workdir):
  """Per fold (``seed/subject``): predictions, probabilities, final training loss."""
  out = {}
  for seed_dir in sorted(os.listdir(workdir)):
    if not seed_dir.startswith('seed_'):
      continue
    for fold in sorted(os.listdir(os.path.join(workdir, seed_dir))):
      path = os.path.join(workdir, seed_dir, fold, 'result.json')
      if os.path.exists(path):
        with open(path) as f:
          r = json.load(f)
        out[f'{seed_dir}/{r["subject"]}'] = {
            'predictions': r['predictions'], 'probabilities': r['probabilities'],
            'train_loss': r['history']['train_loss']}
  return out


def run_variant(args, folds, workdir):
  """Runs one LOSO; returns its measurements (a dict; ``error`` set for a user error)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  t_start = time.time()
  config = build_config(args)
  set_folds_per_step(config, folds)
  if args.compile_cache:  # exactly what main.py does (XLA flags too), before JAX starts
    import main as main_lib  # pylint: disable=g-import-not-at-top
    main_lib.configure_jax(config, args.compile_cache)
  data = build_data(args, config)
  import jax  # pylint: disable=g-import-not-at-top
  from mpt_jax import errors  # pylint: disable=g-import-not-at-top
  from mpt_jax import loso  # pylint: disable=g-import-not-at-top
  from mpt_jax import report as report_lib  # pylint: disable=g-import-not-at-top
  clock = CompileClock()
  report_time = [0.0]
  write_report = report_lib.write_report

  def timed_report(*a, **kw):
    t = time.time()
    try:
      return write_report(*a, **kw)
    finally:
      report_time[0] += time.time() - t

  report_lib.write_report = timed_report
  data_s = time.time() - t_start
  t = time.time()
  try:
    summary = loso.train_and_evaluate(config, workdir, data=data)
  except errors.UserError as e:
    return {'folds_per_step': folds, 'error': ' '.join(str(e).split())}
  loso_s = time.time() - t
  train_s = loso_s - report_time[0]
  seeds, epochs = int(config.num_seeds), int(config.train.num_epochs)
  train_clips = sum(int((data.subjects != s).sum()) for s in set(data.subjects.tolist()))
  train_clips *= seeds * epochs
  return {
      'folds_per_step': folds,
      'loso_s': round(loso_s, 3), 'report_s': round(report_time[0], 3),
      'train_s': round(train_s, 3), 'train_clips': train_clips,
      'train_clips_per_s': round(train_clips / train_s, 3),
      'compile_s': round(clock.total_s, 3), 'compiles': clock.backend_compiles,
      'data_s': round(data_s, 3),
      'peak_rss_mib': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
      'device_peak_mib': device_peak_mib(),
      'uf1': round(float(summary['last_epoch_over_seeds']['uf1']['mean']), 4),
      'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}',
      'folds': read_folds(workdir) if args.check_same else None,
      'fold_count': len(set(data.subjects.tolist())) * seeds,
      'accuracy_mean': float(np.mean([f['accuracy'] for e in summary['seeds'].values()
                                      for f in e['folds']])),
  }


# --------------------------------------------------------------------------------- the parent
def compare(a, b, atol):
  """Differences of two variants' folds: {'same_predictions': bool, 'max_prob_diff': float, ...}."""
  if set(a) != set(b):
    return {'same_predictions': False, 'reason': f'different folds {sorted(set(a) ^ set(b))}'}
  differing = [k for k in a if a[k]['predictions'] != b[k]['predictions']]
  prob = max((abs(x - y) for k in a for ra, rb in zip(a[k]['probabilities'],
                                                       b[k]['probabilities'])
              for x, y in zip(ra, rb)), default=0.0)
  loss = max((abs(x - y) for k in a for x, y in zip(a[k]['train_loss'], b[k]['train_loss'])),
             default=0.0)
  return {'same_predictions': not differing, 'folds_with_other_predictions': differing,
          'max_prob_diff': prob, 'max_train_loss_diff': loss, 'within_atol': prob <= atol}


def child_argv(args, folds):
  argv = common.module_argv('bench_loso', f'--config={args.config}', f'--data={args.data}',
                            f'--subjects={args.subjects}', f'--clips={args.clips}',
                            f'--_variant={folds}')
  argv += [f'--set={s}' for s in args.set]
  for name in ('frames', 'image_size', 'vit', 'without', 'workdir_root', 'compile_cache'):
    value = getattr(args, name)
    if value:
      argv.append(f'--{name}={value}')
  if args.check_same:
    argv.append('--check_same')
  return argv


def run_child(args, folds, timeout=None):
  """One variant in a fresh subprocess; returns its result dict (``error`` on failure)."""
  result = common.run_child(child_argv(args, folds), timeout=timeout)
  if 'error' in result and 'folds_per_step' not in result:
    result = {'folds_per_step': folds, 'error': f"the variant {result['error']}"}
  return result


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--config', default='configs/synthetic.py',
                 help='config file[:arg], as main.py takes it')
  p.add_argument('--set', action='append', default=[],
                 help='config override key=value (repeatable), e.g. train.num_epochs=3')
  p.add_argument('--data', choices=('random', 'faces', 'prepared'), default='random')
  p.add_argument('--subjects', type=int, default=8)
  p.add_argument('--clips', type=int, default=160)
  p.add_argument('--frames', type=int, default=0, help='T (default: the config\'s)')
  p.add_argument('--image_size', type=int, default=0, help='default: the config\'s')
  p.add_argument('--vit', default='', help='backbone variant (default: the config\'s)')
  p.add_argument('--folds_per_step', default='1,all',
                 help='variants, comma-separated: 1 = sequential, F = F folds per step, all = '
                      'every fold at once (--subjects)')
  p.add_argument('--check_same', action='store_true',
                 help='compare per-fold predictions and probabilities between the variants')
  p.add_argument('--atol', type=float, default=1e-4, help='--check_same probability tolerance')
  p.add_argument('--without', default='',
                 help='hide these packages, comma-separated (e.g. tensorflow,tensorflow_datasets,clu)')
  p.add_argument('--workdir_root', default='', help='where the variants\' workdirs go (temporary)')
  p.add_argument('--compile_cache', default='',
                 help='persistent compilation cache folder, set up as main.py does (default: none, '
                      'so every variant compiles from scratch); --folds_per_step=1,1 with a new '
                      'folder measures a cold and a warm cache')
  p.add_argument('--timeout', type=float, default=0, help='seconds per variant (0 = none)')
  p.add_argument('--_variant', type=int, default=None, help=argparse.SUPPRESS)
  p.add_argument('--_out', default='', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  try:
    args.folds = [args.subjects if x.strip() == 'all' else int(x)
                  for x in args.folds_per_step.split(',') if x.strip()]
  except ValueError:
    p.error(f'--folds_per_step={args.folds_per_step}: expected integers such as 1,4')
  return args


def child_main(args):
  workdir = tempfile.mkdtemp(prefix='loso_', dir=args.workdir_root or None)
  try:
    try:
      result = run_variant(args, args._variant, workdir)  # pylint: disable=protected-access
    except BenchError as e:
      result = {'folds_per_step': args._variant, 'error': str(e)}  # pylint: disable=protected-access
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  common.write_result(args._out, result)  # pylint: disable=protected-access


def main(argv=None):
  args = parse_args(argv)
  hide_modules(args.without.split(','))
  if args._variant is not None:  # pylint: disable=protected-access
    child_main(args)
    return 0
  try:
    config = common.load_config(args.config, args.set)  # fail fast on a bad config or override
  except BenchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  del config
  t0 = time.time()
  results = [run_child(args, folds, timeout=args.timeout or None) for folds in args.folds]
  line = {'bench': 'loso', 'config': args.config, 'set': args.set, 'data': args.data,
          'subjects': args.subjects, 'clips': args.clips if args.data != 'prepared' else None,
          'wall_s': round(time.time() - t0, 2)}
  ok = [r for r in results if 'error' not in r]
  base = next((r for r in ok if r['folds_per_step'] == 1), ok[0] if ok else None)
  for r in ok:
    if base is not None and r is not base:
      r['speedup_vs_sequential'] = round(base['train_s'] / r['train_s'], 3)
  failed = False
  if args.check_same:
    if len(ok) < 2:
      line['check_same'] = {'error': '--check_same needs two variants that ran'}
      failed = True
    else:
      line['check_same'] = {str(r['folds_per_step']): compare(base['folds'], r['folds'], args.atol)
                            for r in ok if r is not base}
      failed = not all(c['same_predictions'] and c['within_atol']
                       for c in line['check_same'].values())
  for r in results:
    r.pop('folds', None)
  line['variants'] = results
  print(json.dumps(line), flush=True)
  for r in results:
    if 'error' in r:
      prefix = '' if r['error'].startswith('folds_per_step=') else \
          f"folds_per_step={r['folds_per_step']}: "
      print(f"error: {prefix}{r['error']}", file=sys.stderr)
  if failed:
    why = line['check_same'].get('error', '--check_same: the variants differ (see check_same in '
                                          'the JSON line)')
    print(f'error: {why}', file=sys.stderr)
  return 2 if failed or any('error' in r for r in results) else 0


if __name__ == '__main__':
  sys.exit(main())
