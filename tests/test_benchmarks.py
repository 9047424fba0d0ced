"""Smoke tests of the benchmark scripts, the TF-free runner path, the compile cache and XLA flags.

The scripts run at tiny sizes on CPU; their numbers are not checked, only that they run, print one
JSON line with the expected keys and refuse what cannot be measured with one clear line.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mpt_jax import metric_writers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIDDEN = 'tensorflow,tensorflow_datasets,clu'


def _run(argv, timeout=600, env=None):
  return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, **(env or {})}, check=False)


def _json_line(stdout):
  lines = [l for l in stdout.splitlines() if l.strip()]
  assert len(lines) == 1, stdout
  return json.loads(lines[0])


# ------------------------------------------------------------------ the runner without clu / TF
def _scalars_in_events(logdir):
  """(step, tag, value) of every scalar in ``logdir``'s event files, read by TensorBoard itself."""
  from tensorboard.backend.event_processing import event_file_loader  # pylint: disable=g-import-not-at-top
  out = []
  for name in os.listdir(logdir):
    if name.startswith('events.out.tfevents'):
      for event in event_file_loader.LegacyEventFileLoader(os.path.join(logdir, name)).Load():
        for v in event.summary.value:
          out.append((event.step, v.tag, round(v.simple_value, 6)))
  return out


def test_metric_writer_without_clu_writes_tensorboard_scalars(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'clu', None)  # `from clu import ...` raises ImportError
  writer = metric_writers.create_writer(str(tmp_path))
  writer.write_scalars(1, {'train_loss': 0.25, 'test_accuracy': 0.5})
  writer.write_scalars(2, {'train_loss': 0.125})
  writer.flush()
  writer.close()
  assert sorted(_scalars_in_events(str(tmp_path))) == [
      (1, 'test_accuracy', 0.5), (1, 'train_loss', 0.25), (2, 'train_loss', 0.125)]


def test_metric_writer_without_clu_or_tensorboard_writes_json_lines(tmp_path, monkeypatch):
  for name in ('clu', 'tensorboard', 'tensorboard.compat.proto',
               'tensorboard.summary.writer'):
    monkeypatch.setitem(sys.modules, name, None)
  writer = metric_writers.create_writer(str(tmp_path))
  writer.write_scalars(3, {'train_loss': 0.5})
  writer.close()
  with open(tmp_path / 'metrics.jsonl') as f:
    assert [json.loads(l) for l in f] == [{'step': 3, 'train_loss': 0.5}]
  assert not [f for f in os.listdir(tmp_path) if f.startswith('events.')]


def test_just_logging_writer_without_clu_writes_no_file(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, 'clu', None)
  writer = metric_writers.create_writer(str(tmp_path), just_logging=True)
  writer.write_scalars(1, {'train_loss': 0.25})
  writer.close()
  assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_plain_clipset_subject_order_needs_no_tfds():
  """``ClipSet.subject_list`` must not need TensorFlow: the GPU image has none."""
  code = textwrap.dedent(f"""
      from benchmarks import common
      common.hide_modules({HIDDEN!r}.split(','))
      import numpy as np
      from mpt_jax import input_pipeline
      n = np.asarray(['s10', 's2', 's1'])
      data = input_pipeline.ClipSet(np.zeros((3, 1, 1, 1, 3), np.float16), np.zeros(3, np.int32),
                                    np.zeros(3, np.int32), n, n, ('a',))
      try:
        print(data.subject_list)
      except ImportError as e:
        print('IMPORT', e)
  """)
  proc = _run([sys.executable, '-c', code], timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == "['s1', 's2', 's10']"


# -------------------------------------------------------------------------------- bench_loso
@pytest.mark.slow
def test_bench_loso_runs_sequential_and_fold_parallel(tmp_path):
  """A tiny LOSO without TF/TFDS/clu, one fold after another and three at once, same results."""
  proc = _run([sys.executable, '-m', 'benchmarks.bench_loso', '--config=configs/synthetic.py:smoke',
               '--set=train.num_epochs=1', '--subjects=3', '--clips=9', '--folds_per_step=1,3',
               f'--without={HIDDEN}', f'--workdir_root={tmp_path}', '--check_same'])
  assert proc.returncode == 0, proc.stderr
  line = _json_line(proc.stdout)
  assert line['bench'] == 'loso'
  seq, par = line['variants']
  assert 'error' not in seq, seq
  for key in ('loso_s', 'report_s', 'train_s', 'train_clips', 'train_clips_per_s', 'compile_s',
              'compiles', 'peak_rss_mib', 'device_peak_mib', 'device'):
    assert key in seq, key
  assert seq['folds_per_step'] == 1 and seq['fold_count'] == 3
  assert seq['train_clips'] == 3 * 6  # 3 folds x 6 training clips x 1 epoch
  assert seq['compiles'] > 0 and 0 < seq['compile_s'] < seq['loso_s']
  assert 0 <= seq['report_s'] < seq['loso_s']
  assert line['check_same']['3']['same_predictions'], line['check_same']
  assert par['speedup_vs_sequential'] > 0
  assert not os.listdir(tmp_path)  # the variants' workdirs are removed


@pytest.mark.slow
def test_bench_epoch_loop_times_both_loops():
  proc = _run([sys.executable, '-m', 'benchmarks.bench_epoch_loop',
               '--config=configs/synthetic.py:smoke', '--subjects=3', '--clips=9', '--rounds=2'])
  assert proc.returncode == 0, proc.stderr[-2000:]
  line = _json_line(proc.stdout)
  assert line['bench'] == 'epoch_loop' and line['steps_per_epoch'] == 2  # 6 training clips, b4
  for loop in ('device', 'host'):
    assert len(line['epoch_s'][loop]) == 2 and all(t > 0 for t in line['epoch_s'][loop])
    assert line['first_call_s'][loop] > 0
  # The medians are printed to 1 ms, the ratio to 0.01: the ratio of the unrounded medians lies
  # within these bounds.
  d, h = line['epoch_s_median']['device'], line['epoch_s_median']['host']
  low, high = (d - 5e-4) / (h + 5e-4), (d + 5e-4) / max(h - 5e-4, 1e-9)
  assert low - 0.005 <= line['device_over_host'] <= high + 0.005, line


def test_bench_loso_check_same_compares_predictions_and_probabilities():
  from benchmarks import bench_loso  # pylint: disable=g-import-not-at-top
  a = {'seed_0/s1': {'predictions': [0, 1], 'probabilities': [[0.6, 0.4], [0.2, 0.8]],
                     'train_loss': [1.0, 0.5]}}
  b = json.loads(json.dumps(a))
  assert bench_loso.compare(a, b, 1e-4)['same_predictions']
  b['seed_0/s1']['probabilities'][1] = [0.2001, 0.7999]
  c = bench_loso.compare(a, b, 1e-5)
  assert c['same_predictions'] and not c['within_atol']
  assert c['max_prob_diff'] == pytest.approx(1e-4)
  b['seed_0/s1']['predictions'] = [1, 1]
  assert bench_loso.compare(a, b, 1e-3)['folds_with_other_predictions'] == ['seed_0/s1']


@pytest.mark.slow
def test_bench_loso_refuses_unknown_override_in_one_line():
  proc = _run([sys.executable, '-m', 'benchmarks.bench_loso',
               '--config=configs/synthetic.py:smoke', '--set=train.no_such_key=1'], timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == ("error: --set 'train.no_such_key=1': config has no key "
                                 "'train.no_such_key'")


# --------------------------------------------------------------------------------- gpu_check
@pytest.mark.slow
def test_gpu_check_tiny_prints_one_json_line_with_every_part(tmp_path):
  md = tmp_path / 'profile.md'
  # A generous budget: on a loaded 2-core machine no part may be skipped for time here.
  proc = _run(['bash', 'benchmarks/gpu_check.sh', '--tiny', '--budget_s=1200',
               f'--profile_md={md}'], env={'PYTHON': sys.executable})
  assert proc.returncode == 0, proc.stderr
  line = _json_line(proc.stdout)
  assert line['bench'] == 'gpu_check' and line['tiny'] and line['device'] == 'cpu:cpu'
  assert '--xla_gpu_deterministic_ops=true' in line['xla_flags']
  assert line['steps_part'] == 'ok'
  assert set(line['steps']) == {'float32', 'bfloat16'}
  for dtype in ('float32', 'bfloat16'):
    assert set(line['steps'][dtype]) == {'F1', 'F2'}
    for name, entry in line['steps'][dtype].items():
      assert entry['status'] == 'ok', entry
      assert entry['folds'] == int(name[1:]) and entry['loss_finite'] and entry['dtype'] == dtype
      assert entry['clips_per_s'] > 0 and entry['gflop_per_step'] > 0
      assert entry['mfu'] is None  # no peak for a CPU
      assert entry['attention'] == 'lean'  # the runner's choice on CPUs
      rows = entry['profile']['rows']
      assert 0 < len(rows) <= 15 and entry['profile']['total_ms'] > 0
      assert [r['ms'] for r in rows] == sorted((r['ms'] for r in rows), reverse=True)
  # Two folds at once do twice the work of one.
  f1, f2 = line['steps']['float32']['F1'], line['steps']['float32']['F2']
  assert f2['gflop_per_step'] == pytest.approx(2 * f1['gflop_per_step'], rel=0.05)
  assert line['bf16_over_f32']['F'] == 2 and line['bf16_over_f32']['ratio'] > 0
  loso = line['loso']
  assert 'error' not in loso, loso
  assert loso['fold_count'] == 3 and loso['train_s'] > 0 and loso['epochs'] == 1
  assert set(line['targets']) == {'loso_train_s_le_60', 'bf16_mfu_ge_0.40', 'bf16_over_f32_ge_1.8'}
  text = md.read_text()
  assert text.count('| kernel / op | ms | share |') == 4 and '### bfloat16, F2' in text


def test_peak_table():
  from benchmarks import gpu_check  # pylint: disable=g-import-not-at-top
  assert gpu_check.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.0
  assert gpu_check.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == 756.0
  assert gpu_check.peak_tflops('NVIDIA H200', 'float32') == 494.5
  assert gpu_check.peak_tflops('NVIDIA A100-SXM4-80GB', 'bfloat16') == 312.0
  assert gpu_check.peak_tflops('cpu', 'bfloat16') is None


# ------------------------------------------------------------------------ benchmarks/common.py
def test_profile_table_of_a_cpu_trace(tmp_path):
  """The CPU profiler's trace: XLA:CPU's operations (events with an ``hlo_op``) of the profiled
  calls, ranked by time; Python and runtime events are left out."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  f = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(), compiler_options={
      'xla_cpu_experimental_ynn_fusion_type': ''})
  x = jnp.ones((384, 384))
  jax.block_until_ready(f(x))
  table = common.profile(lambda: [jax.block_until_ready(f(x)) for _ in range(2)], str(tmp_path))
  assert table['ops'] >= 2 and table['total_ms'] > 0
  rows = table['rows']
  assert rows and all(r['calls'] >= 1 and r['ms'] >= 0 for r in rows)
  assert [r['ms'] for r in rows] == sorted((r['ms'] for r in rows), reverse=True)
  # Each row's ms is rounded to 1 us and its share to 1e-4: the sums agree within that rounding.
  rounding = len(rows) * (0.0005 / table['total_ms'] + 0.00005)
  assert sum(r['share'] for r in rows) == pytest.approx(
      sum(r['ms'] for r in rows) / table['total_ms'], abs=rounding + 1e-9)
  # The product is among the operations (which one ranks first is timing, noisy on a shared CPU).
  assert any(r['name'].startswith('dot') for r in rows), rows
  assert not any('PjitFunction' in r['name'] or r['name'].startswith('$') for r in rows)


def test_profile_table_keeps_gpu_kernels_only():
  """A GPU trace: the kernels are the device process's events; host events (which may name an
  hlo_op too) are left out; ``end:`` markers are no kernels."""
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  events = [
      {'ph': 'M', 'pid': 1, 'name': 'process_name', 'args': {'name': '/host:CPU'}},
      {'ph': 'M', 'pid': 7, 'name': 'process_name', 'args': {'name': '/device:GPU:0'}},
      {'ph': 'X', 'pid': 1, 'name': 'Thunk', 'dur': 900.0, 'args': {'hlo_op': 'fusion.1'}},
      {'ph': 'X', 'pid': 7, 'name': 'cutlass_gemm', 'dur': 3000.0, 'args': {'hlo_op': 'dot.1'}},
      {'ph': 'X', 'pid': 7, 'name': 'cutlass_gemm', 'dur': 1000.0, 'args': {'hlo_op': 'dot.1'}},
      {'ph': 'X', 'pid': 7, 'name': 'loop_fusion', 'dur': 1000.0, 'args': {}},
      {'ph': 'X', 'pid': 7, 'name': 'end: loop_fusion', 'dur': 1.0, 'args': {}},
      {'ph': 'i', 'pid': 7, 'name': 'marker'},
  ]
  table = common.profile_table(events, top=15)
  assert table == {'total_ms': 5.0, 'ops': 3, 'rows': [
      {'name': 'cutlass_gemm', 'hlo_op': 'dot.1', 'calls': 2, 'ms': 4.0, 'share': 0.8},
      {'name': 'loop_fusion', 'hlo_op': '', 'calls': 1, 'ms': 1.0, 'share': 0.2}]}
  assert common.profile_table(events, top=1)['rows'] == table['rows'][:1]
  md = common.markdown_table(table)
  assert '| `cutlass_gemm` | 4.000 | 80.0 % |' in md and '| all 3 ops | 5.000 | 100 % |' in md


def test_load_config_uses_ml_collections_overrides():
  from benchmarks import common  # pylint: disable=g-import-not-at-top
  config = common.load_config('configs/casme2.py:smoke', [
      'model.dtype=bfloat16', 'train.num_epochs=3', 'model.magnification.alpha=10',
      'data.hflip=false', 'model.attention=xla'])
  assert config.model.dtype == 'bfloat16' and config.train.num_epochs == 3
  assert config.model.magnification.alpha == 10.0 and isinstance(config.model.magnification.alpha,
                                                                 float)
  assert config.data.hflip is False and config.model.attention == 'xla'
  assert config.model.vit == 'tiny'  # the :smoke argument
  for bad, message in (('train.no_such_key=1', "config has no key 'train.no_such_key'"),
                       ('train.num_epochs=abc', 'train.num_epochs=abc'),
                       ('model.dtype', 'expected key=value')):
    with pytest.raises(common.BenchError, match=message) as e:
      common.load_config('configs/casme2.py', [bad])
    assert '\n' not in str(e.value)
  with pytest.raises(common.BenchError, match='no config file configs/nope.py'):
    common.load_config('configs/nope.py')


@pytest.mark.slow
def test_bench_model_times_the_runners_programs_for_each_variant():
  proc = _run([sys.executable, '-m', 'benchmarks.bench_model', '--config=configs/casme2.py:smoke',
               '--batches=2', '--steps=2', '--rounds=2', '--variant=lean:model.attention=lean',
               '--variant=xla:model.attention=xla'])
  assert proc.returncode == 0, proc.stderr
  line = _json_line(proc.stdout)
  assert line['bench'] == 'model' and set(line['product_gflop_per_s']) == {'float32', 'bfloat16'}
  row = line['batches']['2']
  assert set(row) == {'lean', 'xla'}
  for name, entry in row.items():
    assert entry['attention'] == name and entry['epoch_loop'] == 'host'  # the runner's on CPUs
    assert len(entry['step_ms_each']) == 2 and entry['step_ms'] > 0
    assert entry['train_clips_per_s'] > 0 and entry['eval_clips_per_s'] > 0
    assert entry['gflop_per_step'] > 0
  # The same model: the attention form changes no flop count by much.
  assert row['xla']['gflop_per_step'] == pytest.approx(row['lean']['gflop_per_step'], rel=0.05)


@pytest.mark.slow
def test_bench_vs_peer_times_the_runners_programs_without_the_peer():
  proc = _run([sys.executable, '-m', 'benchmarks.bench_vs_peer', '--no_peer', '--rounds=1',
               '--config=configs/casme2.py:smoke', '--tasks=infer_b8', '--repeats=2'])
  assert proc.returncode == 0, proc.stderr
  line = _json_line(proc.stdout)
  ours = line['infer_b8']['ours']
  assert ours['clips_per_s'] > 0 and ours['peak_rss_mib'] > 0 and len(ours['clips_per_s_each']) == 1
  assert ours['attention'] == 'lean' and 'peer' not in line['infer_b8']


def test_bench_vs_peer_refuses_a_missing_peer_in_one_line(tmp_path):
  proc = _run([sys.executable, '-m', 'benchmarks.bench_vs_peer', f'--peer_dir={tmp_path}'],
              timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines() == [
      f"error: --peer_dir='{tmp_path}' holds no bench_torch.py (or pass --no_peer)"]


# ------------------------------------------------------- main.py: compile cache and XLA flags
_MAIN_PROBE = textwrap.dedent("""
    import json, os, sys
    import jax.monitoring
    hits = []
    jax.monitoring.register_event_listener(
        lambda name, **kw: hits.append(name) if name.endswith('cache_hits') else None)
    import main
    from absl import app
    dump = sys.argv[1]
    main.DETERMINISTIC_GPU_FLAG += ' --xla_dump_to=' + dump  # a CPU-visible flag beside it

    def probe(mode):
      import jax, jax.numpy as jnp
      x = jnp.arange(256.0).reshape(16, 16)
      f = jax.jit(lambda a: jnp.tanh(a @ a.T).sum() + sum(jnp.sin(a * i).sum() for i in range(100)))
      jax.block_until_ready(f(x))
      print(json.dumps({'mode': mode, 'xla_flags': os.environ.get('XLA_FLAGS', ''),
                        'cache_dir': jax.config.jax_compilation_cache_dir,
                        'dumped': len(os.listdir(dump)) if os.path.isdir(dump) else 0,
                        'cache_hits': len(hits)}))

    main._run = probe
    app.run(main.main, flags_parser=main.parse_flags, argv=['main.py'] + sys.argv[2:])
""")


@pytest.mark.slow
def test_main_sets_xla_flags_and_compilation_cache_before_jax_starts(tmp_path):
  """XLA_FLAGS set by main() reach XLA; the second process finds the step in the cache."""
  cache = tmp_path / 'cache'
  outs = []
  for i in range(2):
    proc = _run([sys.executable, '-c', _MAIN_PROBE, str(tmp_path / f'dump{i}'),
                 '--config=configs/synthetic.py:smoke', f'--jax_cache_dir={cache}'],
                timeout=300, env={'XLA_FLAGS': '', 'MPT_JAX_CACHE': ''})
    assert proc.returncode == 0, proc.stderr
    outs.append(_json_line(proc.stdout))
  for out in outs:
    assert out['xla_flags'].startswith('--xla_gpu_deterministic_ops=true')
    assert out['dumped'] > 0  # the flags were read after main() set them
    assert out['cache_dir'] == str(cache)
  assert outs[0]['cache_hits'] == 0 and outs[1]['cache_hits'] >= 1
  assert os.listdir(cache)


@pytest.mark.slow
def test_main_cache_off_and_user_flags_kept(tmp_path):
  proc = _run([sys.executable, '-c', _MAIN_PROBE, str(tmp_path / 'dump'),
               '--config=configs/synthetic.py:smoke'],
              timeout=300, env={'XLA_FLAGS': '--xla_gpu_deterministic_ops=false',
                                'MPT_JAX_CACHE': 'off', 'HOME': str(tmp_path)})
  assert proc.returncode == 0, proc.stderr
  out = _json_line(proc.stdout)
  assert out['xla_flags'] == '--xla_gpu_deterministic_ops=false'  # the user's setting wins
  assert out['cache_dir'] is None
  assert not os.path.exists(tmp_path / '.cache')


def test_jax_cache_dir_resolution(monkeypatch):
  code = textwrap.dedent("""
      import json, os, main
      home = os.path.expanduser('~')
      print(json.dumps([
          main.jax_cache_dir(None, {}) == os.path.join(home, '.cache/mpt_jax/jax_cache'),
          main.jax_cache_dir(None, {'MPT_JAX_CACHE': '/x/y'}) == '/x/y',
          main.jax_cache_dir('/a', {'MPT_JAX_CACHE': '/x/y'}) == '/a',
          main.jax_cache_dir('', {}) is None,
          main.jax_cache_dir(None, {'MPT_JAX_CACHE': 'off'}) is None,
          main.deterministic_xla_flags('--a=1', True) == '--a=1 --xla_gpu_deterministic_ops=true',
          main.deterministic_xla_flags('--a=1', False) == '--a=1',
      ]))
  """)
  proc = _run([sys.executable, '-c', code], timeout=120)
  assert proc.returncode == 0, proc.stderr
  assert _json_line(proc.stdout) == [True] * 7
