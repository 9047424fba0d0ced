"""mpt_jax against the PyTorch + timm peer (``../shared/peer``), interleaved, on this machine.

Usage::

  python benchmarks/bench_vs_peer.py [--rounds=2] [--tasks=infer_b8,train_b16]
      [--peer_dir=../shared/peer] [--peer_python=~/.venvs/peer/bin/python]
      [--set model.dtype=bfloat16 ...] [--step=split|full] [--motion_cache]
      [--variant bf16:model.dtype=bfloat16 --variant cached:motion_cache ...]

Both sides run the same model: ViT-B/16 at 224 px, T = 16, the default MPT (motion prompts, group
adapters, a random frozen backbone), Adam at 3e-4 for training. Every task runs in a FRESH process
(its peak RSS is its own: ``getrusage(RUSAGE_SELF).ru_maxrss`` of that process, as the peer
reports it) with the peer's protocol: a first call (compilation), one warm-up, then timed repeats;
``clips_per_s`` is batch / median seconds. Tasks alternate ours, peer, ours, peer, ... for every
round, and the script prints one JSON line with each side's median over the rounds and the ratios
(ours / peer clips/s, ours / peer peak RSS).

Our model is initialised and its programs compiled as the runner does it
(:func:`mpt_jax.pretrained.init_params`, :class:`mpt_jax.train.CompiledAhead`), including the
host memory both hand back afterwards (:mod:`mpt_jax.host_memory`).

Our training step (``--step=split``, the default) differentiates only the trainable leaves
(:func:`mpt_jax.partition.split_params`), passes the frozen backbone as a separate, non-donated
argument and donates the trainable parameters and the optimizer state (built by
:func:`mpt_jax.partition.make_optimizer`). ``--step=full`` is the step that differentiates the full
tree with frozen leaves zeroed by ``optax.multi_transform`` (the runner's step before issue 9).
``--motion_cache`` times the training step fed from :meth:`MPT.precompute` outputs (the dynamic
image and the magnified motion computed once per clip, outside the step), which the peer does not
do; it is reported separately and never replaces the plain numbers.

The machine is shared and noisy: compare only numbers of one interleaved run.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TASKS = {'infer_b8': ('infer', 8, 5), 'train_b16': ('train', 16, 3)}
WARMUP = 2  # first call (compiles) + one warm-up, as the peer


def _apply_overrides(config, sets):
  for item in sets:
    key, value = item.split('=', 1)
    node = config
    parts = key.split('.')
    for p in parts[:-1]:
      node = node[p]
    old = node[parts[-1]]
    if isinstance(old, bool):
      value = value.lower() in ('1', 'true', 'yes')
    elif isinstance(old, int):
      value = int(value)
    elif isinstance(old, float):
      value = float(value)
    node[parts[-1]] = value


def run_ours(task: str, batch: int, repeats: int, sets, step_kind: str, motion_cache: bool):
  """One task of ours in this process; returns the result dict."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp
  import optax
  from configs import common
  from mpt_jax import partition
  from mpt_jax import pretrained
  from mpt_jax import train as train_lib
  from mpt_jax.models import mpt as mpt_lib

  config = common.get_config()
  config.model.allow_random_backbone = True
  _apply_overrides(config, sets)
  model = mpt_lib.build_model(config.model, 5)
  shape = mpt_lib.input_shape(config.model)
  # The runner's own initialisation and compilation (train.CompiledAhead), with their memory
  # hand-backs: a user's run has them too.
  params = pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
  x = jax.random.uniform(jax.random.PRNGKey(1), (batch,) + shape)
  y = jax.random.randint(jax.random.PRNGKey(2), (batch,), 0, 5)
  apex = jnp.full((batch,), shape[0] // 2, jnp.int32)
  strategy = config.model.training_strategy
  options = train_lib.compiler_options(config.model.dtype, jax.devices())
  if task == 'infer':
    fwd = train_lib.CompiledAhead(jax.jit(lambda p, c, a: model.apply({'params': p}, c, a)),
                                 options)
    call = lambda: fwd(params, x, apex)  # pylint: disable=unnecessary-lambda-assignment
  elif step_kind == 'full':
    tx = partition.make_optimizer(config.train, params, strategy, 1)
    state = [params, tx.init(params)]

    def full_step(p, o, clips, labels, a):
      def loss_fn(pp):
        logits = model.apply({'params': pp}, clips, a)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      loss, g = jax.value_and_grad(loss_fn)(p)
      u, o = tx.update(g, o, p)
      return optax.apply_updates(p, u), o, loss

    full_step = train_lib.CompiledAhead(jax.jit(full_step), options)

    def call():
      state[0], state[1], loss = full_step(state[0], state[1], x, y, apex)
      return loss
  else:
    trainable, frozen = partition.split_params(params, strategy)
    del params
    trainable_tree = partition.merge_params(trainable, {})
    tx = partition.make_optimizer(config.train, trainable_tree, strategy, 1)
    state = [trainable, tx.init(trainable_tree)]
    if motion_cache:
      pre = jax.jit(lambda f, c, a: model.apply(
          {'params': partition.merge_params({}, f)}, c, a, method=mpt_lib.MPT.precompute))
      inputs = jax.block_until_ready(pre(frozen, x, apex))
    else:
      inputs = None

    def loss_fn(t, f, clips, labels, a, cached):
      p = partition.merge_params(t, f)
      if cached is not None:
        logits = model.apply({'params': p}, None, a, precomputed=cached)
      else:
        logits = model.apply({'params': p}, clips, a)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    def split_step(t, o, f, clips, labels, a, cached):
      loss, g = jax.value_and_grad(loss_fn)(t, f, clips, labels, a, cached)
      g_tree = partition.merge_params(g, {})
      u, o = tx.update(g_tree, o, partition.merge_params(t, {}))
      t = optax.apply_updates(partition.merge_params(t, {}), u)
      return partition.split_params(t, strategy)[0], o, loss

    step = train_lib.CompiledAhead(jax.jit(split_step, donate_argnums=(0, 1)), options)
    clips_arg = None if motion_cache else x

    def call():
      state[0], state[1], loss = step(state[0], state[1], frozen, clips_arg, y, apex, inputs)
      return loss

  t0 = time.perf_counter()
  jax.block_until_ready(call())
  first = time.perf_counter() - t0
  for _ in range(WARMUP - 1):
    jax.block_until_ready(call())
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    times.append(time.perf_counter() - t0)
  med = statistics.median(times)
  return dict(impl='mpt_jax', task=task, batch=batch, sets=list(sets), step=step_kind,
              motion_cache=motion_cache, clips_per_s=batch / med, median_s=med,
              times_s=[round(t, 4) for t in times], first_call_s=first,
              peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _child(cmd, cwd):
  out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, cwd=cwd).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument('--task', choices=['infer', 'train'], help='run one task here (internal)')
  ap.add_argument('--batch', type=int)
  ap.add_argument('--repeats', type=int)
  ap.add_argument('--tasks', default=','.join(TASKS))
  ap.add_argument('--rounds', type=int, default=2)
  ap.add_argument('--set', action='append', default=[],
                  help='config override, e.g. model.dtype=bfloat16')
  ap.add_argument('--step', choices=['split', 'full'], default='split')
  ap.add_argument('--motion_cache', action='store_true')
  ap.add_argument('--variant', action='append', default=[],
                  help='NAME:key=value,key=value[,motion_cache]: another configuration of ours, '
                  'timed in the same round after the default one (e.g. bf16:model.dtype=bfloat16)')
  ap.add_argument('--no_peer', action='store_true', help='time ours only')
  ap.add_argument('--peer_dir', default=os.path.join(ROOT, '..', 'shared', 'peer'))
  ap.add_argument('--peer_python', default=os.path.expanduser('~/.venvs/peer/bin/python'))
  a = ap.parse_args()
  if a.task:
    print(json.dumps(run_ours(a.task, a.batch, a.repeats, a.set, a.step, a.motion_cache)))
    return
  peer_dir = os.path.abspath(a.peer_dir)
  variants = [('ours', a.set, a.motion_cache)]
  for v in a.variant:
    name, _, spec = v.partition(':')
    items = [x for x in spec.split(',') if x]
    variants.append((name, a.set + [x for x in items if x != 'motion_cache'],
                     'motion_cache' in items))
  results = {key: {name: [] for name, _, _ in variants} for key in a.tasks.split(',')}
  for key in results:
    results[key]['peer'] = []
  for rnd in range(a.rounds):
    for key in results:
      task, batch, reps = TASKS[key]
      for name, sets, cache in variants:
        if cache and task != 'train':
          continue
        ours_cmd = [sys.executable, os.path.abspath(__file__), '--task', task, '--batch',
                    str(batch), '--repeats', str(a.repeats or reps), '--step', a.step]
        ours_cmd += [f'--set={s}' for s in sets] + (['--motion_cache'] if cache else [])
        r = _child(ours_cmd, ROOT)
        print(json.dumps(dict(round=rnd, variant=name, **r)), file=sys.stderr, flush=True)
        results[key][name].append(r)
      if not a.no_peer:
        peer_cmd = [a.peer_python, os.path.join(peer_dir, 'bench_torch.py'), '--task', task,
                    '--batch', str(batch), '--repeats', str(a.repeats or reps), '--threads', '2',
                    '--compile']
        r = _child(peer_cmd, peer_dir)
        print(json.dumps(dict(round=rnd, impl='peer', **r)), file=sys.stderr, flush=True)
        results[key]['peer'].append(r)
  out = dict(rounds=a.rounds, sets=a.set, step=a.step, motion_cache=a.motion_cache,
             variants=a.variant, cpu_count=os.cpu_count())
  for key, sides in results.items():
    row = {}
    for side, rs in sides.items():
      if rs:
        row[side] = dict(clips_per_s=round(statistics.median(r['clips_per_s'] for r in rs), 3),
                         clips_per_s_each=[round(r['clips_per_s'], 3) for r in rs],
                         peak_rss_mib=round(max(r['peak_rss_mib'] for r in rs), 1),
                         first_call_s=round(statistics.median(r['first_call_s'] for r in rs), 1))
    for name, _, _ in variants:
      if sides['peer'] and sides[name]:
        row[f'{name}_speed_ratio'] = round(
            row[name]['clips_per_s'] / row['peer']['clips_per_s'], 3)
        row[f'{name}_speed_ratio_each_round'] = [
            round(o['clips_per_s'] / p['clips_per_s'], 3)
            for o, p in zip(sides[name], sides['peer'])]
        row[f'{name}_rss_ratio'] = round(
            row[name]['peak_rss_mib'] / row['peer']['peak_rss_mib'], 3)
    out[key] = row
  print(json.dumps(out))


if __name__ == '__main__':
  main()
