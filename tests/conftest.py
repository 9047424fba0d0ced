"""Test setup: two simulated CPU devices (for the pmap path) before JAX initialises, quiet TFDS.

``main.py`` subprocesses share one persistent compilation cache in a temporary folder of this test
session (never the user's ``~/.cache``), so a program compiled by one test is reused by the next.
"""

import atexit
import os
import shutil
import sys
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=2')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

if 'MPT_JAX_CACHE' not in os.environ:
  _cache = tempfile.mkdtemp(prefix='mpt_jax_test_cache_')
  os.environ['MPT_JAX_CACHE'] = _cache
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
