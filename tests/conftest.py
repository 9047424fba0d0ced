"""Test setup: two simulated CPU devices (for the pmap path) and the tests' fast-compile XLA option
(``helpers.FAST_COMPILE``) before JAX initialises, quiet TFDS, one persistent compilation cache,
and the session's shared smoke data and smoke run.

The compilation cache is a temporary folder of this test session (never the user's ``~/.cache``),
used by this process (as ``main.py`` sets it up) and by the ``main.py`` subprocesses, so a program
compiled by one test is reused by the next.
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

if 'MPT_JAX_CACHE' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='mpt_jax_test_cache_')
  os.environ['MPT_JAX_CACHE'] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)

# pylint: disable=g-import-not-at-top,wrong-import-position
from tests import helpers  # imports JAX, which reads XLA_FLAGS only when a backend starts

os.environ.setdefault('XLA_FLAGS', f'--xla_force_host_platform_device_count=2 {helpers.FAST_COMPILE}')

import pytest

import main

main.configure_jax(None)  # the compilation cache of $MPT_JAX_CACHE, in this process too


@pytest.fixture(scope='session')
def smoke_data_dir(tmp_path_factory):
  """The synthetic ``:smoke`` dataset (3 subjects x 5 classes x 2 clips), prepared once per session.

  Tests read it (and may add its resampled-clip cache); a test that changes it works on a copy.
  The folder name holds a space, as users' paths do.
  """
  return helpers.prepared_smoke_config(tmp_path_factory, 'smoke tfds').data.data_dir


@pytest.fixture(scope='session')
def smoke_run(smoke_data_dir, tmp_path_factory):
  """One finished smoke run, shared by every test that only reads it: ``(config, workdir, summary)``.

  Trained with :func:`helpers.smoke_run_config` (3 folds at once, 2 epochs, oracle epoch on). A
  test that changes a run works on a copy (``shutil.copytree``).
  """
  from mpt_jax import loso
  workdir = str(tmp_path_factory.mktemp('smoke run') / 'finished run')
  config = helpers.smoke_run_config(smoke_data_dir)
  summary = loso.train_and_evaluate(config, workdir)
  return config, workdir, summary
