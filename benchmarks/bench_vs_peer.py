"""mpt_jax's runner against a PyTorch + timm peer implementation, interleaved, on this machine.

Usage::

  python -m benchmarks.bench_vs_peer --peer_dir=PATH [--peer_python=PYTHON] [--rounds=2]
      [--config=configs/casme2.py]
      [--tasks=infer_b8,train_b16] [--set=key=value ...] [--variant=NAME:key=value,... ...]
      [--no_peer]

Both sides run the same model: ViT-B/16 at 224 px, T = 16, the default MPT (motion prompts, group
adapters, a random frozen backbone), Adam at 3e-4 for training. Ours is the runner's own program
(:class:`benchmarks.common.RunnerPrograms`: ``run_plan.make_plan`` with the config's compile
options, motion cache, epoch loop and attention): ``train_bN`` one training step of a batch of N (an
epoch of one step), ``infer_bN`` the held-out evaluation of N clips. Every task runs in a FRESH
process (its peak RSS is its own: ``getrusage(RUSAGE_SELF).ru_maxrss``, as the peer reports it) with
the peer's protocol: a first call (compilation), one warm-up, then timed repeats; ``clips_per_s`` is
batch / median seconds. Tasks alternate ours (each variant), peer, ours, peer, ... for every round;
the script prints one JSON line with each side's median over the rounds and the ratios (ours / peer
clips/s, ours / peer peak RSS). The peer (``bench_torch.py`` in ``--peer_dir``) is not part of this
repository. ``--set`` applies to every variant of ours (e.g. ``train.motion_cache=off`` for the work
the peer does: the runner's default on CPUs reads the motion cache).

The machine is shared and noisy: compare only numbers of one interleaved run.
"""

import argparse
import os
import resource
import statistics
import sys

from benchmarks import common

TASKS = {'infer_b8': ('infer', 8, 5), 'train_b16': ('train', 16, 3)}
WARMUP = 1  # after the first call (which compiles), as the peer


def run_ours(config_spec: str, task: str, batch: int, repeats: int, sets):
  """One task of ours in this process; returns the result dict."""
  config = common.load_config(config_spec, ['model.allow_random_backbone=True'] + list(sets) + [
      f'train.batch_size={batch}', f'train.eval_batch_size={batch}'])
  programs = common.RunnerPrograms(config, folds=1, steps=1, eval_clips_per_fold=batch)
  call = programs.train_epoch if task == 'train' else programs.evaluate
  timing = common.time_calls(call, repeats=repeats, warmup=WARMUP)
  return dict(impl='mpt_jax', task=task, batch=batch, sets=list(sets), **programs.describe(),
              clips_per_s=batch / timing['median_s'], median_s=timing['median_s'],
              times_s=timing['times_s'], first_call_s=timing['first_s'],
              peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _peer(args, task, batch, repeats):
  import json  # pylint: disable=g-import-not-at-top
  import subprocess  # pylint: disable=g-import-not-at-top
  cmd = [args.peer_python, os.path.join(args.peer_dir, 'bench_torch.py'), '--task', task,
         '--batch', str(batch), '--repeats', str(repeats), '--threads', '2', '--compile']
  out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=args.peer_dir)
  return json.loads(out.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  ap.add_argument('--config', default='configs/casme2.py', help='config file[:arg] of ours')
  ap.add_argument('--tasks', default=','.join(TASKS))
  ap.add_argument('--rounds', type=int, default=2)
  ap.add_argument('--repeats', type=int, default=0, help='timed repeats (default: per task)')
  ap.add_argument('--set', action='append', default=[], help='config override for every variant')
  ap.add_argument('--variant', action='append', default=[],
                  help='NAME:key=value,key=value: another configuration of ours, timed in the '
                       'same round after the default one (e.g. bf16:model.dtype=bfloat16)')
  ap.add_argument('--no_peer', action='store_true', help='time ours only')
  ap.add_argument('--peer_dir', default='', help='folder of the peer\'s bench_torch.py')
  ap.add_argument('--peer_python', default=sys.executable)
  ap.add_argument('--_task', default='', help=argparse.SUPPRESS)  # TASK:BATCH:REPEATS (a child)
  ap.add_argument('--_out', default='', help=argparse.SUPPRESS)
  return ap.parse_args(argv)


def main(argv=None):
  a = parse_args(argv)
  if a._task:  # pylint: disable=protected-access
    task, batch, repeats = a._task.split(':')  # pylint: disable=protected-access
    common.write_result(a._out, run_ours(a.config, task, int(batch), int(repeats), a.set))  # pylint: disable=protected-access
    return 0
  if not a.no_peer and not os.path.isfile(os.path.join(a.peer_dir, 'bench_torch.py')):
    print(f'error: --peer_dir={a.peer_dir!r} holds no bench_torch.py (or pass --no_peer)',
          file=sys.stderr)
    return 2
  try:
    common.load_config(a.config, a.set)  # fail fast on a bad override
    variants = [('ours', a.set)]
    for v in a.variant:
      name, _, spec = v.partition(':')
      variants.append((name, a.set + [x for x in spec.split(',') if x]))
      common.load_config(a.config, variants[-1][1])
  except common.BenchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  unknown = [t for t in a.tasks.split(',') if t not in TASKS]
  if unknown:
    print(f'error: --tasks: unknown {unknown}; known: {sorted(TASKS)}', file=sys.stderr)
    return 2
  results = {key: {name: [] for name, _ in variants} for key in a.tasks.split(',')}
  for key in results:
    results[key]['peer'] = []
  for _ in range(a.rounds):
    for key in results:
      task, batch, reps = TASKS[key]
      reps = a.repeats or reps
      for name, sets in variants:
        r = common.run_child(common.module_argv(
            'bench_vs_peer', f'--config={a.config}', f'--_task={task}:{batch}:{reps}', *[f'--set={s}' for s in sets]))
        if 'error' in r:
          print(f'error: {name} {key}: {r["error"]}', file=sys.stderr)
          return 1
        results[key][name].append(r)
      if not a.no_peer:
        results[key]['peer'].append(_peer(a, task, batch, reps))
  out = dict(bench='vs_peer', config=a.config, rounds=a.rounds, sets=a.set, variants=a.variant,
             cpu_count=os.cpu_count())
  for key, sides in results.items():
    row = {}
    for side, rs in sides.items():
      if rs:
        row[side] = dict(clips_per_s=round(statistics.median(r['clips_per_s'] for r in rs), 3),
                         clips_per_s_each=[round(r['clips_per_s'], 3) for r in rs],
                         peak_rss_mib=round(max(r['peak_rss_mib'] for r in rs), 1),
                         first_call_s=round(statistics.median(r['first_call_s'] for r in rs), 1))
        if side != 'peer':
          row[side].update({k: rs[0][k] for k in ('dtype', 'attention', 'motion_cache',
                                                   'epoch_loop')})
    for name, _ in variants:
      if sides['peer'] and sides[name]:
        row[f'{name}_speed_ratio'] = round(row[name]['clips_per_s'] / row['peer']['clips_per_s'], 3)
        row[f'{name}_rss_ratio'] = round(row[name]['peak_rss_mib'] / row['peer']['peak_rss_mib'], 3)
    out[key] = row
  common.emit(out)
  return 0


if __name__ == '__main__':
  sys.exit(main())
