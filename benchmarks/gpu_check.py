"""The one-shot GPU check of issue 9: training-step speed, MFU and a CASME II-sized LOSO; one JSON line.

Usage: bash benchmarks/gpu_check.sh [--tiny] [--budget_s=470] [--deterministic=true|false]
       (or python benchmarks/gpu_check.py with the same flags where ml_collections is installed)

Two parts, each in its own subprocess with a hard time limit, so the whole stays within
``--budget_s`` (default 470 s, under 8 minutes with start-up) and a part that runs out of time or
memory loses only itself:

1. ``steps``: one MPT training step (ViT-B/16, 224 px, T = 16, batch 16 per fold, 5 classes,
   random frozen backbone, Adam on the trainable leaves) jitted and timed in float32 and bfloat16
   (``config.model.dtype``; ``n/a`` where the checkout has no such key) for F = 1, 8 and 26 folds at
   once: F copies of the trainable parameters and Adam states, ``jax.vmap``-ed over the fold axis
   with the frozen backbone shared (not copied), each fold its own batch of 16 gathered from the
   in-memory clips on the device, as the runner does. Per entry: ``compile_s`` (lower + compile),
   ``step_ms``, ``clips_per_s`` (F x 16 clips per step), ``gflop_per_step`` (XLA's cost analysis
   of the compiled step, 2 flops per multiply-add), ``tflops`` achieved and ``mfu`` against the
   card's dense peak (bfloat16: H100 SXM / H200 989, H100 PCIe 756, A100 312 TFLOP/s; float32
   compares with the TF32 peak, half of that, since XLA runs float32 matmuls as TF32 on these
   cards by default). Measured in the order f32 F=1, bf16 F=1, bf16 F=8, bf16 F=26, f32 F=8,
   f32 F=26; entries the part's time limit leaves no room for say ``skipped``.
2. ``loso``: a CASME II-sized LOSO end to end through the real runner (``benchmarks/bench_loso.py``:
   26 subjects, 249 random clips made in memory, T = 16, 224 px, 20 epochs, random frozen
   ViT-B/16, the config's defaults otherwise), fold-parallel with ``folds_per_step=26`` and in
   bfloat16 where the checkout has those keys (the JSON says which), with ``train_s`` (training,
   evaluation and records, without the report) and ``loso_s``.

``targets`` compares with issue 9's goals on one H100: the LOSO in at most 60 s of training, at
least 40 % MFU in bfloat16 (the best bf16 entry).

``--tiny`` runs the same code on CPU in well under a minute (tiny ViT, 32 px, T = 8, batch 4,
F = 1 and 2, a 3-subject LOSO of 1 epoch) to test the script. ``--deterministic`` (default true,
as ``config.train.deterministic``) sets ``XLA_FLAGS=--xla_gpu_deterministic_ops=true`` in both
parts. No TensorFlow, TFDS or clu is imported (``--without`` hides them to prove it on a machine
that has them).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'benchmarks'))

import bench_loso  # pylint: disable=g-import-not-at-top,wrong-import-position

# Dense peak TFLOP/s (bfloat16, TF32) by device kind, first match wins (NVIDIA data sheets).
PEAKS = (('H100 PCIe', 756.0, 378.0), ('H100', 989.0, 494.5), ('H200', 989.0, 494.5),
         ('GH200', 989.0, 494.5), ('A100', 312.0, 156.0))
FULL = {'vit': 'B_16', 'image_size': 224, 'frames': 16, 'batch': 16, 'folds': (1, 8, 26),
        'subjects': 26, 'clips': 249, 'epochs': 20, 'pool': 64}
TINY = {'vit': 'tiny', 'image_size': 32, 'frames': 8, 'batch': 4, 'folds': (1, 2),
        'subjects': 3, 'clips': 9, 'epochs': 1, 'pool': 8}
ORDER = (('float32', 0), ('bfloat16', 0), ('bfloat16', 1), ('bfloat16', 2), ('float32', 1),
         ('float32', 2))  # (dtype, index into the sizes' folds)
STEPS_SHARE = 0.45  # of the budget, at most, for the steps part; the LOSO gets the rest
HIDDEN = 'tensorflow,tensorflow_datasets,clu'


def peak_tflops(device_kind: str, dtype: str):
  for name, bf16, tf32 in PEAKS:
    if name.lower() in device_kind.lower():
      return bf16 if dtype == 'bfloat16' else tf32
  return None


def base_config(sizes):
  from configs import common  # pylint: disable=g-import-not-at-top
  config = common.get_config()
  config.model.vit = sizes['vit']
  config.model.image_size = sizes['image_size']
  config.model.num_frames = sizes['frames']
  config.model.allow_random_backbone = True
  config.model.pretrained_path = ''
  if sizes is TINY:
    config.model.tokenizer_dim = 8
    config.model.tokenizer_patch = 8
    config.model.magnification.lambda_c = 4.0
  return config


# ------------------------------------------------------------------------------ the steps part
def measure_step(sizes, dtype, folds, built=None, min_time=2.0, max_steps=30):
  """Compiles and times the F-fold training step; returns its entry.

  ``built`` (a dict) keeps each dtype's model and initial parameters for the next call.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from mpt_jax import partition  # pylint: disable=g-import-not-at-top
  from mpt_jax import pretrained  # pylint: disable=g-import-not-at-top
  from mpt_jax.models import mpt as mpt_lib  # pylint: disable=g-import-not-at-top
  config = base_config(sizes)
  if 'dtype' in config.model:
    config.model.dtype = dtype
  elif dtype != 'float32':
    return {'status': 'n/a: config.model.dtype does not exist in this checkout'}
  built = {} if built is None else built
  if dtype not in built:
    model = mpt_lib.build_model(config.model, 5)
    built[dtype] = model, pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
  model, params = built[dtype]
  trainable, frozen = partition.split_params(params, config.model.training_strategy)
  tx = optax.adam(float(config.train.learning_rate))
  batch, t_count, size = sizes['batch'], sizes['frames'], sizes['image_size']
  rng = np.random.default_rng(0)
  pool = jax.device_put(rng.random((sizes['pool'], t_count, size, size, 3), np.float32)
                        .astype(np.float16))
  labels_pool = jax.device_put(np.arange(sizes['pool'], dtype=np.int32) % 5)
  apex_pool = jax.device_put(np.full(sizes['pool'], (t_count - 1) // 2, np.int32))

  def one_fold(tr, opt_state, fr, idx):
    clips = pool[idx].astype(jnp.float32)
    labels, apex = labels_pool[idx], apex_pool[idx]

    def loss_fn(t):
      logits = model.apply({'params': partition.merge_params(t, fr)}, clips, apex)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    loss, grads = jax.value_and_grad(loss_fn)(tr)
    updates, opt_state = tx.update(grads, opt_state, tr)
    return optax.apply_updates(tr, updates), opt_state, loss

  stack = lambda tree: jax.tree.map(lambda x: jnp.broadcast_to(x, (folds,) + x.shape), tree)
  tr = stack(trainable)
  opt = stack(tx.init(trainable))
  idx = jax.device_put(rng.integers(0, sizes['pool'], (folds, batch)).astype(np.int32))
  step = jax.jit(jax.vmap(one_fold, in_axes=(0, 0, None, 0)), donate_argnums=(0, 1))
  t = time.perf_counter()
  lowered = step.lower(tr, opt, frozen, idx)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  # The flop count of the program as lowered, before any backend's optimisation: XLA:GPU's count
  # of the compiled program leaves out the products it hands to cuBLAS (on an H200 it reported
  # 6.4 GFLOP for a step of about 1140), which made the MFU meaningless.
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost['flops']) if cost and 'flops' in cost else None
  tr, opt, loss = compiled(tr, opt, frozen, idx)  # warm-up
  jax.block_until_ready(loss)
  n, t = 0, time.perf_counter()
  while n < 3 or (time.perf_counter() - t < min_time and n < max_steps):
    tr, opt, loss = compiled(tr, opt, frozen, idx)
    n += 1
  jax.block_until_ready((tr, opt, loss))
  step_s = (time.perf_counter() - t) / n
  device = jax.devices()[0]
  entry = {'status': 'ok', 'folds': folds, 'batch_per_fold': batch, 'compile_s': round(compile_s, 2),
           'steps_timed': n, 'step_ms': round(1000 * step_s, 3),
           'clips_per_s': round(folds * batch / step_s, 2),
           'loss_finite': bool(np.all(np.isfinite(np.asarray(loss))))}
  if flops:
    tflops = flops / step_s / 1e12
    peak = peak_tflops(device.device_kind, dtype) if device.platform == 'gpu' else None
    entry.update({'gflop_per_step': float(f'{flops / 1e9:.6g}'), 'tflops': round(tflops, 4),
                  'peak_tflops': peak, 'mfu': round(tflops / peak, 4) if peak else None})
  mem = bench_loso.device_peak_mib()
  if mem is not None:
    entry['device_peak_mib'] = mem
  return entry


def steps_child(args):
  """Writes one JSON line per (dtype, F) to ``args._out`` as each finishes."""
  import jax  # pylint: disable=g-import-not-at-top
  sizes = TINY if args.tiny else FULL
  deadline = args._deadline  # pylint: disable=protected-access
  device = jax.devices()[0]
  with open(args._out, 'a') as out:  # pylint: disable=protected-access
    out.write(json.dumps({'device': f'{device.platform}:{device.device_kind}',
                          'jax': jax.__version__}) + '\n')
    out.flush()
    built = {}  # dtype -> (model, initial parameters)
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
        entry = measure_step(sizes, dtype, folds, built, min_time=0.2 if args.tiny else 2.0)
      except Exception as e:  # pylint: disable=broad-except
        text = ' '.join(str(e).split())
        entry = {'status': f'error: {type(e).__name__}: {text[:300]}'}
      if entry['status'] == 'ok':
        last = time.time() - t
      out.write(json.dumps({**key, **entry}) + '\n')
      out.flush()


def run_steps(args, timeout):
  """The steps part in a subprocess; returns (device line, entries)."""
  with tempfile.TemporaryDirectory(prefix='gpu_check_') as tmp:
    out = os.path.join(tmp, 'steps.jsonl')
    argv = [sys.executable, os.path.abspath(__file__), '--_part=steps', f'--_out={out}',
            f'--_deadline={time.time() + timeout - 5}', f'--without={args.without}']
    if args.tiny:
      argv.append('--tiny')
    status = None
    try:
      proc = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            check=False)
      if proc.returncode:
        tail = [l for l in proc.stderr.strip().splitlines() if l.strip()][-1:]
        status = f'exited with code {proc.returncode}: {tail[0] if tail else ""}'
    except subprocess.TimeoutExpired:
      status = f'stopped at its {timeout:.0f} s limit'
    lines = []
    if os.path.exists(out):
      with open(out) as f:
        lines = [json.loads(l) for l in f if l.strip()]
  head = lines[0] if lines else {}
  return head, lines[1:], status


# -------------------------------------------------------------------------------- the LOSO part
def run_loso(args, sizes, timeout, fold_parallel, bf16):
  """The CASME II-sized LOSO through bench_loso's child (a subprocess with a time limit)."""
  sets = [f'model.vit={sizes["vit"]}', 'model.allow_random_backbone=True',
          f'train.num_epochs={sizes["epochs"]}']
  if sizes is TINY:
    sets += ['model.tokenizer_dim=8', 'model.tokenizer_patch=8',
             'model.magnification.lambda_c=4.0', 'train.batch_size=2', 'train.eval_batch_size=2']
  if bf16:
    sets.append('model.dtype=bfloat16')
  folds = sizes['subjects'] if fold_parallel else 1
  with tempfile.TemporaryDirectory(prefix='gpu_check_loso_') as root:
    largs = bench_loso.parse_args([
        '--config=configs/casme2.py', f'--subjects={sizes["subjects"]}',
        f'--clips={sizes["clips"]}', f'--frames={sizes["frames"]}',
        f'--image_size={sizes["image_size"]}', f'--without={args.without}',
        f'--workdir_root={root}'] + [f'--set={s}' for s in sets])
    result = bench_loso.run_child(largs, folds, timeout=timeout)
    if 'error' in result:
      done = 0
      for dirpath, _, files in os.walk(root):
        done += 'result.json' in files and os.path.basename(dirpath).startswith('fold_')
      result['folds_finished'] = done
  result.update({'subjects': sizes['subjects'], 'clips': sizes['clips'],
                 'frames': sizes['frames'], 'image_size': sizes['image_size'],
                 'epochs': sizes['epochs'], 'vit': sizes['vit'],
                 'dtype': 'bfloat16' if bf16 else 'float32', 'fold_parallel': fold_parallel})
  return result


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n', 1)[0])
  p.add_argument('--tiny', action='store_true', help='tiny sizes, for CPU tests')
  p.add_argument('--budget_s', type=float, default=470.0, help='whole-run time limit (seconds)')
  p.add_argument('--deterministic', default='true', choices=('true', 'false'),
                 help='XLA_FLAGS=--xla_gpu_deterministic_ops (as config.train.deterministic)')
  p.add_argument('--without', default=HIDDEN, help='packages hidden from both parts')
  p.add_argument('--_part', default='', help=argparse.SUPPRESS)
  p.add_argument('--_out', default='', help=argparse.SUPPRESS)
  p.add_argument('--_deadline', type=float, default=0.0, help=argparse.SUPPRESS)
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  bench_loso.hide_modules(args.without.split(','))
  if args._part == 'steps':  # pylint: disable=protected-access
    steps_child(args)
    return 0
  t0 = time.time()
  flags = os.environ.get('XLA_FLAGS', '')
  if args.deterministic == 'true' and 'xla_gpu_deterministic_ops' not in flags:
    os.environ['XLA_FLAGS'] = (flags + ' --xla_gpu_deterministic_ops=true').strip()
  sizes = TINY if args.tiny else FULL
  config = base_config(sizes)  # ml_collections only: no JAX backend in this process
  has_dtype = 'dtype' in config.model
  has_folds = bench_loso.has_folds_per_step(config)
  head, entries, steps_status = run_steps(args, timeout=STEPS_SHARE * args.budget_s)
  steps = {}
  for e in entries:
    steps.setdefault(e.pop('dtype'), {})[f"F{e.pop('F')}"] = e
  remaining = args.budget_s - (time.time() - t0) - 5
  loso = run_loso(args, sizes, max(10.0, remaining), has_folds, has_dtype)
  bf16_mfu = [e['mfu'] for e in steps.get('bfloat16', {}).values() if e.get('mfu') is not None]
  line = {
      'bench': 'gpu_check', 'tiny': args.tiny, 'device': head.get('device'),
      'jax': head.get('jax'), 'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'deterministic': args.deterministic == 'true',
      'model_dtype_key': has_dtype, 'folds_per_step_key': has_folds,
      'steps': steps, 'steps_part': steps_status or 'ok', 'loso': loso,
      'targets': {
          'loso_train_s_le_60': (loso['train_s'] <= 60.0) if 'train_s' in loso else None,
          'bf16_mfu_ge_0.40': (max(bf16_mfu) >= 0.40) if bf16_mfu else None},
      'wall_s': round(time.time() - t0, 1)}
  print(json.dumps(line), flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
