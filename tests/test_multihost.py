"""Multi-host LOSO (``jax.distributed``): 2 local CPU processes give the results of 1 process.

Each process trains its own folds (fold i on process i % 2) on its own device, with gloo CPU
collectives for the one barrier; only process 0 writes the shared records (config, run info,
results, report). The processes are real ``jax.distributed`` processes on localhost; the
one-process run they are compared with is the same config in the test's own process, on one device.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers

pytestmark = pytest.mark.slow  # several processes, each a LOSO run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = ('config.json', 'run_info.json', 'results.json', 'report.md')


def _child(process_id: int, num_processes: int, port: int, data_dir: str, workdir: str,
           log: str) -> None:
  """One process of the run; records every file it writes into ``log``."""
  os.environ['XLA_FLAGS'] = f'--xla_force_host_platform_device_count=1 {helpers.FAST_COMPILE}'
  import main  # pylint: disable=g-import-not-at-top
  # As main.py starts: the builders handed to mpt_jax and the session's compilation cache, so the
  # processes reuse the programs the one-process run compiled in the test's own process (the same
  # shapes and compile options; JAX leaves the simulated device count out of the cache key).
  main.configure_jax(None)
  import jax  # pylint: disable=g-import-not-at-top
  if num_processes > 1:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=f'localhost:{port}',
                               num_processes=num_processes, process_id=process_id,
                               initialization_timeout=120)
  from mpt_jax import loso  # pylint: disable=g-import-not-at-top
  from mpt_jax import report  # pylint: disable=g-import-not-at-top
  from mpt_jax import workdir as wd  # pylint: disable=g-import-not-at-top
  written = []
  write_json = wd.write_json

  def recording_write_json(path, obj):
    written.append(os.path.relpath(path, workdir))
    return write_json(path, obj)

  write_report = report.write_report

  def recording_write_report(config, wdir, *args, **kwargs):
    written.append('report.md')
    return write_report(config, wdir, *args, **kwargs)

  wd.write_json = recording_write_json
  report.write_report = recording_write_report
  loso.train_and_evaluate(_config(data_dir), workdir)
  with open(log, 'w') as f:
    json.dump({'written': written, 'process_count': jax.process_count(),
               'devices': len(jax.devices())}, f)


def _config(data_dir: str):
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  config = synthetic.get_config('smoke')
  config.data.data_dir = data_dir
  config.train.num_epochs = 2
  config.train.folds_per_step = 3  # each process trains its folds together (auto: 1 on CPU)
  return config


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(n, data_dir, workdir, tmp_path):
  port = _free_port()
  env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)
  procs = [subprocess.Popen([sys.executable, '-m', 'tests.test_multihost', str(i), str(n),
                             str(port), data_dir,
                             workdir, str(tmp_path / f'log{n}_{i}.json')],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(n)]
  outs = []
  for p in procs:
    try:
      outs.append(p.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return [json.load(open(tmp_path / f'log{n}_{i}.json')) for i in range(n)]


def _gloo_available() -> bool:
  try:
    import jax  # pylint: disable=g-import-not-at-top
    jax.config.jax_cpu_collectives_implementation  # pylint: disable=pointless-statement
    return True
  except AttributeError:
    return False


@pytest.mark.skipif(not _gloo_available(),
                    reason='this jax has no gloo CPU collectives for jax.distributed on CPU')
def test_two_processes_give_the_results_of_one(tmp_path, smoke_data_dir):
  from mpt_jax import loso  # pylint: disable=g-import-not-at-top
  one = str(tmp_path / 'one')
  two = str(tmp_path / 'two')
  # One process (this one) on one device; it also writes the resampled cache the processes read,
  # and compiles the programs they find in the session's compilation cache.
  config = _config(smoke_data_dir)
  config.train.num_devices = 1
  loso.train_and_evaluate(config, one)
  logs = _launch(2, smoke_data_dir, two, tmp_path)
  assert [l['process_count'] for l in logs] == [2, 2] and logs[0]['devices'] == 2
  # Process 0 trains folds p01 and p03, process 1 fold p02; each writes only its folds' records.
  assert set(SHARED) <= set(logs[0]['written']), logs[0]['written']
  assert not set(SHARED) & set(logs[1]['written']), logs[1]['written']
  own = {1: {os.path.join('seed_0', 'fold_p02', 'history.json'),
             os.path.join('seed_0', 'fold_p02', 'result.json')}}
  assert set(logs[1]['written']) == own[1], logs[1]['written']
  assert not own[1] & set(logs[0]['written'])
  assert os.path.isdir(os.path.join(two, 'seed_0', 'fold_p02', 'checkpoints', '2'))
  assert not os.path.exists(os.path.join(two, 'lock'))
  r1 = json.load(open(os.path.join(one, 'results.json')))
  r2 = json.load(open(os.path.join(two, 'results.json')))
  assert r1['seeds']['0']['folds'] == r2['seeds']['0']['folds']
  assert r1['seeds']['0']['last_epoch'] == r2['seeds']['0']['last_epoch']
  for s in ('p01', 'p02', 'p03'):
    a = json.load(open(os.path.join(one, 'seed_0', f'fold_{s}', 'result.json')))
    b = json.load(open(os.path.join(two, 'seed_0', f'fold_{s}', 'result.json')))
    np.testing.assert_allclose(a['history']['train_loss'], b['history']['train_loss'], rtol=1e-5)
    np.testing.assert_allclose(a['probabilities'], b['probabilities'], atol=2e-5)


if __name__ == '__main__':
  _child(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5],
         sys.argv[6])
