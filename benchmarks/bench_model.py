"""Speed of the runner's own training step and held-out evaluation, per batch size and config variant.

Usage::

  python -m benchmarks.bench_model [--config=configs/casme2.py] [--batches=1,8,16] [--steps=2]
      [--rounds=3] [--set=model.dtype=bfloat16 ...]
      [--variant=xla:model.attention=xla --variant=lean:model.attention=lean ...]

Builds the runner's programs (:class:`benchmarks.common.RunnerPrograms`: ``run_plan.make_plan`` on
random clips, a random frozen backbone, the config's defaults otherwise: ViT-B/16, 224 px,
T = 16) for every variant (``NAME:key=value,key=value``, applied after ``--set``; without
``--variant`` the config alone), then times them interleaved: each round runs one training epoch
of ``--steps`` steps and one evaluation of a batch for every variant in turn, so that a noisy
machine slows all of them alike. Per batch and variant: ``step_ms`` (median over the rounds of
the epoch's time over its steps), ``train_clips_per_s``, ``eval_clips_per_s``, ``first_epoch_s``
(compilation included), ``gflop_per_step`` and ``step_gflop_per_s`` (XLA's flop count of the
runner's one-step program). First, the rate of one plain product of the ViT-B/16 MLP's size
(float32 and bfloat16 operands), the ceiling of those rates. Prints one JSON line.
"""

import argparse
import os
import statistics
import sys
import time

from benchmarks import common

DEFAULT_SETS = ('model.allow_random_backbone=True',)  # a random frozen backbone


def product_rates(repeats: int = 5):
  """GFLOP/s of one ViT-B/16 MLP product at batch 16 ((16 x 202) x 768 times 768 x 3072) with
  float32 and with bfloat16 operands (float32 accumulation), compiled with the runner's options."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from mpt_jax import compiled_programs  # pylint: disable=g-import-not-at-top
  m, k, n = 16 * 202, 768, 3072
  out = {}
  for name, dtype in (('float32', jnp.float32), ('bfloat16', jnp.bfloat16)):
    a = jax.random.normal(jax.random.PRNGKey(1), (m, k)).astype(dtype)
    w = jax.random.normal(jax.random.PRNGKey(2), (k, n)).astype(dtype)
    prod = compiled_programs.CompiledAhead(
        jax.jit(lambda u, v: jnp.dot(u, v, preferred_element_type=jnp.float32)),
        compiled_programs.compiler_options(name, jax.devices()))
    t = common.time_calls(lambda: jax.block_until_ready(prod(a, w)), repeats=repeats)  # pylint: disable=cell-var-from-loop
    out[name] = round(2 * m * k * n / t['min_s'] / 1e9, 1)
  return out


def parse_variants(specs):
  variants = [('config', [])]
  if specs:
    variants = []
    for spec in specs:
      name, _, items = spec.partition(':')
      if not name:
        raise common.BenchError(f'--variant {spec!r}: expected NAME:key=value,key=value')
      variants.append((name, [x for x in items.split(',') if x]))
  return variants


def measure(args):
  import jax  # pylint: disable=g-import-not-at-top
  variants = parse_variants(args.variant)
  line = {'bench': 'model', 'config': args.config, 'set': args.set, 'device': common.device_label(),
          'cpu_count': os.cpu_count(), 'steps': args.steps, 'rounds': args.rounds,
          'product_gflop_per_s': product_rates(), 'batches': {}}
  for batch in [int(b) for b in args.batches.split(',') if b]:
    programs = {}
    for name, items in variants:
      config = common.load_config(args.config, list(DEFAULT_SETS) + args.set + items + [
          f'train.batch_size={batch}', f'train.eval_batch_size={batch}'])
      p = common.RunnerPrograms(config, folds=1, steps=args.steps, eval_clips_per_fold=batch)
      t = time.perf_counter()
      p.train_epoch()
      first = time.perf_counter() - t
      p.evaluate()
      flops = p.step_flops()
      programs[name] = (p, first, flops, {'train': [], 'eval': []})
    for _ in range(args.rounds):
      for name, (p, _, _, times) in programs.items():
        t = time.perf_counter()
        p.train_epoch()
        times['train'].append((time.perf_counter() - t) / p.steps)
        t = time.perf_counter()
        jax.block_until_ready(p.evaluate())
        times['eval'].append(time.perf_counter() - t)
    row = {}
    for name, (p, first, flops, times) in programs.items():
      step_s, eval_s = statistics.median(times['train']), statistics.median(times['eval'])
      row[name] = {**p.describe(), 'step_ms': round(1000 * step_s, 2),
                   'step_ms_each': [round(1000 * x, 2) for x in times['train']],
                   'train_clips_per_s': round(batch / step_s, 3),
                   'eval_clips_per_s': round(batch / eval_s, 3),
                   'first_epoch_s': round(first, 2),
                   'gflop_per_step': float(f'{flops / 1e9:.4g}') if flops else None,
                   'step_gflop_per_s': float(f'{flops / step_s / 1e9:.4g}') if flops else None}
    line['batches'][str(batch)] = row
    del programs
  return line


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--config', default='configs/casme2.py', help='config file[:arg]')
  p.add_argument('--batches', default='1,8,16', help='batch sizes, comma-separated')
  p.add_argument('--steps', type=int, default=2, help='steps per timed training epoch')
  p.add_argument('--rounds', type=int, default=3, help='timed rounds (interleaved over variants)')
  p.add_argument('--set', action='append', default=[],
                 help='config override key=value for every variant (repeatable)')
  p.add_argument('--variant', action='append', default=[],
                 help='NAME:key=value,key=value: a configuration timed beside the others')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  try:
    common.emit(measure(args))
  except common.BenchError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
