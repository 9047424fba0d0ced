"""Time from process start to the first training step, with and without the resampled cache.

Usage: python -m benchmarks.bench_startup [--clips=255] [--num_frames=16] [--image_size=224]
       [--workdir=/tmp/bench_startup]

Writes a CASME II-sized release (benchmarks/bench_prepare.py's fixture: 340 x 280 JPEGs, clips of
about 67 frames), prepares it once, then starts three fresh processes that each load the protocol
(T frames at ``image_size``, float16), build the smoke model (tiny ViT, CPU) and run one training
step: ``no cache`` (cache_resampled=False), ``cache miss`` (resamples and writes the cache) and
``cache hit``. Each prints the seconds to load the data, to build the model and to finish the first
step (which includes its compilation), and a second step (the step without compiling). CPU
only: the data part is what the cache changes. ``--reuse --runs='cache hit'`` times only the
cached start, on a fixture an earlier run prepared and cached. ``warm start`` is a cache hit with
main.py's persistent compilation cache (in ``<workdir>/jax_cache``) already holding the programs of
an identical earlier start (which it runs first): what a resumed or repeated run pays before its
first step when nothing needs compiling. ``compile_s`` is the wall time JAX spent tracing, lowering
and compiling (or reading compiled programs from the persistent cache) before the first step, from
JAX's own duration events (overlapping ones counted once); ``to_first_step_without_compile_s`` is
the rest of the start.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

T_START = time.time()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_for(data_dir, cache, num_frames, image_size):
  from configs import casme2  # pylint: disable=g-import-not-at-top
  config = casme2.get_config('smoke')
  config.data.builder_config = 'all'
  config.data.num_classes = 7
  config.data.subjects = ()
  config.data.data_dir = data_dir
  config.data.cache_resampled = bool(cache)
  config.train.folds_per_step = 1  # the first step of one fold
  config.model.num_frames = num_frames
  config.model.image_size = image_size
  config.model.tokenizer_patch = 16
  return config


COMPILE_EVENTS = ('/jax/core/compile/jaxpr_trace_duration',
                  '/jax/core/compile/jaxpr_to_mlir_module_duration',
                  '/jax/core/compile/backend_compile_duration')  # the last includes cache reads


def union_seconds(intervals):
  """Length of the union of ``(start, end)`` intervals (nested traces are counted once)."""
  total, end = 0.0, float('-inf')
  for a, b in sorted(intervals):
    if b > end:
      total += b - max(a, end)
      end = b
  return total


def child(args):
  """One run start: load, build, two steps. Prints a JSON line."""
  import jax  # pylint: disable=g-import-not-at-top
  compiling = []  # (start, end) of every trace, lowering and compile (or compilation-cache read)

  def on_duration(event, duration, **_):
    if event in COMPILE_EVENTS:
      now = time.time()
      compiling.append((now - duration, now))

  jax.monitoring.register_event_duration_secs_listener(on_duration)
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mpt_jax import fold_programs  # pylint: disable=g-import-not-at-top
  from mpt_jax import run_plan  # pylint: disable=g-import-not-at-top
  from mpt_jax import train  # pylint: disable=g-import-not-at-top
  config = config_for(args.data_dir, args.cache, args.num_frames, args.image_size)
  # main.py is imported as in a run: it provides the dataset builders to mpt_jax.
  import main as main_lib  # pylint: disable=g-import-not-at-top
  if args.compile_cache:
    main_lib.configure_jax(config, args.compile_cache)
  t_imports = time.time() - T_START
  t = time.time()
  data = input_pipeline.load(config)
  t_load = time.time() - t
  t = time.time()
  plan = run_plan.make_plan(config, data)  # checks the config
  on_device = fold_programs.DeviceData(plan, data)  # puts the data on the device
  jax.block_until_ready(on_device.on_device)
  t_device = time.time() - t
  t = time.time()
  init = fold_programs.init_seed(plan, config.seed)  # parameters (jit of model.init: a compile)
  programs = fold_programs.make_programs(plan, init)  # optimizer, programs
  layout = plan.layout
  state = layout.state_to_device(
      train.stack_states([programs.fresh_fold_state(init)] * layout.folds), plan.devices)
  # One training step of every fold slot: the epoch program called with one step per epoch (a run
  # calls it with its epoch's steps; the per-step work is the same).
  train_idx, _ = input_pipeline.split_for_subject(data, data.subject_list[0])
  batch = next(input_pipeline.epoch_batches(train_idx, int(config.train.batch_size),
                                            layout.split, 0, True))
  idx, aug, mask = (np.broadcast_to(a, (layout.folds, 1) + a.shape).copy()
                    for a in (batch.idx, batch.aug, batch.mask))
  args = [layout.to_device(a) for a in (idx, aug, mask)]
  t_init = time.time() - t
  t = time.time()
  state, m = programs.train(state, init.frozen_on_device, on_device.train_inputs(), *args)
  jax.block_until_ready(m)
  t_step = time.time() - t
  t_first = time.time() - T_START
  t_compile = union_seconds(compiling)
  t = time.time()
  state, m = programs.train(state, init.frozen_on_device, on_device.train_inputs(), *args)
  jax.block_until_ready(m)
  t_step2 = time.time() - t
  print(json.dumps({'imports_s': round(t_imports, 2), 'load_data_s': round(t_load, 2),
                    'data_on_device_s': round(t_device, 2),
                    'init_model_s': round(t_init, 2),
                    'build_model_s': round(t_device + t_init, 2),
                    'first_step_incl_compile_s': round(t_step, 2),
                    'second_step_s': round(t_step2, 2),
                    'to_first_step_s': round(t_first, 2),
                    'compile_s': round(t_compile, 2),
                    'to_first_step_without_compile_s': round(t_first - t_compile, 2),
                    'tfds_imported': 'tensorflow_datasets' in sys.modules,
                    'clips': len(data), 'clip_array': list(data.clips.shape)}), flush=True)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clips', type=int, default=255)
  parser.add_argument('--num_frames', type=int, default=16)
  parser.add_argument('--image_size', type=int, default=224)
  parser.add_argument('--workdir', default='/tmp/bench_startup')
  parser.add_argument('--reuse', action='store_true',
                      help='reuse the fixture prepared in --workdir by an earlier run')
  parser.add_argument('--runs', default='no cache,cache miss,cache hit,warm start',
                      help="which run starts to time, in order ('cache hit' alone needs --reuse "
                           'and a cache written by an earlier run)')
  parser.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  parser.add_argument('--data_dir', default='', help=argparse.SUPPRESS)
  parser.add_argument('--cache', type=int, default=1, help=argparse.SUPPRESS)
  parser.add_argument('--compile_cache', default='', help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    child(args)
    return
  from benchmarks import bench_prepare  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  manual = os.path.join(args.workdir, 'CASME2')
  data_dir = os.path.join(args.workdir, 'tfds')
  if not args.reuse:
    shutil.rmtree(args.workdir, ignore_errors=True)
    frames = len(bench_prepare.write_casme2(manual, args.clips))
    t = time.time()
    prepare.prepare(ml_collections.ConfigDict(dict(name='casme2', builder_config='all',
                                                   data_dir=data_dir, manual_dir=manual)))
    print(json.dumps({'clips': args.clips, 'frames': frames,
                      'prepare_s': round(time.time() - t, 1), 'num_frames': args.num_frames,
                      'image_size': args.image_size, 'cpu_count': len(os.sched_getaffinity(0))}),
          flush=True)
  runs = [r.strip() for r in args.runs.split(',') if r.strip()]
  known = {'no cache': 0, 'cache miss': 1, 'cache hit': 1, 'warm start': 1}
  if set(runs) - set(known):
    sys.exit(f'--runs: unknown {sorted(set(runs) - set(known))}; known: {sorted(known)}')
  if 'cache miss' in runs:
    for root, dirs, _ in os.walk(data_dir):  # start without a cache
      for d in (input_pipeline.CACHE_DIR, input_pipeline.INDEX_DIR):
        if d in dirs:
          shutil.rmtree(os.path.join(root, d))
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  def start(cache, compile_cache=''):
    out = subprocess.run([sys.executable, '-m', 'benchmarks.bench_startup', '--child', '--data_dir',
                          data_dir, '--cache', str(cache), '--num_frames', str(args.num_frames),
                          '--image_size', str(args.image_size), '--compile_cache', compile_cache],
                         env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    if out.returncode:
      sys.exit(f'{name} run failed:\n{out.stderr[-3000:]}')
    return [l for l in out.stdout.splitlines() if l.startswith('{')][-1]

  for name in runs:
    if name == 'warm start':
      jax_cache = os.path.join(args.workdir, 'jax_cache')
      shutil.rmtree(jax_cache, ignore_errors=True)
      start(1, jax_cache)  # fills the compilation cache
      line = start(1, jax_cache)
    else:
      line = start(known[name])
    print(json.dumps(dict(run=name, **json.loads(line))), flush=True)


if __name__ == '__main__':
  main()
