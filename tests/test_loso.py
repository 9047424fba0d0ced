"""End to end on the synthetic :smoke config: train, kill -9, resume, evaluate, predict; pmap."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import synthetic
from mpt_jax import evaluate
from mpt_jax import fold_groups
from mpt_jax import input_pipeline
from mpt_jax import loso
from mpt_jax import report as report_lib
from mpt_jax import predict
from mpt_jax import run_plan
from tests import helpers

pytestmark = pytest.mark.slow  # LOSO runs end to end

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


smoke_config = helpers.smoke_run_config


@pytest.fixture(name='data_dir')
def data_dir_fixture(smoke_data_dir):
  return smoke_data_dir


@pytest.fixture(name='finished_run')
def finished_run_fixture(smoke_run):
  return smoke_run


def _main(*args, timeout=600):
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args], capture_output=True,
                        text=True, timeout=timeout, cwd=REPO, env=env)


def test_run_writes_complete_record(finished_run):
  config, workdir, summary = finished_run
  for name in ('config.json', 'run_info.json', 'results.json', 'report.md',
               'figures/confusion_matrix.png', 'figures/per_class_accuracy.png',
               'figures/training_curves.png', 'figures/motion_examples.png'):
    assert os.path.exists(os.path.join(workdir, name)), name
  seed = summary['seeds']['0']
  assert [f['subject'] for f in seed['folds']] == ['p01', 'p02', 'p03']
  assert sum(f['n'] for f in seed['folds']) == 30
  labels = [l for f in seed['folds'] for l in f['labels']]
  preds = [p for f in seed['folds'] for p in f['predictions']]
  acc = float(np.mean(np.asarray(labels) == np.asarray(preds)))
  assert seed['last_epoch']['accuracy'] == pytest.approx(acc)
  assert 'ORACLE' in seed['oracle_best_epoch']['note']
  assert seed['oracle_best_epoch']['accuracy'] >= seed['last_epoch']['accuracy'] - 1e-9
  report = open(os.path.join(workdir, 'report.md')).read()
  assert 'last epoch' in report and 'ORACLE' in report
  # The report opens with what produced it; one seed: no '±' note.
  head = report.split('\n\n')[1]
  for line in ('| dataset | synthetic_me, builder config `small` |', '| clips, subjects | 30, 3 |',
               '| backbone | tiny (mpt) |', '| weights | none (random initialisation) |',
               f'| epochs | {config.train.num_epochs} |', '| seed | 0 |'):
    assert line in head, (line, head)
  assert re.search(r'\| mpt_jax commit \| ([0-9a-f]{12}(\+dirty)?|unknown) \|', head)
  assert re.search(r'\| date \| 20\d\d-\d\d-\d\d \d\d:\d\d UTC \|', head)
  assert '±' not in report and '![motion](figures/motion_examples.png)' in report
  # Only trainable parameters are checkpointed (no backbone keys in the checkpoint).
  ckpt_files = []
  for root, _, files in os.walk(os.path.join(workdir, 'seed_0', 'fold_p01', 'checkpoints')):
    ckpt_files += files
  meta = [f for f in ckpt_files if f.endswith('_METADATA') or f == '_METADATA']
  assert meta
  text = ''.join(open(os.path.join(r, f), errors='ignore').read()
                 for r, _, fs in os.walk(os.path.join(workdir, 'seed_0', 'fold_p01', 'checkpoints'))
                 for f in fs if 'METADATA' in f)
  assert 'adapter' in text and 'MlpBlock_3' not in text and 'posembed_input' not in text


def test_same_config_is_deterministic_and_finished_folds_are_kept(finished_run, data_dir, tmp_path):
  config, workdir, summary = finished_run
  mtime = os.path.getmtime(os.path.join(workdir, 'seed_0', 'fold_p02', 'result.json'))
  again = loso.train_and_evaluate(config, workdir)  # every fold finished: nothing retrains
  assert os.path.getmtime(os.path.join(workdir, 'seed_0', 'fold_p02', 'result.json')) == mtime
  assert again['seeds'] == summary['seeds']
  fresh = loso.train_and_evaluate(smoke_config(data_dir), str(tmp_path / 'second'))
  assert fresh['seeds'] == summary['seeds']  # same config and seed: identical metrics


def test_eval_mode_recomputes_identical_metrics(finished_run):
  config, workdir, summary = finished_run
  ev = evaluate.evaluate(config, workdir)
  assert ev['identical_to_training_run'] is True
  assert ev['seeds']['0']['last_epoch'] == summary['seeds']['0']['last_epoch']
  assert ev['seeds']['0']['oracle_best_epoch'] == summary['seeds']['0']['oracle_best_epoch']


def test_kill_9_during_training_then_resume_gives_same_metrics(finished_run, data_dir, tmp_path):
  _, _, summary = finished_run
  workdir = str(tmp_path / 'killed')
  args = ['--config=configs/synthetic.py:smoke', f'--workdir={workdir}',
          f'--config.data.data_dir={data_dir}', *helpers.SMOKE_RUN_FLAGS,
          '--config.train.checkpoint_min_interval_s=0']
  proc = subprocess.Popen([sys.executable, os.path.join(REPO, 'main.py'), *args], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  # Kill as soon as the second fold has a checkpoint (mid-fold, mid-run).
  target = os.path.join(workdir, 'seed_0', 'fold_p02', 'checkpoints')
  deadline = time.time() + 300
  while time.time() < deadline and proc.poll() is None:
    if os.path.isdir(target) and any(d.isdigit() for d in os.listdir(target)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  done = _main(*args)
  assert done.returncode == 0, done.stderr[-2000:]
  resumed = json.load(open(os.path.join(workdir, 'results.json')))
  assert resumed['seeds'] == summary['seeds']


def test_workdir_with_other_config_is_refused(finished_run, data_dir):
  _, workdir, _ = finished_run
  config = smoke_config(data_dir, learning_rate=1e-3)
  with pytest.raises(loso.RunError, match='train.learning_rate'):
    loso.train_and_evaluate(config, workdir)


def test_predict_on_frame_folder_and_video(finished_run, tmp_path):
  _, workdir, _ = finished_run
  from PIL import Image  # pylint: disable=g-import-not-at-top
  import cv2  # pylint: disable=g-import-not-at-top
  folder = tmp_path / 'clip'
  folder.mkdir()
  rng = np.random.default_rng(0)
  frames = [(rng.random((70, 60, 3)) * 255).astype(np.uint8) for _ in range(12)]
  for i, f in enumerate(frames):
    Image.fromarray(f).save(folder / f'img{i + 8}.png')  # img8..img19: natural order matters
  out = predict.predict(workdir, str(folder))
  assert out['folds'] == 3 and abs(sum(out['probabilities'].values()) - 1) < 1e-4
  assert out['prediction'] in out['probabilities']
  video = str(tmp_path / 'clip.avi')
  writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*'MJPG'), 30, (60, 70))
  for f in frames:
    writer.write(cv2.cvtColor(f, cv2.COLOR_RGB2BGR))
  writer.release()
  out_v = predict.predict(workdir, video, onset=2, offset=9)
  assert out_v['folds'] == 3
  with pytest.raises(predict.PredictError, match='outside the clip'):
    predict.predict(workdir, str(folder), onset=5, offset=40)
  with pytest.raises(predict.PredictError, match='No face'):
    predict.predict(workdir, str(folder), crop_face=True)


def test_subject_with_one_sample_is_a_valid_fold(data_dir, tmp_path):
  config = smoke_config(data_dir, num_epochs=1)
  data = input_pipeline.load(config)
  keep = (data.subjects != 'p03') | (np.arange(len(data)) == np.nonzero(data.subjects == 'p03')[0][0])
  small = data.subset(keep)
  summary = loso.train_and_evaluate(config, str(tmp_path / 'one'), data=small)
  folds = {f['subject']: f['n'] for f in summary['seeds']['0']['folds']}
  assert folds == {'p01': 10, 'p02': 10, 'p03': 1}
  one = data.subset(data.subjects == 'p01')
  with pytest.raises(loso.RunError, match='at least 2 subjects'):
    loso.train_and_evaluate(config, str(tmp_path / 'single'), data=one)


def test_step_compiles_once_per_run_not_per_fold(data_dir, tmp_path, monkeypatch):
  events = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda name, *_args, **_kw: events.append(name) if 'backend_compile' in name else None)
  per_group = []
  original = fold_groups.train_group

  def counting_train_group(*args, **kwargs):
    before = len(events)
    out = original(*args, **kwargs)
    per_group.append(len(events) - before)
    return out

  monkeypatch.setattr(fold_groups, 'train_group', counting_train_group)
  # One fold per step (fresh functions through the learning rate): 3 groups of one fold.
  config = smoke_config(data_dir, num_epochs=2, learning_rate=2e-4, folds_per_step=1)
  loso.train_and_evaluate(config, str(tmp_path / 'compile'))
  assert len(per_group) == 3
  assert per_group[0] > 0 and per_group[1:] == [0, 0], per_group  # later folds reuse the step


def test_several_seeds_report_mean_and_std(data_dir, tmp_path):
  config = smoke_config(data_dir, num_epochs=1)
  config.num_seeds = 2
  config.data.subjects = ('p01', 'p02')
  summary = loso.train_and_evaluate(config, str(tmp_path / 'seeds'))
  assert sorted(summary['seeds']) == ['0', '1']
  accs = [summary['seeds'][s]['last_epoch']['accuracy'] for s in ('0', '1')]
  over = summary['last_epoch_over_seeds']['accuracy']
  assert over['n'] == 2 and over['mean'] == pytest.approx(np.mean(accs))
  assert over['std'] == pytest.approx(np.std(accs))
  assert os.path.exists(tmp_path / 'seeds' / 'seed_1' / 'fold_p02' / 'result.json')
  report = open(tmp_path / 'seeds' / 'report.md').read()
  assert '±' in report and report_lib.SEEDS_NOTE in report
  assert '| epochs | 1 |' in report and '| seeds | 0, 1 |' in report


def test_composite_style_results_are_split_by_source_dataset():
  config = synthetic.get_config('smoke')
  results = [
      {'subject': 'sub01', 'n': 2, 'labels': [0, 1], 'predictions': [0, 0],
       'clips': ['casme2/sub01/EP01', 'casme2/sub01/EP02'], 'per_epoch_predictions': []},
      {'subject': 's1', 'n': 3, 'labels': [2, 2, 1], 'predictions': [2, 1, 1],
       'clips': ['smic/s1/a', 'smic/s1/b', 'smic/s1/c'], 'per_epoch_predictions': []},
  ]
  config.train.oracle_best_epoch = False
  summary = loso.summarise(config, ['negative', 'positive', 'surprise'], {0: results})
  per = summary['seeds']['0']['last_epoch_per_dataset']
  assert per['casme2']['accuracy'] == 0.5 and per['casme2']['n'] == 2
  assert per['smic']['accuracy'] == pytest.approx(2 / 3)
  assert summary['seeds']['0']['last_epoch']['accuracy'] == pytest.approx(3 / 5)
  # Over seeds, the per-dataset metrics get a mean and a (ddof 0) std too.
  other = [dict(r, predictions=list(r['labels'])) for r in results]  # seed 1: all correct
  summary = loso.summarise(config, ['negative', 'positive', 'surprise'], {0: results, 1: other})
  over = summary['last_epoch_per_dataset_over_seeds']
  assert over['casme2']['accuracy'] == pytest.approx(
      {'mean': 0.75, 'std': np.std([0.5, 1.0]), 'n': 2, 'ddof': 0})
  assert over['smic']['uar']['mean'] == pytest.approx(np.mean(
      [summary['seeds'][s]['last_epoch_per_dataset']['smic']['uar'] for s in ('0', '1')]))


def test_geometric_augmentation_runs_in_the_loop(data_dir, tmp_path):
  config = smoke_config(data_dir, num_epochs=1)
  config.data.max_rotation_deg = 5.0
  config.data.min_crop_scale = 0.8
  config.data.subjects = ('p01', 'p02')
  summary = loso.train_and_evaluate(config, str(tmp_path / 'aug'))
  assert len(summary['seeds']['0']['folds']) == 2


def test_smoke_batch_fits_the_smallest_training_fold():
  """A :smoke config on few-clip subjects lowers its batch to fit; other configs refuse."""
  n = 5  # holding out s1 (3 clips) leaves 2 training clips
  subjects = np.asarray(['s1', 's1', 's1', 's2', 's2'])
  data = input_pipeline.ClipSet(np.zeros((n, 8, 32, 32, 3), np.float16), np.arange(n) % 5,
                                np.zeros(n, np.int32), subjects, subjects, tuple('abcde'))
  config = synthetic.get_config('smoke')
  config.train.folds_per_step = 1
  config.train.num_devices = 1
  assert config.train.fit_batch_to_data and config.train.batch_size == 4
  plan = run_plan.make_plan(config, data)
  assert plan.config.train.batch_size == 2 and config.train.batch_size == 4  # the caller's is kept
  config.train.fit_batch_to_data = False
  with pytest.raises(loso.RunError, match='larger than the smallest training fold'):
    run_plan.make_plan(config, data)
