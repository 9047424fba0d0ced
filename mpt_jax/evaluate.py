"""``--mode=eval``: restore every fold's Orbax checkpoint and recompute the metrics without training.

The last-epoch predictions are recomputed from the checkpoints and compared with the ones the
training run stored; the oracle best-epoch numbers (if enabled) can only come from the per-epoch
predictions stored during training, since only the final checkpoint of a fold is kept. Checkpoints
are opened read-only: evaluation creates no folder and writes only ``results_eval.json``.
"""

import os
from typing import Any, Dict, Optional

from absl import logging

from mpt_jax import fold_programs
from mpt_jax import input_pipeline
from mpt_jax import loso
from mpt_jax import run_plan
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd


def load_run_config(workdir: str, given=None):
  """The config a workdir was trained with (see :func:`mpt_jax.workdir.load_run_config`)."""
  return wd.load_run_config(wd.resolve(workdir), given)


def evaluate(config: Optional[Any], workdir: str, data=None) -> Dict[str, Any]:
  """Recomputes results from checkpoints; writes ``results_eval.json`` and returns the summary.

  Args:
    config: the config from the command line (its resumable keys, e.g. a moved pretrained file,
      are used), or None for the workdir's own config.
    workdir: the run directory.
    data: the protocol in memory (default: loaded from the config).

  Raises:
    errors.UserError: no run, unfinished folds, a damaged checkpoint, other data or weights.
  """
  workdir = wd.resolve(workdir)
  config = wd.load_run_config(workdir, config)
  run_plan.validate_config(config)
  info = wd.read_run_info(workdir)
  for s in range(int(config.num_seeds)):  # before loading the data: fold records only
    seed = int(config.seed) + s
    finished = wd.finished_subjects(workdir, seed, info['subjects'])
    if len(finished) < len(info['subjects']):
      raise wd.RunError(f'{workdir}: {len(finished)} of {len(info["subjects"])} folds of seed '
                        f'{seed} have finished training; resume training with the same command '
                        'first')
  data = data if data is not None else input_pipeline.load(config)
  plan = run_plan.make_plan(config, data)
  on_device = fold_programs.DeviceData(plan, data)
  wd.check_protocol(info, wd.protocol_record(data.names, data.subjects, data.labels, data.classes),
                    workdir)
  results_by_seed, identical, programs = {}, True, None
  for s in range(int(config.num_seeds)):
    seed = int(config.seed) + s  # (every fold of it finished: checked above)
    init = fold_programs.init_seed(plan, seed)
    wd.check_init_fingerprint(info, seed, init.fingerprint, workdir)
    if programs is None:  # one fold's programs, the same for every seed
      programs = fold_programs.make_programs(plan, init, fold_programs.one_fold_layout(plan))
    template = train_lib.state_template(plan.config, init.params)
    results = []
    for i, subject in enumerate(plan.subjects):
      stored = wd.read_json(wd.result_path(workdir, seed, subject))
      try:
        state = wd.restore_fold(workdir, seed, subject, template, plan.strategy,
                                final_epoch=int(config.train.num_epochs))
      except train_lib.CheckpointDamagedError as e:
        raise train_lib.CheckpointDamagedError(
            f'Fold {subject} (seed {seed}) cannot be evaluated: {e}. Its stored predictions are '
            'in result.json; to recompute them, move the fold folder aside and train again') from e
      _, test_idx = input_pipeline.split_for_subject(data, subject)
      preds = fold_programs.predict(on_device, programs, init, state.params,
                                    test_idx).argmax(-1)
      if stored['predictions'] != preds.tolist():
        identical = False
        logging.warning('Fold %s: recomputed predictions differ from the stored ones', subject)
      results.append({
          'subject': subject, 'seed': seed, 'fold': i, 'n': int(len(test_idx)),
          'clips': data.names[test_idx].tolist(), 'labels': data.labels[test_idx].tolist(),
          'predictions': preds.tolist(),
          'per_epoch_predictions': stored.get('per_epoch_predictions', []),
          'history': stored.get('history', {})})
    results_by_seed[seed] = results
  summary = loso.summarise(config, data.classes, results_by_seed)
  summary['identical_to_training_run'] = identical
  with wd.Lock(workdir):
    wd.write_json(os.path.join(workdir, 'results_eval.json'), summary)
  return summary


def summary_lines(summary: Dict[str, Any]) -> str:
  from mpt_jax import report  # pylint: disable=g-import-not-at-top
  text = report.results_table(summary)
  if 'identical_to_training_run' in summary:
    text += f"\nidentical to the training run's predictions: {summary['identical_to_training_run']}"
  return text
