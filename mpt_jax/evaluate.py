"""``--mode=eval``: restore every fold's Orbax checkpoint and recompute the metrics without training.

The last-epoch predictions are recomputed from the checkpoints and compared with the ones the
training run stored; the oracle best-epoch numbers (if enabled) can only come from the per-epoch
predictions stored during training, since only the final checkpoint of a fold is kept.
"""

import os
from typing import Any, Dict

from absl import logging

from mpt_jax import input_pipeline
from mpt_jax import loso
from mpt_jax import train as train_lib


def load_run_config(workdir: str):
  """The config a workdir was trained with."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.expanduser(workdir), 'config.json')
  if not os.path.exists(path):
    raise loso.RunError(f'{workdir} holds no run (no config.json); train first with '
                        f'python main.py --config=... --workdir={workdir}')
  return ml_collections.ConfigDict(loso.read_json(path))


def evaluate(config, workdir: str, data=None) -> Dict[str, Any]:
  """Recomputes results from checkpoints; writes ``results_eval.json`` and returns the summary."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.exists(os.path.join(workdir, 'config.json')):
    load_run_config(workdir)  # raises the explanatory error
  loso.check_workdir_config(config, workdir)
  data = data if data is not None else input_pipeline.load(config)
  exp = loso.Experiment(config, data)
  info = loso.read_json(os.path.join(workdir, 'run_info.json'))
  results_by_seed, identical = {}, True
  for s in range(int(config.num_seeds)):
    seed = int(config.seed) + s
    exp.init(seed)
    fp = info.get('backbone_fingerprint', {}).get(str(seed))
    if fp != exp.backbone_fingerprint:
      raise loso.RunError(f'The frozen backbone differs from the trained run (fingerprint '
                          f'{exp.backbone_fingerprint} vs {fp}); check config.model.pretrained_path')
    results = []
    for i, subject in enumerate(exp.subjects):
      fdir = loso.fold_dir(workdir, seed, subject)
      ckpt = train_lib.FoldCheckpointer(os.path.join(fdir, 'checkpoints'))
      epoch = ckpt.latest_epoch()
      if epoch is None or epoch != int(config.train.num_epochs):
        raise loso.RunError(f'Fold {subject} (seed {seed}) is not finished (last checkpoint: '
                            f'{epoch}); resume training with the same command first')
      _, state = ckpt.restore(exp.fresh_state(), exp.strategy)
      ckpt.close()
      _, test_idx = input_pipeline.split_for_subject(data, subject)
      preds = exp.predict(state.params, test_idx).argmax(-1)
      stored_path = os.path.join(fdir, 'result.json')
      stored = loso.read_json(stored_path) if os.path.exists(stored_path) else None
      if stored is not None and stored['predictions'] != preds.tolist():
        identical = False
        logging.warning('Fold %s: recomputed predictions differ from the stored ones', subject)
      results.append({
          'subject': subject, 'seed': seed, 'fold': i, 'n': int(len(test_idx)),
          'clips': data.names[test_idx].tolist(), 'labels': data.labels[test_idx].tolist(), 'predictions': preds.tolist(),
          'per_epoch_predictions': stored['per_epoch_predictions'] if stored else [],
          'history': stored['history'] if stored else {}})
    results_by_seed[seed] = results
  summary = loso.summarise(config, data.classes, results_by_seed)
  summary['identical_to_training_run'] = identical
  loso.write_json(os.path.join(workdir, 'results_eval.json'), summary)
  return summary


def summary_lines(summary: Dict[str, Any]) -> str:
  from mpt_jax import report  # pylint: disable=g-import-not-at-top
  text = report.results_table(summary)
  if 'identical_to_training_run' in summary:
    text += f"\nidentical to the training run's predictions: {summary['identical_to_training_run']}"
  return text

