"""Speed of the jitted MPT forward and training step, and the motion branch's share.

Usage: python benchmarks/bench_model.py [--vit=B_16] [--batches=1,8,16] [--repeats=3]

Measures clips/s of (a) the plain ViT forward (no prompts, no adapters), (b) the full MPT forward,
(c) the dynamic image + magnification + tokenizer alone, and (d) one MPT training step (Adam, frozen
backbone through optax.multi_transform), each after a warm-up call that compiles, with the MPT
forward's achieved GFLOP/s (XLA's flop count); and, first, the GFLOP/s of one plain product of the
ViT-B/16 MLP's size in float32 and with bfloat16 operands: the ceiling those rates are measured
against. Prints one JSON line per product and per batch size. Numbers depend on the machine; the
README records the ones measured here.
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import optax

from configs import common
from mpt_jax import partition
from mpt_jax import train as train_lib
from mpt_jax.models import dynamic_image
from mpt_jax.models import mpt as mpt_lib
from mpt_jax.models import tokenizer as tok_lib


def _time(fn, *args, repeats):
  jax.block_until_ready(fn(*args))  # compile + warm-up
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    best = min(best, time.perf_counter() - t)
  return best


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--vit', default='B_16')
  parser.add_argument('--batches', default='1,8,16')
  parser.add_argument('--repeats', type=int, default=3)
  args = parser.parse_args()
  config = common.get_config()
  config.model.vit = args.vit
  model = mpt_lib.build_model(config.model, 5)
  plain_cfg = common.get_config()
  plain_cfg.model.vit = args.vit
  plain_cfg.model.prompt_type = 'none'
  plain_cfg.model.adapter_type = 'none'
  plain = mpt_lib.build_model(plain_cfg.model, 5)
  shape = mpt_lib.input_shape(config.model)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1,) + shape))['params']
  plain_params = jax.jit(plain.init)(jax.random.PRNGKey(0), jnp.zeros((1,) + shape))['params']
  tx = partition.make_optimizer(config.train, params, 'mpt', 1)
  opt_state = tx.init(params)
  magnifier = mpt_lib.build_magnifier(config.model)

  # Compiled with the runner's options (train.compiler_options: float32 on CPU without YNNPACK).
  options = train_lib.compiler_options(config.model.dtype, jax.devices())
  fwd = train_lib.CompiledAhead(jax.jit(lambda p, x: model.apply({'params': p}, x)), options)
  plain_fwd = train_lib.CompiledAhead(jax.jit(lambda p, x: plain.apply({'params': p}, x)), options)

  tok = tok_lib.GaussianTokenizer(int(config.model.num_prompts), model.hidden_size,
                                  int(config.model.tokenizer_dim), int(config.model.tokenizer_patch))
  motion_fn = train_lib.CompiledAhead(jax.jit(lambda tp, x: (
      dynamic_image.dynamic_image(x), tok.apply({'params': tp}, magnifier(x))[0])), options)

  def train_step(p, o, x, y):
    def loss_fn(pp):
      return optax.softmax_cross_entropy_with_integer_labels(model.apply({'params': pp}, x), y).mean()
    loss, g = jax.value_and_grad(loss_fn)(p)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o, loss

  def flops(fn, *a):
    cost = jax.jit(fn).lower(*a).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost['flops'])

  x1 = jnp.zeros((1,) + shape)
  step_flops = flops(train_step, params, opt_state, x1, jnp.zeros((1,), jnp.int32))
  fwd_flops = flops(lambda p, x: model.apply({'params': p}, x), params, x1)
  train_step = train_lib.CompiledAhead(jax.jit(train_step), options)
  print(json.dumps({'device': str(jax.devices()[0]), 'backend': jax.default_backend(),
                    'vit': args.vit, 'cpu_count': os.cpu_count(),
                    'compiled_gflops_forward_per_clip': round(fwd_flops / 1e9, 2),
                    'compiled_gflops_train_step_per_clip': round(step_flops / 1e9, 2),
                    'train_step_over_forward_flops': round(step_flops / fwd_flops, 3)}))
  # This machine's product rate, the ceiling of the ViT's work: one ViT-B/16 MLP product at batch
  # 16 ((16 x 202) x 768 times 768 x 3072), float32 and bfloat16 operands accumulated in float32.
  m, k, n = 16 * 202, 768, 3072
  for name, dtype in (('float32', jnp.float32), ('bfloat16', jnp.bfloat16)):
    a = jax.random.normal(jax.random.PRNGKey(1), (m, k)).astype(dtype)
    w = jax.random.normal(jax.random.PRNGKey(2), (k, n)).astype(dtype)
    prod = train_lib.CompiledAhead(jax.jit(lambda u, v: jnp.dot(
        u, v, preferred_element_type=jnp.float32)), train_lib.compiler_options(name, jax.devices()))
    t = _time(prod, a, w, repeats=max(args.repeats, 5))
    print(json.dumps({'product': f'({m} x {k}) x ({k} x {n})', 'operands': name,
                      'gflop_per_s': round(2 * m * k * n / t / 1e9, 1)}), flush=True)
  for b in [int(s) for s in args.batches.split(',')]:
    x = jax.random.uniform(jax.random.PRNGKey(b), (b,) + shape)
    y = jnp.zeros((b,), jnp.int32)
    t_plain = _time(plain_fwd, plain_params, x, repeats=args.repeats)
    t_fwd = _time(fwd, params, x, repeats=args.repeats)
    t_motion = _time(motion_fn, params['tokenizer'], x, repeats=args.repeats)
    t_step = _time(train_step, params, opt_state, x, y, repeats=args.repeats)
    print(json.dumps({
        'batch': b,
        'plain_vit_forward_clips_per_s': round(b / t_plain, 3),
        'mpt_forward_clips_per_s': round(b / t_fwd, 3),
        'mpt_forward_gflop_per_s': round(fwd_flops * b / t_fwd / 1e9, 1),
        'mpt_train_step_clips_per_s': round(b / t_step, 3),
        'motion_branch_s': round(t_motion, 4),
        'motion_branch_share_of_forward': round(t_motion / t_fwd, 3),
        'forward_overhead_vs_plain_vit': round(t_fwd / t_plain - 1.0, 3),
        'train_step_over_forward': round(t_step / t_fwd, 3),
    }), flush=True)


if __name__ == '__main__':
  main()
