"""Fold-parallel training (``config.train.folds_per_step``) gives the results of one fold at a time.

A tiny in-memory protocol of 5 subjects of unequal size (so folds have different numbers of steps
per epoch and the last fold group is padded with dummy folds) is trained with 1 and 4 folds per
step, on 1 and on 2 (simulated, see conftest) devices; per-fold losses, learning rates and held-out
probabilities must agree. Interrupted groups resume fold by fold, and the programs are traced once
per run.
"""

import functools
import json
import os

import jax
import numpy as np
import pytest

from configs import synthetic
import jax.numpy as jnp
import optax

from mpt_jax import augment
from mpt_jax import compiled_programs
from mpt_jax import evaluate
from mpt_jax import fold_groups
from mpt_jax import fold_programs
from mpt_jax import input_pipeline
from mpt_jax import loso
from mpt_jax import partition
from mpt_jax import pretrained
from mpt_jax import run_plan
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd
from mpt_jax.models import mpt

pytestmark = pytest.mark.slow  # LOSO runs end to end

SIZES = {'p01': 8, 'p02': 7, 'p03': 6, 'p04': 5, 'p05': 4}  # 30 clips; 22..26 to train per fold


@pytest.fixture(scope='module')
def setup(tmp_path_factory, smoke_data_dir):
  config = synthetic.get_config('smoke')
  config.data.data_dir = d = smoke_data_dir
  data = input_pipeline.load(config)
  # Relabel the 30 clips into 5 subjects of unequal size (classes stay mixed).
  subjects = np.concatenate([[s] * n for s, n in SIZES.items()])
  order = np.random.default_rng(0).permutation(len(data))
  data = input_pipeline.ClipSet(data.clips[order], data.labels[order], data.apex[order], subjects,
                                np.asarray([f'synthetic_me/{s}/{n.rsplit("/", 1)[-1]}'
                                            for s, n in zip(subjects, data.names[order])]),
                                data.classes)
  return {'data_dir': d, 'data': data, 'runs': {}, 'root': tmp_path_factory.mktemp('runs')}


def make_config(setup, folds, devices, **train):
  config = synthetic.get_config('smoke')
  config.data.data_dir = setup['data_dir']
  config.train.num_epochs = 2
  config.train.folds_per_step = folds
  config.train.num_devices = devices
  config.train.checkpoint_min_interval_s = 0.0  # a checkpoint every epoch, whatever the speed
  # The step computes the motion itself (the path of rotation/crop augmentation); the cache, which
  # auto picks here, has its own tests below (motion_cache='on').
  config.train.motion_cache = 'off'
  for k, v in train.items():
    config.train[k] = v
  return config


def run(setup, name, folds, devices, num_seeds=1, **train):
  """Trains (once per module) and returns {seed: {subject: result.json}}."""
  if name not in setup['runs']:
    config = make_config(setup, folds, devices, **train)
    config.num_seeds = num_seeds
    workdir = str(setup['root'] / name)
    loso.train_and_evaluate(config, workdir, data=setup['data'])
    setup['runs'][name] = read_results(workdir, num_seeds)
  return setup['runs'][name]


def read_results(workdir, num_seeds=1):
  return {seed: {s: json.load(open(os.path.join(workdir, f'seed_{seed}', f'fold_{s}',
                                                'result.json')))
                 for s in SIZES} for seed in range(num_seeds)}


def assert_same(a, b, exact_predictions=True):
  for subject in SIZES:
    ra, rb = a[subject], b[subject]
    np.testing.assert_allclose(ra['history']['train_loss'], rb['history']['train_loss'],
                               rtol=1e-5, err_msg=subject)
    np.testing.assert_allclose(ra['history']['train_accuracy'], rb['history']['train_accuracy'],
                               atol=1e-6, err_msg=subject)
    assert ra['history']['learning_rate'] == rb['history']['learning_rate'], subject
    np.testing.assert_allclose(ra['probabilities'], rb['probabilities'], atol=2e-5,
                               err_msg=subject)
    if exact_predictions:
      assert ra['predictions'] == rb['predictions'], subject


def test_fold_sizes_give_masked_steps(setup):
  data, bs = setup['data'], 4
  steps = {s: input_pipeline.steps_per_epoch(int((data.subjects != s).sum()), bs) for s in SIZES}
  assert len(set(steps.values())) > 1, steps  # some folds have fewer steps: masked steps happen


def test_four_folds_at_once_equal_one_at_a_time_on_one_device(setup):
  train_lib.TRACE_COUNTS.clear()
  parallel = run(setup, 'f4d1', 4, 1, num_seeds=2, schedule='cosine')
  # 2 seeds x 2 fold groups (4 folds + 1 fold and 3 dummies): one trace of each program.
  assert train_lib.TRACE_COUNTS == {'train_epoch': 1, 'evaluate': 1}, train_lib.TRACE_COUNTS
  sequential = run(setup, 'f1d1', 1, 1, schedule='cosine')
  assert_same(sequential[0], parallel[0])
  assert parallel[0]['p01']['probabilities'] != parallel[1]['p01']['probabilities']


def test_four_folds_at_once_equal_one_at_a_time_on_two_devices(setup):
  assert jax.local_device_count() >= 2, 'tests run with 2 simulated CPU devices (conftest)'
  sequential = run(setup, 'f1d1', 1, 1, schedule='cosine')[0]
  data_parallel = run(setup, 'f1d2', 1, 2, schedule='cosine')[0]  # one fold split over 2 devices
  folds_parallel = run(setup, 'f4d2', 4, 2, schedule='cosine')[0]  # 2 folds on each device
  assert_same(sequential, data_parallel)
  assert_same(sequential, folds_parallel)


def test_device_epoch_loop_equals_the_host_loop(setup):
  """The loop over an epoch's steps inside the program (lax.scan and lax.map, the default on
  accelerators) and on the host (one pmapped step per call, the default on CPUs) train the same
  folds: 2 folds on each of 2 devices, and one fold split over 2 devices."""
  for name, folds in (('f4d2', 4), ('f1d2', 1)):
    host = run(setup, name, folds, 2, schedule='cosine')[0]
    train_lib.TRACE_COUNTS.clear()
    device = run(setup, f'{name}_scan', folds, 2, schedule='cosine', epoch_loop='device')[0]
    assert train_lib.TRACE_COUNTS == {'train_epoch': 1, 'evaluate': 1}, train_lib.TRACE_COUNTS
    assert_same(host, device)


def reference_fold(config, data, subject, seed=0):
  """One fold trained the plain way, outside the fold-parallel program: a jitted step on the full
  parameter tree for each real batch of ``epoch_batches`` (no padding steps, no masking, no vmap,
  no scan). Returns (per-epoch train losses, final held-out probabilities, optimizer steps)."""
  model = mpt.build_model(config.model, len(data.classes))
  params = pretrained.init_params(model, config.model, jax.random.PRNGKey(seed))
  strategy, bs = config.model.training_strategy, int(config.train.batch_size)
  largest = max(int((data.subjects != s).sum()) for s in SIZES)
  tx = partition.make_optimizer(config.train, params, strategy,
                                input_pipeline.steps_per_epoch(largest, bs))
  opt = tx.init(params)

  @jax.jit
  def step(params, opt, idx, aug, mask):
    clips = augment.apply(jnp.asarray(data.clips)[idx].astype(jnp.float32), aug, False)
    labels, apex = jnp.asarray(data.labels)[idx], jnp.asarray(data.apex)[idx]

    def loss_fn(p):
      logits = model.apply({'params': p}, clips, apex)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return (ce * mask).sum() / mask.sum()

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt = tx.update(grads, opt, params)
    return optax.apply_updates(params, updates), opt, loss

  fold = data.subject_list.index(subject)
  train_idx, test_idx = input_pipeline.split_for_subject(data, subject)
  losses, steps = [], 0
  for epoch in range(1, int(config.train.num_epochs) + 1):
    total = count = 0.0
    for b in input_pipeline.epoch_batches(train_idx, bs, 1, input_pipeline.fold_seed(seed, fold,
                                                                                       epoch),
                                          bool(config.data.hflip)):
      params, opt, loss = step(params, opt, b.idx[0], b.aug[0], b.mask[0])
      total += float(loss) * b.mask.sum()
      count += b.mask.sum()
      steps += 1
    losses.append(total / count)
  logits = jax.jit(model.apply)({'params': params}, jnp.asarray(data.clips[test_idx], jnp.float32),
                                jnp.asarray(data.apex[test_idx]))
  return losses, np.asarray(jax.nn.softmax(logits)), steps


def test_parallel_folds_equal_a_plain_training_loop(setup):
  """The fold with the fewest steps (p01: 6 of the largest fold's 7) and the largest (p05), from a
  2-folds-per-device run, against :func:`reference_fold`; masked steps must change nothing."""
  results = run(setup, 'f4d2', 4, 2, schedule='cosine')[0]
  config = make_config(setup, 4, 2, schedule='cosine')
  data = setup['data']
  plan = run_plan.make_plan(config, data)
  template = train_lib.state_template(plan.config, fold_programs.init_seed(plan, 0).params)
  for subject in ('p01', 'p05'):
    losses, probs, steps = reference_fold(config, data, subject)
    np.testing.assert_allclose(results[subject]['history']['train_loss'], losses, rtol=1e-5,
                               err_msg=subject)
    np.testing.assert_allclose(results[subject]['probabilities'], probs, atol=2e-5,
                               err_msg=subject)
    ckpt = train_lib.FoldCheckpointer(str(setup['root'] / 'f4d2' / 'seed_0' / f'fold_{subject}' /
                                          'checkpoints'), read_only=True)
    _, state = ckpt.restore(template, 'mpt')
    ckpt.close()
    assert int(state.step) == steps, subject  # no step counted for a masked step
    counts = [int(x) for x in jax.tree.leaves(state.opt_state) if np.ndim(x) == 0]
    assert counts and all(c == steps for c in counts), (subject, counts)  # Adam's counts too


def test_layout_round_trip():
  rng = np.random.default_rng(0)
  for devices, folds in ((1, 1), (2, 1), (1, 4), (2, 4), (2, 6)):
    layout = train_lib.FoldLayout(devices, folds)
    x = rng.random((folds, 3, layout.split, 5))
    on_device = layout.to_device(x)
    assert on_device.shape == (devices, 3, layout.per_device_folds, 5 // 1)
    back = layout.from_device(on_device)
    np.testing.assert_array_equal(back, x.reshape(folds, 3, layout.split * 5))
    if not layout.data_parallel:  # fold f lives on device f // (folds / devices)
      f = folds - 1
      np.testing.assert_array_equal(on_device[f // layout.per_device_folds, :,
                                              f % layout.per_device_folds], x[f, :, 0])
  with pytest.raises(ValueError):
    train_lib.FoldLayout(2, 3)


def test_eval_recomputes_the_parallel_runs_predictions(setup):
  run(setup, 'f4d1', 4, 1, num_seeds=2, schedule='cosine')
  config = make_config(setup, 4, 1, schedule='cosine')
  config.num_seeds = 2
  summary = evaluate.evaluate(config, str(setup['root'] / 'f4d1'), data=setup['data'])
  assert summary['identical_to_training_run'] is True


class Crash(Exception):
  pass


def test_interrupted_group_resumes_fold_by_fold(setup, monkeypatch):
  """A crash in the middle of an epoch's checkpoints leaves the folds of a group at different
  epochs (one already finished); the same command again resumes each from its own checkpoint and
  ends with the uninterrupted results, without retraining the finished fold."""
  uninterrupted = run(setup, 'f4d1', 4, 1, num_seeds=2, schedule='cosine')[0]
  config = make_config(setup, 4, 1, schedule='cosine')
  workdir = str(setup['root'] / 'crash')
  saves = []
  original = train_lib.FoldCheckpointer.save

  def crashing_save(self, epoch, state, strategy):
    saves.append((os.path.basename(os.path.dirname(self.directory)), epoch))
    if len(saves) == 6:  # epoch 2 of the second fold of the first group
      raise Crash()
    return original(self, epoch, state, strategy)

  monkeypatch.setattr(train_lib.FoldCheckpointer, 'save', crashing_save)
  with pytest.raises(Crash):
    loso.train_and_evaluate(config, workdir, data=setup['data'])
  monkeypatch.setattr(train_lib.FoldCheckpointer, 'save', original)
  finished = os.path.join(workdir, 'seed_0', 'fold_p01', 'result.json')
  assert os.path.exists(finished)
  assert not os.path.exists(os.path.join(workdir, 'seed_0', 'fold_p02', 'result.json'))
  latest = {}
  for s in SIZES:
    ckpt = train_lib.FoldCheckpointer(os.path.join(workdir, 'seed_0', f'fold_{s}', 'checkpoints'))
    latest[s] = ckpt.latest_epoch()
    ckpt.close()
  assert latest == {'p01': 2, 'p02': 1, 'p03': 1, 'p04': 1, 'p05': None}, latest
  mtime = os.path.getmtime(finished)
  groups = []
  original_group = fold_groups.train_group

  def recording_group(plan, data, programs, init, fold_indices, *args, **kwargs):
    groups.append([plan.subjects[i] for i in fold_indices])
    return original_group(plan, data, programs, init, fold_indices, *args, **kwargs)

  monkeypatch.setattr(fold_groups, 'train_group', recording_group)
  loso.train_and_evaluate(config, workdir, data=setup['data'])
  assert groups == [['p02', 'p03', 'p04', 'p05']]  # the finished fold is in no group
  assert os.path.getmtime(finished) == mtime
  assert_same(uninterrupted, read_results(workdir)[0])
  history = json.load(open(os.path.join(workdir, 'seed_0', 'fold_p02', 'history.json')))
  assert history['epoch'] == [1, 2]


def test_checkpoint_cadence_follows_the_clock_and_changes_no_result(setup, monkeypatch):
  """With checkpoint_min_interval_s a fold group saves only once its last save is that old, and
  every fold at its last epoch; the results are those of saving every epoch."""
  original = train_lib.FoldCheckpointer.save
  results, saves = {}, {}
  for interval in (0.0, 60.0):
    saves[interval] = []
    record = saves[interval]

    def recording_save(self, epoch, state, strategy, record=record):
      record.append((os.path.basename(os.path.dirname(self.directory)), epoch))
      return original(self, epoch, state, strategy)

    ticks = iter(range(0, 10**6, 35))  # every look at the clock is 35 s later
    monkeypatch.setattr(fold_groups, '_clock', lambda ticks=ticks: next(ticks))
    monkeypatch.setattr(train_lib.FoldCheckpointer, 'save', recording_save)
    workdir = str(setup['root'] / f'cadence_{interval:g}')
    loso.train_and_evaluate(make_config(setup, 4, 1, num_epochs=3,
                                        checkpoint_min_interval_s=interval),
                            workdir, data=setup['data'])
    results[interval] = read_results(workdir)
  folds = [f'fold_{s}' for s in SIZES]
  assert sorted(saves[0.0]) == sorted((f, e) for f in folds for e in (1, 2, 3))
  # Per group: the start at 0 s, epoch 1 at 35 s (not due), epoch 2 at 70 s (due: saved, clock
  # read at 105 s), epoch 3 at 140 s (35 s after, not due, but the last epoch always saves).
  assert sorted(saves[60.0]) == sorted((f, e) for f in folds for e in (2, 3))
  assert results[60.0] == results[0.0]
  history = json.load(open(os.path.join(str(setup['root'] / 'cadence_60'), 'seed_0',
                                        'fold_p01', 'history.json')))
  assert history['epoch'] == [1, 2, 3]


class FakeAccelerator:
  """A stand-in for a GPU device: what :func:`run_plan.resolve_folds_per_step` reads of one."""
  platform = 'gpu'

  def __init__(self, gib):
    self.gib = gib

  def memory_stats(self):
    return {'bytes_limit': int(self.gib * 2**30)}


def test_epoch_loop_choice(setup):
  config = make_config(setup, 1, 1)
  cpu = jax.local_devices()[:1]
  assert run_plan.resolve_epoch_loop(config, cpu) == 'host'
  assert run_plan.resolve_epoch_loop(config, [FakeAccelerator(80)]) == 'device'
  for value in ('host', 'device'):
    config.train.epoch_loop = value
    assert run_plan.resolve_epoch_loop(config, cpu) == value
    assert run_plan.resolve_epoch_loop(config, [FakeAccelerator(80)]) == value
  config.train.epoch_loop = 'scan'
  with pytest.raises(run_plan.ConfigError, match='config.train.epoch_loop'):
    run_plan.validate_config(config)


def test_auto_folds_per_step(setup):
  config = make_config(setup, 0, 1)
  devices = jax.local_devices()
  assert devices[0].platform == 'cpu'
  # CPU: sequential (all folds at once was measured no faster on this 2-core machine).
  assert run_plan.resolve_folds_per_step(config, 5, devices[:1]) == 1
  assert run_plan.resolve_folds_per_step(config, 5, devices[:2]) == 1
  # Accelerators: as many folds as the memory estimate allows.
  gpus = [FakeAccelerator(80), FakeAccelerator(80)]
  assert run_plan.resolve_folds_per_step(config, 5, gpus[:1]) == 5  # tiny model: every fold
  assert run_plan.resolve_folds_per_step(config, 5, gpus) == 6  # rounded to the devices
  big = make_config(setup, 0, 1)
  big.model.vit = 'B_16'
  big.model.image_size = 224
  big.model.num_frames = 16
  big.train.batch_size = 16
  per_fold = run_plan.fold_bytes_estimate(big)
  # 60 % of an 80 GiB card holds 9 folds of ~5.2 GiB; of a 16 GiB card, one (sequential).
  assert (run_plan.resolve_folds_per_step(big, 26, gpus[:1]) == int(0.6 * 80 * 2**30) // per_fold
          == 9)
  assert run_plan.resolve_folds_per_step(big, 26, [FakeAccelerator(16)]) == 1
  config.train.folds_per_step = 1
  assert run_plan.resolve_folds_per_step(config, 5, devices[:2]) == 1
  config.train.folds_per_step = 3
  assert run_plan.resolve_folds_per_step(config, 2, devices[:1]) == 2  # never more than the folds
  config = synthetic.get_config('')
  config.model.vit = 'B_16'
  config.model.image_size = 224
  config.model.num_frames = 16
  config.train.batch_size = 16
  per_fold = run_plan.fold_bytes_estimate(config)
  assert 4 * 2**30 < per_fold < 7 * 2**30  # a measured step peaks at 5.7 GiB


def test_motion_cache_gives_the_results_of_computing_in_the_step(setup):
  """``train.motion_cache='on'`` (flips on, 2 seeds, 2 fold groups) equals computing the dynamic
  image and the magnified motion in the step, and its programs compile once per run."""
  config = make_config(setup, 4, 1)
  assert config.data.hflip and not run_plan.geometric_augmentation(config)
  reference = run(setup, 'f4d1', 4, 1, num_seeds=2, schedule='cosine')
  train_lib.TRACE_COUNTS.clear()
  cached = run(setup, 'f4d1_cache', 4, 1, num_seeds=2, schedule='cosine', motion_cache='on')
  assert train_lib.TRACE_COUNTS == {'train_epoch': 1, 'evaluate': 1, 'motion_cache': 1}, \
      train_lib.TRACE_COUNTS
  run_info = json.load(open(setup['root'] / 'f4d1_cache' / 'run_info.json'))
  assert run_info['motion_cache'] is True
  for seed in (0, 1):
    assert_same(reference[seed], cached[seed])
  # Two devices: two folds on each (the cache is replicated like the clips), and one fold split
  # over both.
  assert_same(run(setup, 'f4d2', 4, 2, schedule='cosine')[0],
              run(setup, 'f4d2_cache', 4, 2, schedule='cosine', motion_cache='on')[0])
  assert_same(run(setup, 'f1d2', 1, 2, schedule='cosine')[0],
              run(setup, 'f1d2_cache', 1, 2, schedule='cosine', motion_cache='on')[0])
  # Same results, so a workdir may change it between runs (like folds_per_step).
  off = make_config(setup, 4, 1, schedule='cosine', motion_cache='off')
  off.num_seeds = 2
  assert wd.compare_config(off, str(setup['root'] / 'f4d1_cache'))


def test_motion_cache_cache_matches_precompute_of_flipped_clips(setup):
  """Entry ``[flip, i]`` of the cache is ``MPT.precompute`` of clip ``i`` flipped as the
  augmentation flips it (checked against a flip made in numpy)."""
  config = make_config(setup, 1, 1)
  data = setup['data']
  model = mpt.build_model(config.model, len(data.classes))
  devices = jax.local_devices()[:1]
  cache = train_lib.build_motion_cache(model, input_pipeline.device_arrays(data, devices),
                                       len(data), 4, 2, devices)
  assert cache['rgb'].shape == (2, 32) + cache['rgb'].shape[2:]  # 30 clips in chunks of 4
  assert cache['motion'].shape == (2, 32, 8, 32, 32, 3)
  assert train_lib.motion_cache_bytes(model, 32, 8, 32, 2) == sum(v.nbytes for v in cache.values())
  precompute = jax.jit(functools.partial(model.apply, {}, method=mpt.MPT.precompute))
  for i in (0, 29):
    clip = np.asarray(data.clips[i:i + 1], np.float32)
    for f, c in ((0, clip), (1, clip[:, :, :, ::-1].copy())):
      ref = precompute(jnp.asarray(c), jnp.asarray(data.apex[i:i + 1]))
      for k in ('rgb', 'motion'):
        np.testing.assert_allclose(np.asarray(cache[k][f, i]), np.asarray(ref[k][0]), atol=1e-5,
                                   err_msg=f'{k} clip {i} flip {f}')


def test_held_out_evaluation_reads_the_motion_cache_while_it_exists(setup):
  """Once the cache is built, the held-out logits come from its unflipped entries (the same logits
  as computing them from the clips); before it, and in evaluation from checkpoints, from the clips.
  """
  config = make_config(setup, 1, 1, motion_cache='on')
  data = setup['data']
  plan = run_plan.make_plan(config, data)
  init = fold_programs.init_seed(plan, 0)
  on_device = fold_programs.DeviceData(plan, data)
  programs = fold_programs.make_programs(plan, init, fold_programs.one_fold_layout(plan))
  rng = np.random.default_rng(0)  # a head that is not zero (it starts at zero)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + rng.normal(0, 0.1, x.shape).astype(x.dtype)
      if 'head' in jax.tree_util.keystr(p) else x, init.params)

  def predict(params):
    return fold_programs.predict(on_device, programs, init, params, idx)

  _, idx = input_pipeline.split_for_subject(data, 'p01')
  from_clips = predict(params)  # no cache yet
  cache = on_device.train_inputs()['motion_cache']
  np.testing.assert_allclose(predict(params), from_clips, atol=1e-5)
  # It is the cache that is read: with its motion zeroed, the logits are those of zero motion.
  zero = {'rgb': cache['rgb'], 'motion': cache['motion'] * 0}
  on_device._cache = zero  # pylint: disable=protected-access
  reference = jax.jit(plan.model.apply)({'params': params}, None, precomputed={
      k: jnp.asarray(np.asarray(v)[0, idx]) for k, v in zero.items()})
  zeroed = predict(params)
  np.testing.assert_allclose(zeroed, np.asarray(reference), atol=1e-5)
  assert np.abs(zeroed - from_clips).max() > 1e-3
  on_device.release_motion_cache()
  np.testing.assert_allclose(predict(params), from_clips, atol=1e-6)


def test_motion_cache_choice(setup, monkeypatch):
  assert synthetic.get_config().train.motion_cache == 'auto'  # the default
  config = make_config(setup, 0, 1, motion_cache='auto')
  model = run_plan.validate_config(config)
  cpus = jax.local_devices()[:1]
  gpus = [FakeAccelerator(80)]
  assert run_plan.resolve_motion_cache(config, model, 30, 1, cpus)  # auto: on CPUs, when it fits
  assert run_plan.resolve_motion_cache(config, model, 30, 5, gpus)  # tiny: fits
  need = train_lib.motion_cache_bytes(model, 30, int(config.model.num_frames),
                                      int(config.model.image_size), run_plan.cache_flips(config))
  fold = run_plan.fold_bytes_estimate(config)
  with monkeypatch.context() as m:  # a host whose RAM budget holds the fold but not the cache
    m.setattr(run_plan, 'memory_budget', lambda devices: need + fold - 1)
    assert not run_plan.resolve_motion_cache(config, model, 30, 1, cpus)
    m.setattr(run_plan, 'memory_budget', lambda devices: need + fold)
    assert run_plan.resolve_motion_cache(config, model, 30, 1, cpus)
  config.train.motion_cache = 'on'
  assert run_plan.resolve_motion_cache(config, model, 30, 1, cpus)
  config.train.motion_cache = 'off'
  assert not run_plan.resolve_motion_cache(config, model, 30, 5, gpus)
  config.train.motion_cache = 'auto'
  config.data.min_crop_scale = 0.8  # geometric augmentation: never from auto
  assert not run_plan.resolve_motion_cache(config, model, 30, 5, gpus)
  config.train.motion_cache = 'on'
  with pytest.raises(run_plan.ConfigError,
                     match=r"^config.train.motion_cache is 'on' but geometric"):
    run_plan.validate_config(config)
  config.train.motion_cache = 'yes'
  with pytest.raises(run_plan.ConfigError,
                     match=r"^config.train.motion_cache is 'yes'; it must be"):
    run_plan.validate_config(config)
  # ViT-B/16 at 224 px, T = 16: 249 clips with flips need 4.7 GiB; 9 folds of ~5.2 GiB leave too
  # little of 60 % of an 80 GiB card, 4 folds leave enough.
  big = make_config(setup, 0, 1, motion_cache='auto')
  big.model.vit, big.model.image_size, big.model.num_frames = 'B_16', 224, 16
  big.train.batch_size = 16
  big_model = run_plan.validate_config(big)
  need = train_lib.motion_cache_bytes(big_model, 249, 16, 224, 2)
  assert 4.7 * 2**30 < need < 4.8 * 2**30
  assert not run_plan.resolve_motion_cache(big, big_model, 249, 9, gpus)
  assert run_plan.resolve_motion_cache(big, big_model, 249, 4, gpus)


def test_predict_puts_only_the_trainable_leaves_on_the_devices(setup, monkeypatch):
  """``fold_programs.predict`` builds no optimizer state and reuses the frozen backbone already on
  the devices; its logits are those of the model applied to the full tree directly."""
  results = run(setup, 'f4d1', 4, 1, num_seeds=2, schedule='cosine')[0]
  config = make_config(setup, 4, 1, schedule='cosine')
  data = setup['data']
  plan = run_plan.make_plan(config, data)
  init = fold_programs.init_seed(plan, 0)
  on_device = fold_programs.DeviceData(plan, data)
  programs = fold_programs.make_programs(plan, init, fold_programs.one_fold_layout(plan))
  ckpt = train_lib.FoldCheckpointer(str(setup['root'] / 'f4d1' / 'seed_0' / 'fold_p02' /
                                        'checkpoints'), read_only=True)
  _, state = ckpt.restore(train_lib.state_template(plan.config, init.params), plan.strategy)
  ckpt.close()
  _, test_idx = input_pipeline.split_for_subject(data, 'p02')
  reference = jax.jit(plan.model.apply)({'params': state.params},
                                        jnp.asarray(data.clips[test_idx], jnp.float32),
                                        jnp.asarray(data.apex[test_idx]))

  def no_optimizer_state(*args, **kwargs):
    raise AssertionError('predict built an optimizer state')

  replicated = []
  original_replicate = train_lib.replicate

  def recording_replicate(tree, devices):  # the leaf paths of every tree put on the devices
    replicated.append(' '.join(jax.tree_util.keystr(p)
                               for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]))
    return original_replicate(tree, devices)

  monkeypatch.setattr(train_lib, 'trainable_state', no_optimizer_state)
  monkeypatch.setattr(train_lib, 'replicate', recording_replicate)
  logits = fold_programs.predict(on_device, programs, init, state.params, test_idx)
  assert any('MlpBlock_3' in k for k in init.frozen)  # a frozen backbone leaf
  assert not any('MlpBlock_3' in keys for keys in replicated), \
      'the frozen backbone was put on the devices again'
  np.testing.assert_allclose(logits, np.asarray(reference), atol=1e-5)
  assert logits.argmax(-1).tolist() == results['p02']['predictions']
  # Frozen leaves that are not the experiment's own (other objects): used as given.
  copied = jax.tree.map(lambda x: np.array(x), state.params)
  np.testing.assert_allclose(fold_programs.predict(on_device, programs, init, copied, test_idx),
                             logits, atol=1e-6)
  assert any('MlpBlock_3' in keys for keys in replicated)


def _dense_program():
  w = jnp.ones((64, 32))
  return jax.jit(lambda x: jnp.tanh(x @ w).sum(-1)), np.ones((8, 64), np.float32)


def test_float32_programs_compile_without_ynnpack_on_cpu():
  """``compiler_options`` reaches XLA: the float32 program has no YNNPACK fusion (the default
  one has); bfloat16 keeps the default."""
  cpu = jax.devices('cpu')
  assert compiled_programs.compiler_options('bfloat16', cpu) == {}
  fn, x = _dense_program()
  default = fn.lower(x).compile().as_text()
  if '__ynn_fusion' not in default:
    pytest.skip('this jaxlib does not hand products to YNNPACK: nothing to leave out')
  ahead = compiled_programs.CompiledAhead(fn, compiled_programs.compiler_options('float32', cpu))
  np.testing.assert_allclose(ahead(x), fn(x), rtol=1e-6)
  (compiled,) = ahead._compiled.values()  # pylint: disable=protected-access
  assert '__ynn_fusion' not in compiled.as_text()


def test_compiled_ahead_drops_an_option_xla_does_not_know(caplog):
  fn, x = _dense_program()
  ahead = compiled_programs.CompiledAhead(fn, {'xla_no_such_option_anywhere': 'true'})
  np.testing.assert_allclose(ahead(x), fn(x), rtol=1e-6)
  np.testing.assert_allclose(ahead(x * 2), fn(x * 2), rtol=1e-6)  # the same compiled program
  assert len(ahead._compiled) == 1  # pylint: disable=protected-access
  ahead(np.ones((4, 64), np.float32))  # another shape: compiled once more
  assert len(ahead._compiled) == 2  # pylint: disable=protected-access
  assert 'xla_no_such_option_anywhere' in caplog.text  # said once, then left out
  assert caplog.text.count('does not take the option') == 1


def test_compiled_ahead_compiles_again_for_a_weak_type_as_jit_does():
  """A weak-typed scalar (a Python float made an array) promotes differently from a float32 one:
  the same shapes and dtypes must not share a program."""
  fn = jax.jit(lambda a, b: a + b)
  ahead = compiled_programs.CompiledAhead(fn)
  a = jnp.ones((3,), jnp.bfloat16)
  for b in (jnp.asarray(1.0), jnp.asarray(1.0, jnp.float32)):
    assert ahead(a, b).dtype == fn(a, b).dtype
  assert len(ahead._compiled) == 2  # pylint: disable=protected-access
