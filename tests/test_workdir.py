"""The run layout's config record: a saved config is compared key by key, keys added later included."""

import json

import pytest

from configs import synthetic
from mpt_jax import workdir as wd


def test_a_run_recorded_before_a_key_existed_compares_as_its_old_value(tmp_path):
  config = synthetic.get_config('smoke')
  saved = json.loads(config.to_json())
  del saved['model']['tokenizer_grid']  # a run recorded before the key was added
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  assert wd.compare_config(config, str(tmp_path))  # 1, the code's value then: the same run
  config.model.tokenizer_grid = 4
  with pytest.raises(wd.RunError, match='model.tokenizer_grid: workdir 1 vs now 4'):
    wd.compare_config(config, str(tmp_path))
  # A key the saved config holds is compared as it is.
  config.model.tokenizer_grid = 1
  saved['model']['tokenizer_grid'] = 2
  (tmp_path / 'config.json').write_text(json.dumps(saved))
  with pytest.raises(wd.RunError, match='model.tokenizer_grid: workdir 2 vs now 1'):
    wd.compare_config(config, str(tmp_path))


def test_a_refusal_names_every_differing_key(tmp_path):
  (tmp_path / 'config.json').write_text(synthetic.get_config('smoke').to_json())
  with pytest.raises(wd.RunError) as e:
    wd.compare_config(synthetic.get_config(), str(tmp_path))  # the full demo: 15 keys differ
  message = str(e.value)
  assert message.count(' vs now ') == 8 and '; and 7 more: ' in message
  named = message.split('more: ', 1)[1]
  for key in ('model.vit', 'train.num_epochs'):  # past the first 8, still named
    assert key in named
