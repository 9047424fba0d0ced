"""The one-shot GPU check: the runner's own training step (speed, MFU, profile) and a CASME II-sized LOSO.

Usage: bash benchmarks/gpu_check.sh [--tiny] [--budget_s=470] [--deterministic=true|false]
       [--profile_md=PATH]   (or python -m benchmarks.gpu_check where ml_collections is installed)

Two parts, each in its own subprocess with a hard time limit, so the whole stays within
``--budget_s`` (default 470 s, under 8 minutes with start-up) and a part that runs out of time or
memory loses only itself:

1. ``steps``: the runner's training program (:class:`benchmarks.common.RunnerPrograms`:
   ``run_plan.make_plan`` and ``fold_programs.make_programs`` as in a LOSO run, with the config's
   motion cache, epoch loop, attention and compile options; ViT-B/16, 224 px, T = 16, batch 16 per
   fold, 5 classes, random frozen backbone) in float32 and bfloat16 (``config.model.dtype``) for F =
   1, 8 and 26 folds at once. Per entry: ``compile_s`` (the first epoch, compilation included),
   ``step_ms`` (an epoch of 2 steps of every fold, over 2), ``clips_per_s`` (F x 16 clips per step),
   ``gflop_per_step`` (XLA's cost analysis of the runner's one-step program, as lowered, 2 flops per
   multiply-add), ``tflops`` achieved and ``mfu`` against the card's dense peak (bfloat16: H100 SXM
   / H200 989, H100 PCIe 756, A100 312 TFLOP/s; float32 against the TF32 peak, half of that, as XLA
   runs float32 products as TF32 on these cards by default), and ``profile``: one epoch (two steps)
   under ``jax.profiler``, the top 15 kernels by time (name, ms, share of all kernel time). Measured
   in the order f32 F=1, bf16 F=1, bf16 F=8, bf16 F=26, f32 F=8, f32 F=26; entries the part's time
   limit leaves no room for say ``skipped``.
2. ``loso``: a CASME II-sized LOSO end to end through the real runner (``benchmarks.bench_loso``:
   26 subjects, 249 random clips made in memory, T = 16, 224 px, 20 epochs, random frozen
   ViT-B/16, every fold at once, bfloat16), with ``train_s`` (training, evaluation and records,
   without the report) and ``loso_s``.

``targets`` compares with the goals on one H100/H200: the LOSO in at most 60 s of training, at
least 40 % MFU in bfloat16 (the best bf16 entry), bfloat16 at least 1.8x float32 (F = 26, or the
largest F both measured).

``--tiny`` runs the same code on CPU in under two minutes (tiny ViT, 32 px, T = 8, batch 4,
F = 1 and 2, a 3-subject LOSO of 1 epoch) to test the script. ``--deterministic`` (default true,
as ``config.train.deterministic``) sets ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` in both
parts. No TensorFlow, TFDS or clu is imported (``--without`` hides them to prove it on a machine
that has them). ``--profile_md`` also writes the profile tables as markdown.
"""

import argparse
import json
import os
import sys
import tempfile
import time

from benchmarks import bench_loso
from benchmarks import common

# Dense peak TFLOP/s (bfloat16, TF32) by device kind, first match wins (NVIDIA data sheets).
PEAKS = (('H100 PCIe', 756.0, 378.0), ('H100', 989.0, 494.5), ('H200', 989.0, 494.5),
         ('GH200', 989.0, 494.5), ('A100', 312.0, 156.0))
FULL = {'config': 'configs/casme2.py', 'sets': (), 'batch': 16, 'folds': (1, 8, 26),
        'subjects': 26, 'clips': 249, 'frames': 16, 'image_size': 224, 'epochs': 20}
TINY = {'config': 'configs/casme2.py:smoke', 'sets': (), 'batch': 4, 'folds': (1, 2),
        'subjects': 3, 'clips': 9, 'frames': 8, 'image_size': 32, 'epochs': 1}
ORDER = (('float32', 0), ('bfloat16', 0), ('bfloat16', 1), ('bfloat16', 2), ('float32', 1),
         ('float32', 2))  # (dtype, index into the sizes' folds)
STEPS = 2  # steps per timed epoch; the profile covers one such epoch
STEPS_SHARE = 0.5  # of the budget, at most, for the steps part; the LOSO gets the rest
HIDDEN = 'tensorflow,tensorflow_datasets,clu'


def peak_tflops(device_kind: str, dtype: str):
  for name, bf16, tf32 in PEAKS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == 'bfloat16' else tf32
  return None


def step_config(sizes, dtype: str, folds: int):
  return common.load_config(sizes['config'], list(sizes['sets']) + [
      'model.allow_random_backbone=True', f'model.dtype={dtype}',
      f'train.batch_size={sizes["batch"]}', f'train.eval_batch_size={sizes["batch"]}',
      f'train.folds_per_step={folds}'])


# ------------------------------------------------------------------------------ the steps part
def measure_step(sizes, dtype: str, folds: int, min_time_s: float, trace_dir: str):
  """The runner's training program of ``folds`` fold slots in ``dtype``: timing, flops, profile."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  programs = common.RunnerPrograms(step_config(sizes, dtype, folds), folds=folds, steps=STEPS)
  timing = common.time_calls(programs.train_epoch, repeats=3, min_time_s=min_time_s,
                             max_repeats=30)
  step_s = timing['median_s'] / programs.steps
  metrics = programs.train_epoch()
  flops = programs.step_flops()
  device = jax.devices()[0]
  entry = {'status': 'ok', **programs.describe(), 'compile_s': timing['first_s'],
           'epochs_timed': len(timing['times_s']), 'step_ms': round(1000 * step_s, 3),
           'clips_per_s': round(programs.layout.folds * sizes['batch'] / step_s, 2),
           'loss_finite': bool(np.all(np.isfinite(np.asarray(metrics['loss']))))}
  if flops:
    tflops = flops / step_s / 1e12
    peak = peak_tflops(device.device_kind, dtype) if device.platform == 'gpu' else None
    entry.update({'gflop_per_step': float(f'{flops / 1e9:.6g}'), 'tflops': round(tflops, 4),
                  'peak_tflops': peak, 'mfu': round(tflops / peak, 4) if peak else None})
  try:  # a profiler that cannot start (e.g. no CUPTI) costs the table, not the timing
    entry['profile'] = common.profile(programs.train_epoch, trace_dir)
  except Exception as e:  # pylint: disable=broad-except
    entry['profile'] = {'error': f'{type(e).__name__}: {" ".join(str(e).split())[:300]}'}
  mem = common.device_peak_mib()
  if mem is not None:
    entry['device_peak_mib'] = mem
  return entry


def steps_child(args):
  """Writes one JSON line per (dtype, F) to ``args._out`` as each finishes."""
  import jax  # pylint: disable=g-import-not-at-top
  sizes = TINY if args.tiny else FULL
  deadline = args._deadline  # pylint: disable=protected-access
  with open(args._out, 'a') as out:  # pylint: disable=protected-access
    out.write(json.dumps({'device': common.device_label(), 'jax': jax.__version__}) + '\n')
    out.flush()
    last = None  # seconds the previous measurement took, to skip what cannot finish
    for dtype, i in ORDER:
      if i >= len(sizes['folds']):
        continue
      folds = sizes['folds'][i]
      key = {'dtype': dtype, 'F': folds}
      left = deadline - time.time()
      if last is not None and left < 1.5 * last * max(1.0, folds / 8):
        out.write(json.dumps({**key, 'status': f'skipped: {left:.0f} s left in the steps part'})
                  + '\n')
        out.flush()
        continue
      t = time.time()
      try:
        with tempfile.TemporaryDirectory(prefix='gpu_check_trace_') as trace_dir:
          entry = measure_step(sizes, dtype, folds, 0.2 if args.tiny else 2.0, trace_dir)
      except Exception as e:  # pylint: disable=broad-except
        text = ' '.join(str(e).split())
        entry = {'status': f'error: {type(e).__name__}: {text[:300]}'}
      if entry['status'] == 'ok':
        last = time.time() - t
      out.write(json.dumps({**key, **entry}) + '\n')
      out.flush()


def run_steps(args, timeout):
  """The steps part in a subprocess; returns (device line, entries, status)."""
  with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
    out = os.path.join(tmp, 'steps.jsonl')
    argv = common.module_argv('gpu_check', '--_part=steps', f'--_deadline={time.time() + timeout - 5}',
                              f'--without={args.without}') + (['--tiny'] if args.tiny else [])
    result = common.run_child(argv, timeout=timeout, out_path=out)
    lines = []
    if os.path.exists(out):
      with open(out) as f:
        lines = [json.loads(l) for l in f if l.strip()]
  head = lines[0] if lines else {}
  return head, lines[1:], result.get('error')


# -------------------------------------------------------------------------------- the LOSO part
def run_loso(args, sizes, timeout):
  """The CASME II-sized LOSO through bench_loso's child (a subprocess with a time limit), every
  fold at once, bfloat16."""
  sets = ['model.allow_random_backbone=True', f'train.num_epochs={sizes["epochs"]}',
          'model.dtype=bfloat16']
  if args.tiny:
    sets += ['train.batch_size=2', 'train.eval_batch_size=2']
  with tempfile.TemporaryDirectory(prefix='gpu_check_loso_') as root:
    largs = bench_loso.parse_args([
        f'--config={sizes["config"]}', f'--subjects={sizes["subjects"]}',
        f'--clips={sizes["clips"]}', f'--frames={sizes["frames"]}',
        f'--image_size={sizes["image_size"]}', f'--without={args.without}',
        f'--workdir_root={root}'] + [f'--set={s}' for s in sets])
    result = bench_loso.run_child(largs, sizes['subjects'], timeout=timeout)
    if 'error' in result:
      done = 0
      for dirpath, _, files in os.walk(root):
        done += 'result.json' in files and os.path.basename(dirpath).startswith('fold_')
      result['folds_finished'] = done
  result.update({'subjects': sizes['subjects'], 'clips': sizes['clips'],
                 'frames': sizes['frames'], 'image_size': sizes['image_size'],
                 'epochs': sizes['epochs'], 'dtype': 'bfloat16', 'fold_parallel': True})
  return result


def bf16_speedup(steps):
  """bfloat16 over float32 step speed at the largest F both measured."""
  f32, bf16 = steps.get('float32', {}), steps.get('bfloat16', {})
  both = [k for k in f32 if k in bf16 and f32[k].get('status') == bf16[k].get('status') == 'ok']
  if not both:
    return None
  k = max(both, key=lambda x: int(x[1:]))
  return {'F': int(k[1:]), 'ratio': round(f32[k]['step_ms'] / bf16[k]['step_ms'], 3)}


def profile_markdown(device, steps) -> str:
  parts = [f'Device: {device}. Top kernels of one training epoch of {STEPS} steps (jax.profiler).']
  for dtype, entries in steps.items():
    for name, e in entries.items():
      if e.get('status') == 'ok' and 'profile' in e:
        parts.append(f'\n### {dtype}, {name} (step {e["step_ms"]} ms, attention {e["attention"]})'
                     f'\n\n{common.markdown_table(e["profile"])}')
  return '\n'.join(parts) + '\n'


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--tiny', action='store_true', help='tiny sizes, for CPU tests')
  p.add_argument('--budget_s', type=float, default=470.0, help='whole-run time limit (seconds)')
  p.add_argument('--deterministic', default='true', choices=('true', 'false'),
                 help='XLA_FLAGS=--xla_gpu_deterministic_ops (as config.train.deterministic)')
  p.add_argument('--without', default=HIDDEN, help='packages hidden from both parts')
  p.add_argument('--profile_md', default='', help='also write the profile tables (markdown) here')
  p.add_argument('--_part', default='', help=argparse.SUPPRESS)
  p.add_argument('--_out', default='', help=argparse.SUPPRESS)
  p.add_argument('--_deadline', type=float, default=0.0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  common.hide_modules(args.without.split(','))
  if args._part == 'steps':  # pylint: disable=protected-access
    steps_child(args)
    return 0
  t0 = time.time()
  flags = os.environ.get('XLA_FLAGS', '')
  if args.deterministic == 'true' and 'xla_gpu_deterministic_ops' not in flags:
    os.environ['XLA_FLAGS'] = (flags + ' --xla_gpu_deterministic_ops=true').strip()
  sizes = TINY if args.tiny else FULL
  head, entries, steps_status = run_steps(args, timeout=STEPS_SHARE * args.budget_s)
  steps = {}
  for e in entries:
    steps.setdefault(e['dtype'], {})[f"F{e.pop('F')}"] = e
  remaining = args.budget_s - (time.time() - t0) - 5
  loso = run_loso(args, sizes, max(10.0, remaining))
  bf16_mfu = [e['mfu'] for e in steps.get('bfloat16', {}).values() if e.get('mfu') is not None]
  speedup = bf16_speedup(steps)
  line = {
      'bench': 'gpu_check', 'tiny': args.tiny, 'device': head.get('device'),
      'jax': head.get('jax'), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'deterministic': args.deterministic == 'true',
      'steps': steps, 'steps_part': steps_status or 'ok', 'loso': loso,
      'bf16_over_f32': speedup,
      'targets': {
          'loso_train_s_le_60': (loso['train_s'] <= 60.0) if 'train_s' in loso else None,
          'bf16_mfu_ge_0.40': (max(bf16_mfu) >= 0.40) if bf16_mfu else None,
          'bf16_over_f32_ge_1.8': (speedup['ratio'] >= 1.8) if speedup else None},
      'wall_s': round(time.time() - t0, 1)}
  if args.profile_md:
    with open(args.profile_md, 'w') as f:
      f.write(profile_markdown(line['device'], steps))
  common.emit(line)
  return 0


if __name__ == '__main__':
  sys.exit(main())
