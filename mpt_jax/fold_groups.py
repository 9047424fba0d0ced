"""Training a group of folds together: the fold slots of one program call, epoch by epoch.

:func:`train_group` trains (or resumes) up to ``layout.folds`` folds of one seed with the programs
of :mod:`mpt_jax.fold_programs`; each fold keeps its own epoch counter, history, TensorBoard
scalars and Orbax checkpoint (:class:`FoldRun`), and writes its ``result.json`` when its last epoch
is done. Data order and augmentation depend only on (seed, fold, epoch)
(:func:`epoch_arrays`), so a resumed fold ends with exactly the metrics of an uninterrupted one.
"""

import os
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging

from mpt_jax import fold_programs
from mpt_jax import input_pipeline
from mpt_jax import run_plan
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd

RunError = wd.RunError
_clock = time.monotonic  # the checkpoint cadence's clock (tests replace it)


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


class FoldRun:
  """One fold of a training group: its data, records, checkpoint and epochs."""

  def __init__(self, plan: run_plan.RunPlan, clips: input_pipeline.ClipSet, seed: int,
               index: int, workdir: str, writer):
    self.index, self.subject, self.seed = index, plan.subjects[index], seed
    self.workdir = workdir
    wd.makedirs(wd.fold_dir(workdir, seed, self.subject))
    self.train_idx, self.test_idx = input_pipeline.split_for_subject(clips, self.subject)
    self.ckpt = train_lib.FoldCheckpointer(self.ckpt_dir)
    self.history: Dict[str, List[Any]] = {'epoch': [], 'train_loss': [], 'train_accuracy': [],
                                          'test_accuracy': [], 'test_predictions': [],
                                          'learning_rate': []}
    self.writer = writer
    self.logits = None  # held-out logits of the final state, once computed
    self.epoch = self.step = 0  # set by resume()

  @property
  def ckpt_dir(self) -> str:
    return wd.checkpoint_dir(self.workdir, self.seed, self.subject)

  @property
  def history_path(self) -> str:
    return os.path.join(wd.fold_dir(self.workdir, self.seed, self.subject), 'history.json')

  def resume(self, fresh: train_lib.TrainState, strategy: str) -> train_lib.TrainState:
    """The fold's state: its last checkpoint's, or ``fresh`` (no checkpoint, or a damaged one);
    sets the fold's epoch, step and history to the checkpoint's."""
    state, start_epoch = fresh, 0
    if self.ckpt.latest_epoch() is not None:
      try:
        start_epoch, state = self.ckpt.restore(fresh, strategy)
      except train_lib.CheckpointDamagedError as e:
        # Only the latest checkpoint is kept, so there is no earlier one to fall back to: keep
        # the damaged one aside (never delete data) and retrain this fold from the start.
        self.ckpt.close()
        aside = f'{self.ckpt_dir}.damaged.{int(time.time())}'
        os.replace(self.ckpt_dir, aside)
        logging.warning('Fold %s (seed %d): %s; moved it to %s and retraining the fold from the '
                        'start', self.subject, self.seed, e, aside)
        self.ckpt = train_lib.FoldCheckpointer(self.ckpt_dir)
        state, start_epoch = fresh, 0
    if start_epoch and os.path.exists(self.history_path):
      history = wd.read_json(self.history_path)
      keep = [i for i, e in enumerate(history['epoch']) if e <= start_epoch]
      self.history = {k: [v[i] for i in keep] for k, v in history.items()}
    if start_epoch:
      logging.info('Fold %s: resuming after epoch %d', self.subject, start_epoch)
    self.epoch, self.step = int(start_epoch), int(state.step)
    return state

  def finish(self, clips: input_pipeline.ClipSet, num_epochs: int) -> Dict[str, Any]:
    """Writes ``result.json`` (the final state's held-out predictions) and closes the fold."""
    self.writer.flush()
    self.writer.close()
    self.ckpt.close()
    test_idx, logits, history = self.test_idx, self.logits, self.history
    result = {
        'subject': self.subject, 'seed': self.seed, 'fold': self.index, 'n': int(len(test_idx)),
        'clips': clips.names[test_idx].tolist(),
        'labels': clips.labels[test_idx].tolist(),
        'predictions': logits.argmax(-1).tolist(),
        'probabilities': np.round(_softmax(logits), 6).tolist(),
        'epochs': num_epochs, 'history': {k: history[k] for k in
                                          ('epoch', 'train_loss', 'train_accuracy',
                                           'test_accuracy', 'learning_rate')},
        'per_epoch_predictions': history['test_predictions'],
    }
    wd.write_json(wd.result_path(self.workdir, self.seed, self.subject), result)
    return result


def epoch_arrays(config: ml_collections.ConfigDict, layout: train_lib.FoldLayout, steps: int,
                 plans: Sequence[Optional[Tuple[np.ndarray, int]]]
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One epoch's inputs of the train program for the fold slots, on the host.

  Args:
    config: the run config (batch size, flip, rotation and crop).
    layout: the fold slots.
    steps: steps of the epoch program (the largest fold's).
    plans: per slot, ``(training clip indices, epoch seed)``, or None for a slot that trains no
      step this epoch (a finished or dummy fold: every step masked).

  Returns:
    ``(idx, aug, mask)``, ``(folds, steps, split, per_device)`` (``aug`` with a trailing 5), as
    :func:`mpt_jax.input_pipeline.epoch_batches` gives them; masked places have index 0 and no
    augmentation.
  """
  bs, split = int(config.train.batch_size), layout.split
  shape = (layout.folds, steps, split, bs // split)
  idx, mask = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
  aug = np.tile(np.array([0, 0, 1, 0, 0], np.float32), shape + (1,))  # identity
  for j, plan in enumerate(plans):
    if plan is None:
      continue
    train_idx, epoch_seed = plan
    for k, batch in enumerate(input_pipeline.epoch_batches(
        train_idx, bs, split, epoch_seed, bool(config.data.hflip),
        max_rotation_deg=float(config.data.max_rotation_deg),
        min_crop_scale=float(config.data.min_crop_scale))):
      idx[j, k], aug[j, k], mask[j, k] = batch.idx, batch.aug, batch.mask
  return idx, aug, mask


def train_group(plan: run_plan.RunPlan, data: fold_programs.DeviceData,
                programs: fold_programs.Programs, init: fold_programs.SeedParams,
                fold_indices: Sequence[int], workdir: str, make_writer: Callable[[int], Any],
                on_epoch: Optional[Callable[[int, Dict[str, float]], None]] = None,
                on_fold_done: Optional[Callable[[int, Dict[str, Any]], None]] = None
                ) -> Dict[int, Dict[str, Any]]:
  """Trains (or resumes) the folds ``fold_indices`` of seed ``init.seed`` together; returns their
  results.

  At most ``programs.layout.folds`` folds; the free slots are dummy folds that never update. Each
  fold resumes from its own checkpoint (folds may be at different epochs) and runs its own epochs:
  in call ``k`` of the epoch program, fold ``f`` trains its epoch ``start_f + 1 + k``; a fold whose
  epochs are done is inactive.

  Args:
    plan: the run plan.
    data: the protocol on the plan's devices.
    programs: the run's programs (:func:`mpt_jax.fold_programs.make_programs`).
    init: the seed's initial parameters.
    fold_indices: indices into ``plan.subjects``.
    workdir: the run directory.
    make_writer: fold index -> metric writer (TensorBoard scalars of the fold).
    on_epoch: called with (fold index, scalars) after each fold epoch.
    on_fold_done: called with (fold index, result) when a fold finished.
  """
  config, layout, seed, clips = plan.config, programs.layout, init.seed, data.data
  if not 0 < len(fold_indices) <= layout.folds:
    raise ValueError(f'{len(fold_indices)} folds for {layout.folds} fold slots')
  num_epochs = int(config.train.num_epochs)
  every = max(1, int(config.train.eval_every_epochs))
  ck_every = max(1, int(config.train.checkpoint_every_epochs))
  ck_interval = float(config.train.get('checkpoint_min_interval_s', 0.0))
  folds, states = [], []
  try:
    for i in fold_indices:
      folds.append(FoldRun(plan, clips, seed, i, workdir, make_writer(i)))
      states.append(folds[-1].resume(programs.fresh_fold_state(init), plan.strategy))
  except BaseException:
    for f in folds:
      f.ckpt.close()
    raise
  slots = folds + [None] * (layout.folds - len(folds))
  fresh = programs.fresh_fold_state(init)
  host = train_lib.stack_states(states + [fresh] * (layout.folds - len(folds)))
  del states  # the stacked state holds them now
  state = layout.state_to_device(host, plan.devices)
  eval_idx, eval_mask = fold_programs.eval_arrays(
      plan, [f.test_idx if f else np.zeros(0, np.int64) for f in slots], layout)
  frozen = init.frozen_on_device
  results = {}

  def finish(f):
    results[f.index] = f.finish(clips, num_epochs)
    if on_fold_done:
      on_fold_done(f.index, results[f.index])

  # A fold whose last epoch was saved before its result (a crash in between) predicts now.
  if any(f.epoch >= num_epochs for f in folds):
    logits = fold_programs.evaluate_folds(data, programs, state.params, frozen, eval_idx,
                                          eval_mask)
    for j, f in enumerate(slots):
      if f is not None and f.epoch >= num_epochs:
        f.logits = logits[j]
        finish(f)
  last_save = _clock()  # the group's last checkpoint save (or its start)
  try:
    while any(f is not None and f.epoch < num_epochs for f in slots):
      active = [j for j, f in enumerate(slots) if f is not None and f.epoch < num_epochs]
      idx, aug, mask = epoch_arrays(
          config, layout, plan.steps_per_epoch,
          [(slots[j].train_idx, input_pipeline.fold_seed(seed, slots[j].index, slots[j].epoch + 1))
           if j in active else None for j in range(layout.folds)])
      state, m = programs.train(state, frozen, data.train_inputs(), layout.to_device(idx),
                                layout.to_device(aug), layout.to_device(mask))
      m = {k: layout.metrics_from_device(np.asarray(v)) for k, v in jax.device_get(m).items()}
      for f in slots:
        if f is not None and f.epoch < num_epochs:
          f.epoch += 1
      evaluate = [j for j in active if slots[j].epoch % every == 0
                  or slots[j].epoch == num_epochs]
      logits = (fold_programs.evaluate_folds(data, programs, state.params, frozen, eval_idx,
                                             eval_mask) if evaluate else None)
      due = _clock() - last_save >= ck_interval
      save = [j for j in active if (due and slots[j].epoch % ck_every == 0)
              or slots[j].epoch == num_epochs]
      host = layout.state_from_device(state) if save else None
      # Every fold's epoch is checked before anything of the epoch is written.
      epoch_metrics = {}
      for j in active:
        f = slots[j]
        w = m['count'][j].astype(np.float64)
        real = w > 0
        train_loss = float(np.dot(m['loss'][j], w) / w.sum())
        train_acc = float(np.dot(m['accuracy'][j], w) / w.sum())
        if not np.all(np.isfinite(np.asarray(m['loss'][j][real], np.float64))):
          raise RunError(f'seed {seed} fold {f.index + 1}/{len(plan.subjects)} ({f.subject}), '
                         f'epoch {f.epoch}: the training loss became {train_loss} (not finite); '
                         'nothing of this epoch is saved and the fold has no result. Lower '
                         '--config.train.learning_rate or check the pretrained weights')
        epoch_metrics[j] = (train_loss, train_acc, int(real.sum()))
      for j in active:
        f = slots[j]
        train_loss, train_acc, real_steps = epoch_metrics[j]
        f.step += real_steps
        lr = float(programs.schedule(f.step))
        h = f.history
        h['epoch'].append(f.epoch)
        h['train_loss'].append(train_loss)
        h['train_accuracy'].append(train_acc)
        h['learning_rate'].append(lr)
        if j in evaluate:
          f.logits = logits[j]
          preds = f.logits.argmax(-1)
          h['test_accuracy'].append(float((preds == clips.labels[f.test_idx]).mean()))
          h['test_predictions'].append(preds.tolist())
        else:
          h['test_accuracy'].append(None)
          h['test_predictions'].append(None)
        scalars = {'train_loss': train_loss, 'train_accuracy': train_acc, 'learning_rate': lr}
        if h['test_accuracy'][-1] is not None:
          scalars['test_accuracy'] = h['test_accuracy'][-1]
        f.writer.write_scalars(f.epoch, scalars)
        if on_epoch:
          on_epoch(f.index, scalars)
        if j in save:
          wd.write_json(f.history_path, h)
          f.ckpt.save(f.epoch, train_lib.fold_slice(host, j), plan.strategy)
        logging.info('seed %d fold %d/%d (%s) epoch %d/%d: loss %.4f acc %.3f test acc %s', seed,
                     f.index + 1, len(plan.subjects), f.subject, f.epoch, num_epochs, train_loss,
                     train_acc, h['test_accuracy'][-1])
        if f.epoch == num_epochs:  # the last epoch always evaluates
          finish(f)
      if due and save:
        last_save = _clock()
  finally:
    for f in folds:
      if f.index not in results:
        f.ckpt.close()
        f.writer.close()
  return results
