"""--mode=study: the paired statistics against scipy and by hand; a 2 x 2 smoke study, resumed."""

import json
import math
import os

import numpy as np
import pytest
from scipy import stats

from configs import synthetic
from mpt_jax import loso
from mpt_jax import study


def test_paired_difference_matches_the_paired_t_test():
  variant = [0.70, 0.74, 0.69, 0.80, 0.77]
  baseline = [0.66, 0.75, 0.61, 0.72, 0.70]
  p = study.paired_difference(variant, baseline)
  ci = stats.ttest_rel(variant, baseline).confidence_interval(0.95)
  assert p['n'] == 5
  assert p['mean'] == pytest.approx(np.mean(np.subtract(variant, baseline)))
  assert (p['low'], p['high']) == (pytest.approx(ci.low), pytest.approx(ci.high))
  # By hand: differences 1, 2, 3 -> mean 2, sd 1, t(0.975, 2) = 4.302653 (published table value).
  q = study.paired_difference([1.0, 2.0, 3.0], [0.0, 0.0, 0.0])
  assert q['sd'] == pytest.approx(1.0)
  assert q['high'] == pytest.approx(2 + 4.302653 / math.sqrt(3), abs=1e-6)
  assert q['low'] == pytest.approx(2 - 4.302653 / math.sqrt(3), abs=1e-6)
  # The pairing matters: the unpaired order would give another interval.
  r = study.paired_difference(variant, baseline[::-1])
  assert r['low'] != pytest.approx(p['low'])
  # One seed: a difference, no interval.
  one = study.paired_difference([0.5], [0.4])
  assert one['mean'] == pytest.approx(0.1) and one['low'] is None and one['high'] is None


def test_variant_configs_apply_ablation_and_dotted_keys():
  base = synthetic.get_config(None)
  cfg = study.variant_config(base, {'prompt': 'none', 'model.tokenizer_init': 'middle',
                                    'model.magnification.alpha': '10', 'train.num_epochs': '3'}, 4)
  assert cfg.model.prompt_type == 'none' and cfg.model.tokenizer_init == 'middle'
  assert cfg.model.magnification.alpha == 10.0 and cfg.train.num_epochs == 3
  assert (cfg.seed, cfg.num_seeds) == (4, 1)
  assert base.model.prompt_type == 'motion' and base.seed == 0  # the base is left alone
  with pytest.raises(study.StudyError, match='model.no_such_key'):
    study.variant_config(base, {'model.no_such_key': 1}, 0)
  with pytest.raises(study.StudyError, match='train.num_epochs'):
    study.variant_config(base, {'train.num_epochs': 'many'}, 0)
  with pytest.raises(study.StudyError, match='nothing'):
    study.parse_study_arg('nothing')
  with pytest.raises(study.StudyError, match='K_2'):
    study.parse_study_arg('K:K_5,K_2')
  assert [v for v, _ in study.parse_study_arg('K:K_1,K_5')[1]] == ['K_1', 'K_5']


@pytest.fixture(scope='module')
def smoke_study(tmp_path_factory, smoke_data_dir):
  config = synthetic.get_config('smoke')
  config.data.data_dir = smoke_data_dir
  config.data.subjects = ('p01', 'p02')
  config.train.num_epochs = 1
  workdir = str(tmp_path_factory.mktemp('study'))
  md = study.run_study('smoke', config, workdir, seeds=2, command='python main.py --mode=study')
  return config, workdir, md


@pytest.mark.slow
def test_smoke_study_runs_every_variant_and_seed(smoke_study):
  _, workdir, md = smoke_study
  result = json.load(open(os.path.join(workdir, 'study.json')))
  assert result['seeds'] == [0, 1] and result['baseline'] == 'spread'
  rows = {r['variant']: r for r in result['variants']}
  assert list(rows) == ['spread', 'middle']
  for variant, row in rows.items():
    for seed in (0, 1):
      rundir = os.path.join(workdir, variant, f'seed_{seed}')
      saved = json.load(open(os.path.join(rundir, 'config.json')))
      summary = json.load(open(os.path.join(rundir, 'results.json')))
      assert saved['seed'] == seed and saved['num_seeds'] == 1
      assert saved['model']['tokenizer_init'] == variant
      assert row['per_seed'][str(seed)]['uf1'] == summary['seeds'][str(seed)]['last_epoch']['uf1']
    uf1 = [row['per_seed'][s]['uf1'] for s in ('0', '1')]
    assert row['uf1']['mean'] == pytest.approx(np.mean(uf1))
    assert row['uf1']['std'] == pytest.approx(np.std(uf1, ddof=1))
  # The two seeds are different runs (different initialisation fingerprints).
  infos = [json.load(open(os.path.join(workdir, 'spread', f'seed_{s}', 'run_info.json')))
           for s in (0, 1)]
  assert infos[0]['init_fingerprint']['0'] != infos[1]['init_fingerprint']['1']
  paired = rows['middle']['paired_vs_baseline']['accuracy']
  d = [rows['middle']['per_seed'][s]['accuracy'] - rows['spread']['per_seed'][s]['accuracy']
       for s in ('0', '1')]
  assert paired['mean'] == pytest.approx(np.mean(d)) and paired['n'] == 2
  assert '| middle | model.tokenizer_init=middle | 2 |' in md and 'python main.py --mode=study' in md
  assert open(os.path.join(workdir, 'study.md')).read() == md


@pytest.mark.slow
def test_finished_runs_are_skipped_and_changed_configs_refused(smoke_study, monkeypatch):
  config, workdir, md = smoke_study
  trained = []
  monkeypatch.setattr(loso, 'train_and_evaluate', lambda *a, **k: trained.append(a))
  assert study.run_study('smoke', config, workdir, seeds=2,
                         command='python main.py --mode=study') == md
  assert not trained
  changed = study.variant_config(config, {}, 0)
  changed.train.num_epochs = 2
  changed.seed = 0
  with pytest.raises(loso.RunError, match='num_epochs'):
    study.run_study('smoke', changed, workdir, seeds=1)
  assert not trained
