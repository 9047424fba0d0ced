"""Every dataset config's ``:smoke`` data prepares from the fixtures and loads."""

import importlib

import pytest
import tensorflow_datasets as tfds

from mpt_jax import input_pipeline
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


@pytest.mark.parametrize('name', sorted(WRITERS))
def test_smoke_config_loads_from_fixtures(tmp_path, name):
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
