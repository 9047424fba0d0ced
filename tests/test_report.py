"""report.md's opening (what produced the run) and its figure links, as pure functions."""

import hashlib
import os


from configs import synthetic
from mpt_jax import report
from mpt_jax import workdir as wd


def test_provenance_names_the_weights_file_by_its_sha256(tmp_path):
  weights = tmp_path / 'ViT-B_16.npz'
  weights.write_bytes(os.urandom(3 << 20))
  config = synthetic.get_config('smoke')
  config.model.pretrained_path = str(weights)
  config.num_seeds = 3
  p = wd.provenance(config, now='2026-12-06 08:00 UTC')
  assert p['weights']['sha256'] == hashlib.sha256(weights.read_bytes()).hexdigest()
  assert p['seeds'] == [0, 1, 2] and p['dataset'] == 'synthetic_me' and p['backbone'] == 'tiny'
  # An unchanged file's hash is reused from the earlier record; a changed file is hashed again.
  fake = dict(p, weights=dict(p['weights'], sha256='0' * 64))
  assert wd.provenance(config, fake)['weights']['sha256'] == '0' * 64
  weights.write_bytes(os.urandom(1 << 20))
  assert wd.provenance(config, fake)['weights']['sha256'] == hashlib.sha256(
      weights.read_bytes()).hexdigest()
  lines = report.provenance_lines({'provenance': p}, 164, 16)
  assert '| clips, subjects | 164, 16 |' in lines
  assert f'| weights | {weights} (SHA-256 {p["weights"]["sha256"][:16]}...) |' in lines
  assert '| date | 2026-12-06 08:00 UTC |' in lines
  assert '| epochs | 2 |' in lines and '| seeds | 0, 1, 2 |' in lines


def test_report_links_only_the_figures_it_drew(tmp_path):
  config = synthetic.get_config('smoke')
  classes = ['a', 'b']
  fold = {'subject': 's1', 'n': 2, 'labels': [0, 1], 'predictions': [0, 0], 'accuracy': 0.5}
  last = {'confusion_matrix': [[1, 0], [1, 0]], 'per_class_accuracy': {'a': 1.0, 'b': 0.0},
          'support': {'a': 1, 'b': 1}, 'per_class_f1': {'a': 0.67, 'b': 0.0}}
  ms = {'mean': 0.5, 'std': 0.0, 'n': 1, 'ddof': 0}
  summary = {'dataset': 'synthetic_me', 'classes': classes,
             'seeds': {'0': {'last_epoch': last, 'folds': [fold]}},
             'last_epoch_over_seeds': {k: ms for k in ('accuracy', 'uf1', 'uar', 'wf1')}}
  history = {'epoch': [1], 'train_loss': [1.0], 'test_accuracy': [0.5]}
  text = report.write_report(config, str(tmp_path), summary, {0: [dict(fold, history=history)]})
  assert '![motion]' not in text and '![confusion](figures/confusion_matrix.png)' in text
  assert not os.path.exists(tmp_path / 'figures' / 'motion_examples.png')
  assert '±' not in text
