"""Every dataset config's ``:smoke`` data prepares from the fixtures (the released layouts), loads,
and trains: one epoch of its LOSO, as ``python main.py --config=configs/<dataset>.py:smoke`` does."""

import importlib

import pytest
import tensorflow_datasets as tfds

from mpt_jax import input_pipeline
from mpt_jax import loso
from tfds_builders import fake_releases
from tfds_builders import prepare

tfds.disable_progress_bar()


def _casme2(root):
  return fake_releases.write_casme2(root, sheet_name='CASME2-coding-20190701.xlsx')


def _composite(root):
  fake_releases.write_casme2(root)
  fake_releases.write_samm(root)
  fake_releases.write_smic(root)
  return root


WRITERS = {
    'casme2': _casme2,
    'samm': fake_releases.write_samm,
    'smic': fake_releases.write_smic,
    'casme3': fake_releases.write_casme3,
    'composite': _composite,
    'synthetic': None,  # generated, no manual_dir
}


@pytest.mark.slow
@pytest.mark.parametrize('name', sorted(WRITERS))
def test_smoke_config_prepares_loads_and_trains_from_fixtures(tmp_path, name):
  config = importlib.import_module(f'configs.{name}').get_config('smoke')
  write = WRITERS[name]
  with config.unlocked():
    config.data.data_dir = str(tmp_path / 'tfds')
    config.data.manual_dir = write(str(tmp_path / 'manual')) if write else ''
  prepare.prepare(config.data)
  clips = input_pipeline.load(config)
  wanted = set(config.data.subjects)
  if wanted:
    assert set(clips.subjects.tolist()) == wanted
  assert len(clips.labels) > 0 and clips.labels.max() < config.data.num_classes
  assert clips.clips.shape[1:4] == (config.model.num_frames, config.model.image_size,
                                    config.model.image_size)
  with config.unlocked():
    config.train.num_epochs = 1
    # One device, as a user's smoke run on one GPU: the fixtures' smoke subjects hold as few as 2
    # clips, so a fold's training set can be a single clip, which two devices cannot split.
    config.train.num_devices = 1
  summary = loso.train_and_evaluate(config, str(tmp_path / 'run'), data=clips)
  result = summary['last_epoch_over_seeds']
  assert 0.0 <= result['accuracy']['mean'] <= 1.0 and 0.0 <= result['uf1']['mean'] <= 1.0
