"""The LOSO loop: leave-one-subject-out training and evaluation with a resumable record.

``train_and_evaluate(config, workdir)`` trains one model per held-out subject (per seed), evaluates
it on that subject and writes, in ``workdir``::

  config.json             the run's config (a different config is refused, naming the keys)
  run_info.json           backbone fingerprint, devices, versions
  seed_<s>/fold_<subject>/checkpoints/   Orbax checkpoints (trainable parameters + optimizer)
  seed_<s>/fold_<subject>/result.json    the fold's predictions (written once the fold is done)
  seed_<s>/fold_<subject>/events.*       TensorBoard scalars of the fold
  results.json, report.md, figures/      (see :mod:`mpt_jax.report`)

A finished fold (``result.json`` present) is never retrained; an unfinished one resumes from its
last checkpoint. Data order and augmentation depend only on (seed, fold, epoch), so a resumed run ends with
exactly the metrics of an uninterrupted one. Every fold starts from the same freshly initialised
trainable parameters (same seed); the frozen backbone is one set of arrays shared by all folds.
"""

import json
import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from mpt_jax import errors
from mpt_jax import input_pipeline
from mpt_jax import metrics as metrics_lib
from mpt_jax import partition
from mpt_jax import pretrained
from mpt_jax import train as train_lib
from mpt_jax.models import mpt as mpt_lib

# Keys that may change between runs in one workdir without changing the results.
RESUMABLE_KEYS = ('data.data_dir', 'data.manual_dir', 'model.pretrained_path',
                  'train.log_every_steps')


class RunError(errors.UserError):
  """A run that cannot start or continue (the message says why)."""


def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (temporary file + rename), so a crash never leaves a half file."""
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=False)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def _flat(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flat(v, key + '.'))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Saves the config on the first run; refuses a different one later, naming the keys."""
  path = os.path.join(workdir, 'config.json')
  current = json.loads(config.to_json())
  if os.path.exists(path):
    saved = _flat(read_json(path))
    now = _flat(current)
    diff = sorted(k for k in set(saved) | set(now)
                  if saved.get(k) != now.get(k) and k not in RESUMABLE_KEYS)
    if diff:
      details = '; '.join(f'{k}: workdir {saved.get(k)!r} vs now {now.get(k)!r}' for k in diff[:8])
      raise RunError(f'{workdir} was created with a different config ({details}). Use another '
                     '--workdir or the original config.')
  else:
    os.makedirs(workdir, exist_ok=True)
    write_json(path, current)


def fold_dir(workdir: str, seed: int, subject: str) -> str:
  return os.path.join(workdir, f'seed_{seed}', f'fold_{subject}')


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
    self.model = mpt_lib.build_model(config.model, len(data.classes))
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

  def init(self, seed: int) -> None:
    """Initial parameters for ``seed``: trainable init (same for every fold) and frozen leaves."""
    self.seed = seed  # pylint: disable=attribute-defined-outside-init
    params = pretrained.init_params(self.model, self.config.model, jax.random.PRNGKey(seed))
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
    self.backbone_fingerprint = partition.tree_fingerprint(self.frozen)  # pylint: disable=attribute-defined-outside-init

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
  os.makedirs(fdir, exist_ok=True)
  train_idx, test_idx = input_pipeline.split_for_subject(exp.data, subject)
  ckpt = train_lib.FoldCheckpointer(os.path.join(fdir, 'checkpoints'))
  state = exp.fresh_state()
  history_path = os.path.join(fdir, 'history.json')
  history: Dict[str, List[Any]] = {'epoch': [], 'train_loss': [], 'train_accuracy': [],
                                   'test_accuracy': [], 'test_predictions': [], 'learning_rate': []}
  start_epoch = 0
  if ckpt.latest_epoch() is not None:
    start_epoch, state = ckpt.restore(state, exp.strategy)
    if os.path.exists(history_path):
      history = read_json(history_path)
      keep = [i for i, e in enumerate(history['epoch']) if e <= start_epoch]
      history = {k: [v[i] for i in keep] for k, v in history.items()}
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
      write_json(history_path, history)
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
  write_json(os.path.join(fdir, 'result.json'), result)
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
  return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: Optional[input_pipeline.ClipSet] = None) -> Dict[str, Any]:
  """Runs (or resumes) the whole LOSO experiment and writes results, report and figures."""
  from mpt_jax import console  # pylint: disable=g-import-not-at-top
  from mpt_jax import report as report_lib  # pylint: disable=g-import-not-at-top
  workdir = os.path.abspath(os.path.expanduser(workdir))
  check_workdir_config(config, workdir)
  data = data if data is not None else input_pipeline.load(config)
  exp = Experiment(config, data)
  logging.info('LOSO over %d subjects, %d clips, %d device(s) (%s)', len(exp.subjects), len(data),
               exp.num_devices, jax.devices()[0].platform)
  results_by_seed = {}
  run_info_path = os.path.join(workdir, 'run_info.json')
  t_run = time.time()
  total_folds = int(config.num_seeds) * len(exp.subjects)
  folds_done_now = 0
  progress = console.Progress(total_folds, int(config.train.num_epochs), int(config.num_seeds),
                              show=jax.process_index() == 0)
  for s in range(int(config.num_seeds)):
    seed = int(config.seed) + s
    exp.init(seed)
    info = read_json(run_info_path) if os.path.exists(run_info_path) else {}
    fp = info.get('backbone_fingerprint', {}).get(str(seed))
    if fp is not None and fp != exp.backbone_fingerprint:
      raise RunError(f'The frozen backbone differs from the one this workdir was trained with '
                     f'(fingerprint {exp.backbone_fingerprint} vs {fp}); check '
                     'config.model.pretrained_path')
    info.setdefault('backbone_fingerprint', {})[str(seed)] = exp.backbone_fingerprint
    info.update({'devices': [str(d) for d in exp.devices], 'jax': jax.__version__,
                 'python': platform.python_version(), 'subjects': exp.subjects,
                 'num_clips': len(data), 'classes': list(data.classes),
                 'trainable_params': partition.count_trainable(
                     partition.merge_params(exp.trainable0, exp.frozen), exp.strategy)})
    write_json(run_info_path, info)
    logging.info('Seed %d: parameters by part %s, trainable parts %s', seed,
                 partition.count_by_part(partition.merge_params(exp.trainable0, exp.frozen)),
                 partition.trainable_parts(exp.strategy))
    results = []
    for i, subject in enumerate(exp.subjects):
      path = os.path.join(fold_dir(workdir, seed, subject), 'result.json')
      if os.path.exists(path):
        results.append(read_json(path))
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
  write_json(os.path.join(workdir, 'results.json'), summary)
  run_writer = console.metric_writer(workdir, just_logging=jax.process_index() > 0)
  for seed, entry in summary['seeds'].items():
    for i, f in enumerate(entry['folds']):
      run_writer.write_scalars(i, {f'seed_{seed}/fold_accuracy': f['accuracy']})
  last = summary['last_epoch_over_seeds']
  run_writer.write_scalars(0, {f'final/{k}': v['mean'] for k, v in last.items()})
  run_writer.close()
  report_lib.write_report(config, workdir, summary, exp, results_by_seed)
  return summary
