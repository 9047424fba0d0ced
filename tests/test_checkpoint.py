"""Fold checkpoints: only trainable leaves, exact round trip, a save cut short by a crash."""

import os

import jax
import numpy as np
import pytest
from flax import traverse_util

from mpt_jax import partition
from mpt_jax import train as train_lib
from mpt_jax.models import mpt
from tests import helpers


def _state(seed=0):
  config = helpers.tiny_config()
  model = mpt.build_model(config.model, 5)
  params = model.init(jax.random.PRNGKey(seed), helpers.random_clips())['params']
  tx = partition.make_optimizer(config.train, params, 'mpt', 1)
  trainable, frozen = partition.split_params(params, 'mpt')
  return train_lib.create_state(trainable, frozen, tx)


@pytest.mark.slow
def test_round_trip_and_interrupted_save(tmp_path):
  state = _state()
  # Make the optimizer state non-trivial.
  state = state.replace(
      opt_state=jax.tree.map(lambda x: (x + 1.5).astype(x.dtype), state.opt_state),
      step=state.step + 7)
  directory = str(tmp_path / 'ckpt')
  ckpt = train_lib.FoldCheckpointer(directory)
  ckpt.save(2, state, 'mpt')
  ckpt.close()
  # A crash during the save of epoch 3 leaves an Orbax temporary folder behind.
  tmp = os.path.join(directory, '3.orbax-checkpoint-tmp-1700000000')
  os.makedirs(tmp)
  open(os.path.join(tmp, 'partial'), 'w').write('half written')
  ckpt = train_lib.FoldCheckpointer(directory)
  assert ckpt.latest_epoch() == 2
  epoch, restored = ckpt.restore(_state(), 'mpt')  # template: fresh state, other values
  assert epoch == 2 and int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(restored.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  fa = traverse_util.flatten_dict(state.params, sep='/')
  fb = traverse_util.flatten_dict(restored.params, sep='/')
  for k in fa:
    np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)
  ckpt.save(3, restored, 'mpt')
  # The leftover temporary folder is cleaned up (asynchronously, at the latest by this save).
  assert ckpt.latest_epoch() == 3 and sorted(os.listdir(directory)) == ['3']
  ckpt.close()


@pytest.mark.slow
def test_a_folds_slice_of_the_stacked_state_restores_alone(tmp_path):
  """Training saves each fold's slice of the fold-stacked trainable state; evaluation and
  prediction restore one fold into a full-model state (frozen leaves from the init)."""
  config = helpers.tiny_config()
  model = mpt.build_model(config.model, 5)
  params = model.init(jax.random.PRNGKey(0), helpers.random_clips())['params']
  trainable, frozen = partition.split_params(params, 'mpt')
  tx_trainable = partition.make_optimizer(
      config.train, traverse_util.unflatten_dict(trainable, sep='/'), 'mpt', 1)
  rng = np.random.default_rng(0)
  folds = []
  for f in range(3):  # every leaf different per fold
    s = train_lib.trainable_state(trainable, tx_trainable)
    folds.append(jax.tree.map(
        lambda x, f=f: np.asarray(x) + rng.random(np.shape(x)).astype(np.asarray(x).dtype) * (f + 1)
        if np.issubdtype(np.asarray(x).dtype, np.floating) else np.asarray(x) + f + 1, s))
  stacked = train_lib.stack_states(folds)
  ckpt = train_lib.FoldCheckpointer(str(tmp_path / 'fold1'))
  ckpt.save(4, train_lib.fold_slice(stacked, 1), 'mpt')
  ckpt.close()
  tx_full = partition.make_optimizer(config.train, params, 'mpt', 1)
  ckpt = train_lib.FoldCheckpointer(str(tmp_path / 'fold1'), read_only=True)
  epoch, restored = ckpt.restore(train_lib.create_state(trainable, frozen, tx_full), 'mpt')
  ckpt.close()
  assert epoch == 4 and int(restored.step) == int(folds[1].step) == 2
  flat = traverse_util.flatten_dict(restored.params, sep='/')
  want = traverse_util.flatten_dict(folds[1].params, sep='/')
  for k, v in frozen.items():
    np.testing.assert_array_equal(np.asarray(flat[k]), np.asarray(v), err_msg=k)
  for k, v in want.items():
    np.testing.assert_array_equal(np.asarray(flat[k]), v, err_msg=k)
  for a, b in zip(jax.tree.leaves(restored.opt_state), jax.tree.leaves(folds[1].opt_state)):
    np.testing.assert_array_equal(np.asarray(a), b)
  # And back into a trainable-only state (a resumed fold).
  ckpt = train_lib.FoldCheckpointer(str(tmp_path / 'fold1'))
  _, again = ckpt.restore(train_lib.trainable_state(trainable, tx_trainable), 'mpt')
  ckpt.close()
  for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(folds[1])):
    np.testing.assert_array_equal(np.asarray(a), b)
