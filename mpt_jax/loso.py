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

The run's plan (devices, fold layout, step counts, the validated config) is
:func:`mpt_jax.run_plan.make_plan`'s; each seed's initial parameters and the programs shared by
every seed come from :mod:`mpt_jax.fold_programs`. Folds train in groups of
``config.train.folds_per_step`` (:func:`mpt_jax.fold_groups.train_group`); each fold of a group
keeps its own epoch counter, records and checkpoint. Multi-host: process ``p`` trains the folds
``i % process_count == p``; process 0 writes the shared records.
"""

import os
import platform
import time
from typing import Any, Dict, List, Optional, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from mpt_jax import console
from mpt_jax import fold_groups
from mpt_jax import fold_programs
from mpt_jax import input_pipeline
from mpt_jax import metric_writers
from mpt_jax import metrics as metrics_lib
from mpt_jax import partition
from mpt_jax import pretrained
from mpt_jax import report as report_lib
from mpt_jax import run_plan
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd
from mpt_jax.models import mpt as mpt_lib

RunError = wd.RunError


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


def _motion_example(plan: run_plan.RunPlan, data: input_pipeline.ClipSet,
                    init: fold_programs.SeedParams, workdir: str, subject: str):
  """Inputs of the report's motion figure: the first fold's final model on 3 of its clips."""
  try:
    state = wd.restore_fold(workdir, init.seed, subject,
                            train_lib.state_template(plan.config, init.params), plan.strategy)
  except train_lib.CheckpointDamagedError as e:  # figures must never fail a finished run
    logging.warning('No motion figure: %s', e)
    return None
  _, test_idx = input_pipeline.split_for_subject(data, subject)
  idx = test_idx[:3]
  return {'model': plan.model, 'params': state.params, 'clips': data.clips[idx],
          'apex': data.apex[idx], 'names': data.names[idx].tolist()}


def preflight(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The checks of a training run that need no data (fast); returns the resolved workdir."""
  workdir = wd.resolve(workdir)
  wd.check_usable(workdir)
  model = run_plan.validate_config(config)
  wd.compare_config(config, workdir)
  pretrained.check_backbone_source(config.model)
  if config.model.pretrained_path:  # read and check the file now, before the data loads
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1,) + mpt_lib.input_shape(config.model),
                                                 jax.numpy.float32))['params']
    pretrained.load_backbone(config.model.pretrained_path, shapes, model.backbone.num_heads)
  return workdir


def run_in_sweep(config: ml_collections.ConfigDict, workdir: str, data_cache: Dict[str, Any],
                 label: str) -> Optional[float]:
  """One run of a sweep (a table's row, a study's variant and seed) in its own ``workdir``.

  A finished run (``results.json``) is skipped, an unfinished one resumes, a changed config is
  refused naming the keys. Runs with the same data settings share the clips loaded once
  (``data_cache``). Returns the seconds this call trained, or None when the run was finished.
  """
  os.makedirs(workdir, exist_ok=True)
  wd.compare_config(config, workdir)
  if os.path.exists(os.path.join(workdir, 'results.json')):
    logging.info('%s: finished, skipped', label)
    return None
  logging.info('%s: LOSO in %s', label, workdir)
  key = repr((config.data.to_json(), int(config.model.num_frames), int(config.model.image_size)))
  if key not in data_cache:
    data_cache[key] = input_pipeline.load(config)
  t0 = time.time()
  train_and_evaluate(config, workdir, data=data_cache[key])
  return time.time() - t0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: Optional[input_pipeline.ClipSet] = None,
                       preflight_done: bool = False) -> Dict[str, Any]:
  """Runs (or resumes) the whole LOSO experiment and writes results, report and figures.

  Args:
    config: the run's config.
    workdir: the run directory (created if needed).
    data: the protocol in memory (default: loaded from the config).
    preflight_done: the caller already ran :func:`preflight` on this config and workdir (as
      ``main.py`` does before importing TensorFlow), so it is not run twice.

  Raises:
    errors.UserError: for anything the user can fix; then nothing in ``workdir`` has changed
      (unless training itself fails, e.g. a non-finite loss, which names the fold and epoch).
  """
  # 1. Checks that read only: workdir, config values, config vs workdir, data, model, init.
  workdir = wd.resolve(workdir) if preflight_done else preflight(config, workdir)
  info = wd.read_run_info(workdir, required=False)
  data = data if data is not None else input_pipeline.load(config)
  plan = run_plan.make_plan(config, data)
  protocol = wd.protocol_record(data.names, data.subjects, data.labels, data.classes)
  wd.check_protocol(info, protocol, workdir)
  init = fold_programs.init_seed(plan, int(config.seed))
  wd.check_init_fingerprint(info, init.seed, init.fingerprint, workdir)
  # 2. Writes, under the workdir's lock.
  lock = wd.Lock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    return _run(config, workdir, data, plan, init, protocol)
  finally:
    if lock is not None:
      lock.release()


def _barrier(name: str) -> None:
  """Waits for every process of a multi-host run (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _run(config, workdir, data, plan, init, protocol) -> Dict[str, Any]:
  """The LOSO loop of :func:`train_and_evaluate`, once every check passed and the lock is held
  (``init``: the first seed's parameters).

  Multi-host: process ``p`` trains the folds ``i % process_count == p`` and writes only their
  records; process 0 alone writes the shared files (``config.json``, ``run_info.json``,
  ``results.json``, the report), the latter once every process has finished its folds.
  """
  main_process = jax.process_index() == 0
  if main_process:
    wd.save_config(config, workdir)
  on_device = fold_programs.DeviceData(plan, data)
  # The same programs for every seed: they compile once per run.
  programs = fold_programs.make_programs(plan, init)
  logging.info('LOSO over %d subjects, %d clips, %d device(s) (%s), %d fold(s) per step, motion '
               'cache %s', len(plan.subjects), len(data), len(plan.devices),
               jax.devices()[0].platform, plan.layout.folds, 'on' if plan.motion_cache else 'off')
  results_by_seed = {}
  t_run = time.time()
  num_subjects = len(plan.subjects)
  num_epochs = int(config.train.num_epochs)
  total_folds = int(config.num_seeds) * num_subjects
  progress = console.Progress(total_folds, num_epochs, int(config.num_seeds), show=main_process)
  position = [0]  # epochs of the run done (finished folds and resumed epochs included)
  folds_done_now = [0]
  for s in range(int(config.num_seeds)):
    seed = int(config.seed) + s
    if init.seed != seed:
      init = fold_programs.init_seed(plan, seed)
    info = wd.read_run_info(workdir, required=False)
    wd.check_init_fingerprint(info, seed, init.fingerprint, workdir)
    if main_process:
      info.setdefault('init_fingerprint', {})[str(seed)] = init.fingerprint
      info.pop('backbone_fingerprint', None)  # older runs: frozen leaves only
      info.update({'devices': [str(d) for d in plan.devices], 'jax': jax.__version__,
                   'processes': jax.process_count(), 'folds_per_step': plan.layout.folds,
                   'motion_cache': plan.motion_cache, 'model_dtype': plan.model.compute.dtype,
                   'attention': plan.model.compute.attention,
                   'python': platform.python_version(), 'subjects': list(plan.subjects),
                   'num_clips': len(data), 'classes': list(data.classes), 'protocol': protocol,
                   'trainable_params': partition.count_trainable(init.params, plan.strategy),
                   'provenance': wd.provenance(config, info.get('provenance'))})
      wd.write_json(wd.run_info_path(workdir), info)
    logging.info('Seed %d: parameters by part %s, trainable parts %s', seed,
                 partition.count_by_part(init.params), partition.trainable_parts(plan.strategy))
    pending = [i for i in plan.my_folds
               if not os.path.exists(wd.result_path(workdir, seed, plan.subjects[i]))]
    position[0] += num_epochs * (num_subjects - len(pending))
    per_call = plan.layout.folds
    groups = [pending[k:k + per_call] for k in range(0, len(pending), per_call)]
    for group in groups:
      t_group = time.time()
      label = plan.subjects[group[0]] + (f'..{plan.subjects[group[-1]]}' if len(group) > 1
                                         else '')

      def make_writer(i, seed=seed):
        # Each process writes the TensorBoard scalars of the folds it trains.
        return metric_writers.create_writer(wd.fold_dir(workdir, seed, plan.subjects[i]))

      def on_epoch(i, scalars, label=label):
        del i
        position[0] += 1
        progress.epoch(position[0] // num_epochs, position[0] % num_epochs, scalars, label)

      def on_fold_done(i, result, s=s, t_group=t_group):
        folds_done_now[0] += 1
        progress.fold_done(s * num_subjects + i, result, time.time() - t_group)
        logging.info('Fold %s done in %.0fs (accuracy %.3f); %d folds done by this process in '
                     '%.0fs', result['subject'], time.time() - t_group,
                     float(np.mean(np.asarray(result['labels']) ==
                                   np.asarray(result['predictions']))),
                     folds_done_now[0], time.time() - t_run)

      fold_groups.train_group(plan, on_device, programs, init, group, workdir, make_writer,
                              on_epoch, on_fold_done)
    results_by_seed[seed] = None
  on_device.release_motion_cache()
  progress.close()
  # Every process has written the result.json of its folds; then the shared records.
  _barrier('mpt_jax: every fold trained')
  for seed in results_by_seed:
    results_by_seed[seed] = [wd.read_json(wd.result_path(workdir, seed, subject))
                             for subject in plan.subjects]
  summary = summarise(config, data.classes, results_by_seed)
  if not main_process:
    return summary
  wd.write_json(os.path.join(workdir, 'results.json'), summary)
  run_writer = metric_writers.create_writer(workdir)
  for seed, entry in summary['seeds'].items():
    for i, f in enumerate(entry['folds']):
      run_writer.write_scalars(i, {f'seed_{seed}/fold_accuracy': f['accuracy']})
  last = summary['last_epoch_over_seeds']
  run_writer.write_scalars(0, {f'final/{k}': v['mean'] for k, v in last.items()})
  run_writer.close()
  first_seed = sorted(results_by_seed)[0]
  if init.seed != first_seed:
    init = fold_programs.init_seed(plan, first_seed)
  motion = _motion_example(plan, data, init, workdir, results_by_seed[first_seed][0]['subject'])
  report_lib.write_report(config, workdir, summary, results_by_seed, motion,
                          wd.read_run_info(workdir, required=False))
  return summary
