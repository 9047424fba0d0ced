"""One fold's training epoch with the loop over its steps inside the program or on the host.

Usage:
  python -m benchmarks.bench_epoch_loop [--config=configs/synthetic.py] [--subjects=8]
      [--clips=160] [--rounds=3] [--set key=value ...]

Builds the runner's programs (:mod:`mpt_jax.run_plan`, :mod:`mpt_jax.fold_programs`,
:func:`mpt_jax.train.make_steps`) for both values of ``config.train.epoch_loop`` on the same
in-memory noise clips (``bench_loso``'s ``random`` data) and times one epoch of the first fold,
interleaved (device, host, device, host, ...): ``device`` runs the epoch's steps with ``lax.scan``
inside one program, ``host`` calls a one-step program per step from Python. The first call of each
(compilation) is reported apart. Prints one JSON line: seconds per epoch (each round and the median)
and the ratio.
"""

import argparse
import json
import statistics
import sys
import time

from benchmarks import bench_loso


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--config', default='configs/synthetic.py')
  p.add_argument('--subjects', type=int, default=8)
  p.add_argument('--clips', type=int, default=160)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--set', action='append', default=[], help='config override key=value')
  a = p.parse_args(argv)
  args = bench_loso.parse_args([f'--config={a.config}', '--data=random',
                                f'--subjects={a.subjects}', f'--clips={a.clips}'] +
                               [f'--set={s}' for s in a.set])
  config = bench_loso.build_config(args)
  data = bench_loso.build_data(args, config)
  import jax  # pylint: disable=g-import-not-at-top
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from mpt_jax import fold_groups  # pylint: disable=g-import-not-at-top
  from mpt_jax import fold_programs  # pylint: disable=g-import-not-at-top
  from mpt_jax import run_plan  # pylint: disable=g-import-not-at-top
  from mpt_jax import train as train_lib  # pylint: disable=g-import-not-at-top

  runs = {}
  for loop in ('device', 'host'):
    config.train.epoch_loop = loop
    config.train.folds_per_step = 1
    plan = run_plan.make_plan(config, data)
    init = fold_programs.init_seed(plan, 0)
    programs = fold_programs.make_programs(plan, init)
    layout, steps = plan.layout, plan.steps_per_epoch
    train_idx, _ = input_pipeline.split_for_subject(data, plan.subjects[0])
    idx, aug, mask = fold_groups.epoch_arrays(config, layout, steps,
                                              [(train_idx, input_pipeline.fold_seed(0, 0, 1))])
    state = layout.state_to_device(train_lib.stack_states([programs.fresh_fold_state(init)]),
                                   plan.devices)
    inputs = (init.frozen_on_device, fold_programs.DeviceData(plan, data).train_inputs(),
              layout.to_device(idx), layout.to_device(aug), layout.to_device(mask))
    runs[loop] = {'train': programs.train, 'state': state, 'inputs': inputs, 'times': [],
                  'steps': steps}

  def epoch(loop):
    r = runs[loop]
    t = time.perf_counter()
    r['state'], m = r['train'](r['state'], *r['inputs'])
    jax.block_until_ready(m)
    return time.perf_counter() - t

  first = {loop: epoch(loop) for loop in runs}
  for _ in range(a.rounds):
    for loop in runs:
      runs[loop]['times'].append(epoch(loop))
  med = {loop: statistics.median(r['times']) for loop, r in runs.items()}
  print(json.dumps({
      'bench': 'epoch_loop', 'config': a.config, 'set': a.set,
      'steps_per_epoch': runs['host']['steps'], 'batch_size': int(config.train.batch_size),
      'device': f'{jax.devices()[0].platform}:{jax.devices()[0].device_kind}',
      'first_call_s': {k: round(v, 3) for k, v in first.items()},
      'epoch_s': {k: [round(t, 3) for t in r['times']] for k, r in runs.items()},
      'epoch_s_median': {k: round(v, 3) for k, v in med.items()},
      'device_over_host': round(med['device'] / med['host'], 2)}))
  return 0


if __name__ == '__main__':
  sys.exit(main())
