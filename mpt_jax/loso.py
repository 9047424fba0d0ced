"""The LOSO loop: leave-one-subject-out training and evaluation with a resumable record.

``train_and_evaluate(config, workdir)`` trains one model per held-out subject (per seed), evaluates
it on that subject and writes the workdir records described in :mod:`mpt_jax.workdir`, plus
``seed_<s>/fold_<subject>/events.*`` (TensorBoard scalars) and ``results.json``, ``report.md`` and
``figures/`` (see :mod:`mpt_jax.report`).

Everything a run needs is checked before the workdir is touched (config values, model, optimizer,
pretrained file, dataset, batch sizes, the protocol and the initial parameters against an earlier
run in the same workdir), so a refused run changes nothing there. The run then holds the workdir's
lock. A finished fold (``result.json`` present) is never retrained; an unfinished one resumes from
its last checkpoint (a damaged one is moved aside and the fold retrained). Data order and
augmentation depend only on (seed, fold, epoch), so a resumed run ends with exactly the metrics of
an uninterrupted one. Every fold starts from the same freshly initialised trainable parameters (same
seed); the frozen backbone is one set of arrays shared by all folds.
"""

import math
import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from mpt_jax import console
from mpt_jax import errors
from mpt_jax import input_pipeline
from mpt_jax import metrics as metrics_lib
from mpt_jax import partition
from mpt_jax import pretrained
from mpt_jax import report as report_lib
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd
from mpt_jax.models import mpt as mpt_lib

RunError = wd.RunError


class ConfigError(errors.UserError):
  """A config value that cannot work (the message names the key)."""


# Counts that must be at least 1 (key: what it counts).
_POSITIVE = ('num_seeds', 'train.num_epochs', 'train.batch_size', 'train.eval_batch_size',
             'train.eval_every_epochs', 'train.checkpoint_every_epochs', 'train.log_every_steps',
             'model.num_frames', 'model.image_size', 'model.num_prompts',
             'model.adapter_reduction', 'model.tokenizer_dim', 'model.tokenizer_patch')
_NON_NEGATIVE = ('train.num_devices', 'train.warmup_epochs', 'train.weight_decay')
_CHOICES = {'train.optimizer': ('adam', 'adamw', 'sgd'),
            'train.schedule': ('constant', 'cosine'),
            'model.training_strategy': tuple(partition.STRATEGIES)}


def _get(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def validate_config(config: ml_collections.ConfigDict, num_classes: Optional[int] = None):
  """Checks every config value a run uses, without touching data or workdir.

  Builds the model (unknown variant, modality, prompt or adapter type; image size vs patch size).

  Returns:
    the model (built with ``num_classes``, or ``config.data.num_classes``, or 2).

  Raises:
    ConfigError: naming the first bad key.
  """
  for key in _POSITIVE:
    try:
      value = _get(config, key)
    except KeyError:
      continue
    if int(value) < 1:
      raise ConfigError(f'config.{key} is {value}; it must be at least 1')
  for key in _NON_NEGATIVE:
    if float(_get(config, key)) < 0:
      raise ConfigError(f'config.{key} is {_get(config, key)}; it must be 0 or more')
  lr = float(config.train.learning_rate)
  if not math.isfinite(lr) or lr <= 0:
    raise ConfigError(f'config.train.learning_rate is {lr}; it must be a positive number')
  for key, choices in _CHOICES.items():
    if _get(config, key) not in choices:
      raise ConfigError(f'config.{key} is {_get(config, key)!r}; it must be one of '
                        f'{", ".join(choices)}')
  if config.model.training_strategy == 'scratch' and config.model.pretrained_path:
    raise ConfigError(f'training_strategy scratch trains from a random init and would ignore '
                      f'config.model.pretrained_path ({config.model.pretrained_path}); unset it '
                      "(--config.model.pretrained_path='') or choose another strategy")
  if num_classes is None:
    num_classes = int(config.data.get('num_classes', 2) or 2)
  try:
    return mpt_lib.build_model(config.model, num_classes)
  except errors.UserError:
    raise
  except (ValueError, KeyError) as e:
    raise ConfigError(f'config.model is not a valid model: {e}') from e


def fold_dir(workdir: str, seed: int, subject: str) -> str:
  return wd.fold_dir(workdir, seed, subject)


class Experiment:
  """Everything shared by the folds of a run: data on device, model, steps, frozen backbone."""

  def __init__(self, config: ml_collections.ConfigDict, data: input_pipeline.ClipSet):
    self.config = config
    self.data = data
    self.devices = jax.local_devices()
    # Multi-host (jax.distributed): every process loads the data, builds the same global batch
    # (same seeds) and feeds its slice to its local devices; gradients are summed over all devices.
    self.process_count, self.process_index = jax.process_count(), jax.process_index()
    if int(config.train.get('num_devices', 0)) > 0 and self.process_count > 1:
      raise RunError('train.num_devices cannot restrict devices in a multi-host run')
    if int(config.train.get('num_devices', 0)) > 0:
      if int(config.train.num_devices) > len(self.devices):
        raise RunError(f'train.num_devices is {config.train.num_devices} but only '
                       f'{len(self.devices)} local device(s) exist')
      self.devices = self.devices[:int(config.train.num_devices)]
    self.num_devices = len(self.devices)  # local
    self.global_devices = self.num_devices * self.process_count
    self.strategy = config.model.training_strategy
    self.model = validate_config(config, len(data.classes))
    self.subjects = data.subject_list
    if len(self.subjects) < 2:
      raise RunError(f'LOSO needs at least 2 subjects; the data has {self.subjects}')
    bs = int(config.train.batch_size)
    if bs % self.global_devices or int(config.train.eval_batch_size) % self.num_devices:
      raise RunError(f'train.batch_size ({bs}) must be a multiple of the {self.global_devices} '
                     f'devices and train.eval_batch_size ({config.train.eval_batch_size}) of the '
                     f'{self.num_devices} local ones')
    smallest = min(int((data.subjects != s).sum()) for s in self.subjects)
    if bs > smallest:
      raise RunError(f'train.batch_size {bs} is larger than the smallest training fold '
                     f'({smallest} clips); lower --config.train.batch_size')
    largest = max(int((data.subjects != s).sum()) for s in self.subjects)
    self.steps_per_epoch_max = input_pipeline.steps_per_epoch(largest, bs)
    self.data_on_device = input_pipeline.device_arrays(data, self.devices)
    self.geometric = (float(config.data.max_rotation_deg) > 0
                      or float(config.data.min_crop_scale) < 1.0)
    self.seed = None  # the seed of the last init()

  def init(self, seed: int) -> None:
    """Initial parameters for ``seed``: trainable init (same for every fold) and frozen leaves."""
    self.seed = seed  # pylint: disable=attribute-defined-outside-init
    try:
      params = pretrained.init_params(self.model, self.config.model, jax.random.PRNGKey(seed))
    except errors.UserError:
      raise
    except (ValueError, TypeError) as e:  # shapes the config's model values cannot produce
      raise ConfigError(f'config.model cannot be initialised: {e}') from e
    self.labels_tree = partition.param_labels(params, self.strategy)  # pylint: disable=attribute-defined-outside-init
    self.trainable0, self.frozen = partition.split_params(params, self.strategy)  # pylint: disable=attribute-defined-outside-init
    # The schedule horizon uses the largest fold so that one compiled step serves every fold.
    self.tx = partition.make_optimizer(self.config.train, params, self.strategy,  # pylint: disable=attribute-defined-outside-init
                                       self.steps_per_epoch_max)
    self.schedule = partition.make_schedule(self.config.train, self.steps_per_epoch_max)  # pylint: disable=attribute-defined-outside-init
    self.p_train, self.p_eval = train_lib.make_steps(
        self.model, self.tx, self.labels_tree,
        self.devices if self.process_count == 1 else None,
        eval_devices=self.devices, geometric_augmentation=self.geometric)  # pylint: disable=attribute-defined-outside-init
    # The whole initial tree: a changed pretrained file or init is refused on resume, whatever
    # the strategy trains.
    self.init_fingerprint = partition.tree_fingerprint(params)  # pylint: disable=attribute-defined-outside-init

  def fresh_state(self) -> train_lib.TrainState:
    return train_lib.create_state(self.trainable0, self.frozen, self.tx)

  def predict(self, params: Any, indices: np.ndarray) -> np.ndarray:
    """Logits of the clips at ``indices`` (fixed-shape, padded eval batches)."""
    bs = int(self.config.train.eval_batch_size)
    out = []
    for batch in input_pipeline.epoch_batches(indices, bs, self.num_devices, 0, False,
                                              shuffle=False):
      logits = self.p_eval(params, self.data_on_device, batch.idx)
      logits = np.asarray(jax.device_get(logits)).reshape(bs, -1)
      out.append(logits[batch.mask.reshape(-1) > 0])
    return np.concatenate(out, axis=0)


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def train_fold(exp: Experiment, seed: int, fold_index: int, subject: str, workdir: str,
               writer) -> Dict[str, Any]:
  """Trains (or resumes) the fold holding out ``subject``; returns its result record."""
  config = exp.config
  fdir = fold_dir(workdir, seed, subject)
  wd.makedirs(fdir)
  train_idx, test_idx = input_pipeline.split_for_subject(exp.data, subject)
  ckpt_dir = wd.checkpoint_dir(workdir, seed, subject)
  ckpt = train_lib.FoldCheckpointer(ckpt_dir)
  state = exp.fresh_state()
  history_path = os.path.join(fdir, 'history.json')
  history: Dict[str, List[Any]] = {'epoch': [], 'train_loss': [], 'train_accuracy': [],
                                   'test_accuracy': [], 'test_predictions': [], 'learning_rate': []}
  start_epoch = 0
  if ckpt.latest_epoch() is not None:
    try:
      start_epoch, state = ckpt.restore(state, exp.strategy)
    except train_lib.CheckpointDamagedError as e:
      # Only the latest checkpoint is kept, so there is no earlier one to fall back to: keep the
      # damaged one aside (never delete data) and retrain this fold from the start.
      ckpt.close()
      aside = f'{ckpt_dir}.damaged.{int(time.time())}'
      os.replace(ckpt_dir, aside)
      logging.warning('Fold %s (seed %d): %s; moved it to %s and retraining the fold from the '
                      'start', subject, seed, e, aside)
      ckpt = train_lib.FoldCheckpointer(ckpt_dir)
      start_epoch, state = 0, exp.fresh_state()
    if start_epoch and os.path.exists(history_path):
      history = wd.read_json(history_path)
      keep = [i for i, e in enumerate(history['epoch']) if e <= start_epoch]
      history = {k: [v[i] for i in keep] for k, v in history.items()}
    if start_epoch:
      logging.info('Fold %s: resuming after epoch %d', subject, start_epoch)
  num_epochs = int(config.train.num_epochs)
  t0 = time.time()
  logits = None  # held-out logits of the final state, once computed
  for epoch in range(start_epoch + 1, num_epochs + 1):
    seed_e = input_pipeline.fold_seed(seed, fold_index, epoch)
    losses, accs, counts = [], [], []
    for batch in input_pipeline.epoch_batches(
        train_idx, int(config.train.batch_size), exp.global_devices, seed_e,
        bool(config.data.hflip), max_rotation_deg=float(config.data.max_rotation_deg),
        min_crop_scale=float(config.data.min_crop_scale)):
      local = slice(exp.process_index * exp.num_devices, (exp.process_index + 1) * exp.num_devices)
      state, m = exp.p_train(state, exp.data_on_device, batch.idx[local], batch.aug[local],
                             batch.mask[local])
      losses.append(m['loss'])
      accs.append(m['accuracy'])
      counts.append(m['count'])
    m = jax.device_get({'loss': losses, 'accuracy': accs, 'count': counts})
    w = np.asarray(m['count'], np.float64)
    train_loss = float(np.dot(m['loss'], w) / w.sum())
    train_acc = float(np.dot(m['accuracy'], w) / w.sum())
    if not np.all(np.isfinite(np.asarray(m['loss'], np.float64))):
      ckpt.close()
      raise RunError(f'seed {seed} fold {fold_index + 1}/{len(exp.subjects)} ({subject}), epoch '
                     f'{epoch}: the training loss became {train_loss} (not finite); nothing of '
                     'this epoch is saved and the fold has no result. Lower '
                     '--config.train.learning_rate or check the pretrained weights')
    lr = float(exp.schedule(int(jax.device_get(state.step))))
    history['epoch'].append(epoch)
    history['train_loss'].append(train_loss)
    history['train_accuracy'].append(train_acc)
    history['learning_rate'].append(lr)
    every = max(1, int(config.train.eval_every_epochs))
    if epoch % every == 0 or epoch == num_epochs:
      logits = exp.predict(state.params, test_idx)
      preds = logits.argmax(-1)
      test_acc = float((preds == exp.data.labels[test_idx]).mean())
      history['test_accuracy'].append(test_acc)
      history['test_predictions'].append(preds.tolist())
    else:
      history['test_accuracy'].append(None)
      history['test_predictions'].append(None)
    scalars = {'train_loss': train_loss, 'train_accuracy': train_acc, 'learning_rate': lr}
    if history['test_accuracy'][-1] is not None:
      scalars['test_accuracy'] = history['test_accuracy'][-1]
    writer.write_scalars(epoch, scalars)
    if epoch % max(1, int(config.train.checkpoint_every_epochs)) == 0 or epoch == num_epochs:
      wd.write_json(history_path, history)
      ckpt.save(epoch, state, exp.strategy)
    elapsed = time.time() - t0
    eta = elapsed / (epoch - start_epoch) * (num_epochs - epoch)
    logging.info('seed %d fold %d/%d (%s) epoch %d/%d: loss %.4f acc %.3f test acc %s, '
                 'fold ETA %.0fs', seed, fold_index + 1, len(exp.subjects), subject, epoch,
                 num_epochs, train_loss, train_acc, history['test_accuracy'][-1], eta)
  writer.flush()
  # The last epoch always evaluates; a fold whose training had already finished before this
  # process started predicts from its restored final state.
  if logits is None:
    logits = exp.predict(state.params, test_idx)
  ckpt.close()
  result = {
      'subject': subject, 'seed': seed, 'fold': fold_index, 'n': int(len(test_idx)),
      'clips': exp.data.names[test_idx].tolist(),
      'labels': exp.data.labels[test_idx].tolist(),
      'predictions': logits.argmax(-1).tolist(),
      'probabilities': np.round(_softmax(logits), 6).tolist(),
      'epochs': num_epochs, 'history': {k: history[k] for k in
                                        ('epoch', 'train_loss', 'train_accuracy', 'test_accuracy',
                                         'learning_rate')},
      'per_epoch_predictions': history['test_predictions'],
  }
  wd.write_json(wd.result_path(workdir, seed, subject), result)
  return result


def oracle_predictions(results: List[Dict[str, Any]]) -> Tuple[List[int], List[int]]:
  """Per held-out subject, the predictions of its best test epoch (test-set peeking; labelled)."""
  labels, preds = [], []
  for r in results:
    best, best_acc = None, -1.0
    for p in r['per_epoch_predictions']:
      if p is None:
        continue
      acc = float(np.mean(np.asarray(p) == np.asarray(r['labels'])))
      if acc > best_acc:
        best, best_acc = p, acc
    labels.extend(r['labels'])
    preds.extend(best if best is not None else r['predictions'])
  return labels, preds


def summarise(config, classes, results_by_seed: Dict[int, List[Dict[str, Any]]]) -> Dict[str, Any]:
  """Overall metrics (concatenated folds) per seed, mean/std over seeds, per-fold records."""
  per_seed = {}
  for seed, results in results_by_seed.items():
    labels = [l for r in results for l in r['labels']]
    preds = [p for r in results for p in r['predictions']]
    entry = {'last_epoch': metrics_lib.compute(labels, preds, classes)}
    # Composite protocols (MEGC2019) also report each source dataset on its part of the
    # concatenated predictions.
    sources = [c.split('/', 1)[0] for r in results for c in r.get('clips', [])]
    if len(sources) == len(labels) and len(set(sources)) > 1:
      entry['last_epoch_per_dataset'] = {
          ds: metrics_lib.compute([l for l, s in zip(labels, sources) if s == ds],
                                  [p for p, s in zip(preds, sources) if s == ds], classes)
          for ds in sorted(set(sources))}
    if config.train.oracle_best_epoch:
      ol, op = oracle_predictions(results)
      entry['oracle_best_epoch'] = metrics_lib.compute(ol, op, classes)
      entry['oracle_best_epoch']['note'] = ('ORACLE: best epoch chosen per held-out subject on its '
                                            'own test accuracy (test-set peeking)')
    entry['folds'] = [{k: r[k] for k in ('subject', 'n', 'labels', 'predictions')} |
                      {'accuracy': float(np.mean(np.asarray(r['labels']) ==
                                                 np.asarray(r['predictions'])))}
                      for r in results]
    per_seed[str(seed)] = entry
  summary = {'dataset': config.data.name, 'classes': list(classes),
             'selection': 'last epoch', 'seeds': per_seed}
  keys = ('accuracy', 'uf1', 'uar', 'wf1')
  for mode in ('last_epoch', 'oracle_best_epoch'):
    vals = [e[mode] for e in per_seed.values() if mode in e]
    if vals:
      summary[f'{mode}_over_seeds'] = {k: metrics_lib.mean_std([v[k] for v in vals]) for k in keys}
  per_ds = [e['last_epoch_per_dataset'] for e in per_seed.values()
            if 'last_epoch_per_dataset' in e]
  if per_ds:
    summary['last_epoch_per_dataset_over_seeds'] = {
        ds: {k: metrics_lib.mean_std([p[ds][k] for p in per_ds]) for k in keys}
        for ds in per_ds[0]}
  return summary


def _motion_example(exp: Experiment, workdir: str, seed: int, subject: str):
  """Inputs of the report's motion figure: the first fold's final model on 3 of its clips."""
  try:
    ckpt = train_lib.FoldCheckpointer(wd.checkpoint_dir(workdir, seed, subject), read_only=True)
    try:
      _, state = ckpt.restore(exp.fresh_state(), exp.strategy)
    finally:
      ckpt.close()
  except train_lib.CheckpointDamagedError as e:  # figures must never fail a finished run
    logging.warning('No motion figure: %s', e)
    return None
  _, test_idx = input_pipeline.split_for_subject(exp.data, subject)
  idx = test_idx[:3]
  return {'model': exp.model, 'params': state.params, 'clips': exp.data.clips[idx],
          'apex': exp.data.apex[idx], 'names': exp.data.names[idx].tolist()}


def preflight(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The checks of a training run that need no data (fast); returns the resolved workdir."""
  workdir = wd.resolve(workdir)
  wd.check_usable(workdir)
  model = validate_config(config)
  wd.compare_config(config, workdir)
  if config.model.pretrained_path:  # read and check the file now, before the data loads
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1,) + mpt_lib.input_shape(config.model),
                                                 jax.numpy.float32))['params']
    pretrained.load_backbone(config.model.pretrained_path, shapes, model.num_heads)
  return workdir


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: Optional[input_pipeline.ClipSet] = None) -> Dict[str, Any]:
  """Runs (or resumes) the whole LOSO experiment and writes results, report and figures.

  Raises:
    errors.UserError: for anything the user can fix; then nothing in ``workdir`` has changed
      (unless training itself fails, e.g. a non-finite loss, which names the fold and epoch).
  """
  # 1. Checks that read only: workdir, config values, config vs workdir, data, model, init.
  workdir = preflight(config, workdir)
  info = wd.read_run_info(workdir, required=False)
  data = data if data is not None else input_pipeline.load(config)
  exp = Experiment(config, data)
  protocol = wd.protocol_record(data.names, data.subjects, data.labels, data.classes)
  wd.check_protocol(info, protocol, workdir)
  first_seed = int(config.seed)
  exp.init(first_seed)
  wd.check_init_fingerprint(info, first_seed, exp.init_fingerprint, workdir)
  # 2. Writes, under the workdir's lock.
  lock = wd.Lock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    return _run(config, workdir, data, exp, protocol)
  finally:
    if lock is not None:
      lock.release()


def _run(config, workdir, data, exp, protocol) -> Dict[str, Any]:
  """The LOSO loop of :func:`train_and_evaluate`, once every check passed and the lock is held."""
  wd.save_config(config, workdir)
  logging.info('LOSO over %d subjects, %d clips, %d device(s) (%s)', len(exp.subjects), len(data),
               exp.num_devices, jax.devices()[0].platform)
  results_by_seed = {}
  t_run = time.time()
  total_folds = int(config.num_seeds) * len(exp.subjects)
  folds_done_now = 0
  progress = console.Progress(total_folds, int(config.train.num_epochs), int(config.num_seeds),
                              show=jax.process_index() == 0)
  for s in range(int(config.num_seeds)):
    seed = int(config.seed) + s
    if exp.seed != seed:
      exp.init(seed)
    info = wd.read_run_info(workdir, required=False)
    wd.check_init_fingerprint(info, seed, exp.init_fingerprint, workdir)
    info.setdefault('init_fingerprint', {})[str(seed)] = exp.init_fingerprint
    info.pop('backbone_fingerprint', None)  # older runs: frozen leaves only
    info.update({'devices': [str(d) for d in exp.devices], 'jax': jax.__version__,
                 'python': platform.python_version(), 'subjects': exp.subjects,
                 'num_clips': len(data), 'classes': list(data.classes), 'protocol': protocol,
                 'trainable_params': partition.count_trainable(
                     partition.merge_params(exp.trainable0, exp.frozen), exp.strategy)})
    wd.write_json(wd.run_info_path(workdir), info)
    logging.info('Seed %d: parameters by part %s, trainable parts %s', seed,
                 partition.count_by_part(partition.merge_params(exp.trainable0, exp.frozen)),
                 partition.trainable_parts(exp.strategy))
    results = []
    for i, subject in enumerate(exp.subjects):
      path = wd.result_path(workdir, seed, subject)
      if os.path.exists(path):
        results.append(wd.read_json(path))
        continue
      writer = progress.writer(console.metric_writer(fold_dir(workdir, seed, subject),
                                                     just_logging=jax.process_index() > 0),
                               s * len(exp.subjects) + i, subject)
      t_fold = time.time()
      results.append(train_fold(exp, seed, i, subject, workdir, writer))
      writer.close()
      progress.fold_done(s * len(exp.subjects) + i, results[-1], time.time() - t_fold)
      folds_done_now += 1
      done = s * len(exp.subjects) + i + 1  # every earlier fold of this seed is finished
      per_fold = (time.time() - t_run) / folds_done_now
      logging.info('Fold %s done in %.0fs (accuracy %.3f); %d/%d folds, overall ETA %.0fs',
                   subject, time.time() - t_fold,
                   float(np.mean(np.asarray(results[-1]['labels']) ==
                                 np.asarray(results[-1]['predictions']))),
                   done, total_folds, per_fold * (total_folds - done))
    results_by_seed[seed] = results
  progress.close()
  summary = summarise(config, data.classes, results_by_seed)
  wd.write_json(os.path.join(workdir, 'results.json'), summary)
  run_writer = console.metric_writer(workdir, just_logging=jax.process_index() > 0)
  for seed, entry in summary['seeds'].items():
    for i, f in enumerate(entry['folds']):
      run_writer.write_scalars(i, {f'seed_{seed}/fold_accuracy': f['accuracy']})
  last = summary['last_epoch_over_seeds']
  run_writer.write_scalars(0, {f'final/{k}': v['mean'] for k, v in last.items()})
  run_writer.close()
  first_seed = sorted(results_by_seed)[0]
  if exp.seed != first_seed:
    exp.init(first_seed)
  motion = _motion_example(exp, workdir, first_seed, results_by_seed[first_seed][0]['subject'])
  report_lib.write_report(config, workdir, summary, results_by_seed, motion)
  return summary
