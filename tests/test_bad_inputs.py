"""Every mistake a user can make on the command line: one line on stderr, exit code 2, no traceback,
and a workdir that is exactly as it was (checksum of every file and folder under it).

The table runs the command line in this process (``main.cli``, which raises ``SystemExit(2)``) on
the synthetic ``:smoke`` data, prepared once; eval and predict cases share one finished smoke run
(with a space in its path) and copies of it that are damaged in one way each. A few cases also run
``main.py`` in a subprocess (marked slow): the shell's argument splitting and what a real process
prints at exit. The dataset-folder cases (manual_dir, sheets, JPEGs) live with the builder tests.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import types

import numpy as np
import pytest

import main
from configs import synthetic
from mpt_jax import input_pipeline
from mpt_jax import loso
from mpt_jax import predict
from mpt_jax import workdir as wd
from tests import helpers

pytestmark = pytest.mark.slow  # a finished smoke run and its damaged copies

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = f'--config={REPO}/configs/synthetic.py:smoke'


def checksum(path):
  """sha256 over every folder and file (name and content) under ``path``; 'absent' if none."""
  if not os.path.exists(path):
    return 'absent'
  h = hashlib.sha256()
  for root, dirs, files in sorted(os.walk(path)):
    dirs.sort()
    h.update(('D' + os.path.relpath(root, path)).encode())
    for f in sorted(files):
      p = os.path.join(root, f)
      h.update(('F' + os.path.relpath(p, path)).encode())
      with open(p, 'rb') as fh:
        h.update(fh.read())
  return h.hexdigest()


@pytest.fixture
def run_main(capsys):
  """``run_main(*args)``: the command line in this process; its exit code, stdout and stderr."""

  def run(*args):
    capsys.readouterr()
    try:
      code = main.cli(['main.py', *args])
    except SystemExit as e:
      code = e.code
    out = capsys.readouterr()
    return types.SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

  return run


def run_main_process(*args, env=None):
  """``main.py`` in a subprocess, as a user runs it."""
  env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
  env['XLA_FLAGS'] = helpers.FAST_COMPILE  # one CPU device, as a user's run has
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args],
                        capture_output=True, text=True, timeout=300, cwd=REPO, env=env)


def smoke_config(data_dir):
  """The config of the session's finished smoke run (conftest ``smoke_run``) on ``data_dir``."""
  return helpers.smoke_run_config(data_dir)


@pytest.fixture(scope='module')
def ctx(tmp_path_factory, smoke_data_dir, smoke_run):
  """Prepared data, a finished run and damaged copies of it, pretrained files, input clips."""
  root = tmp_path_factory.mktemp('bad inputs')
  c = {'root': str(root)}
  c['data'] = smoke_data_dir
  c['finished'] = smoke_run[1]  # tests that change a run work on a copy of it
  c['empty_data'] = str(root / 'no data')

  def variant(name, damage):
    path = str(root / name)
    shutil.copytree(c['finished'], path)
    damage(path)
    return path

  ck3 = lambda p: wd.checkpoint_dir(p, 0, 'p03')  # pylint: disable=unnecessary-lambda-assignment
  c['half'] = variant('half', lambda p: os.remove(wd.result_path(p, 0, 'p03')))
  c['nothing_finished'] = variant('nothing', lambda p: [os.remove(wd.result_path(p, 0, s))
                                                        for s in ('p01', 'p02', 'p03')])
  c['no_info'] = variant('no_info', lambda p: os.remove(wd.run_info_path(p)))
  c['no_ckpt'] = variant('no_ckpt', lambda p: shutil.rmtree(ck3(p)))
  c['truncated'] = variant('truncated', lambda p: truncate_largest(ck3(p)))
  # A run whose data has moved away since training: eval/predict must take
  # --config.data.data_dir from the command line.
  c['moved'] = variant('moved', lambda p: _record_data_dir(p, str(root / 'tfds moved away')))
  c['empty_wd'] = str(root / 'empty workdir')
  os.makedirs(c['empty_wd'])
  c['file'] = str(root / 'a_file')
  open(c['file'], 'w').write('not a folder')
  # Pretrained files.
  _, _, flat = helpers.fake_vit_checkpoint()
  c['npz_dir'] = str(root / 'weights dir')
  os.makedirs(c['npz_dir'])
  c['npz_text'] = str(root / 'text.npz')
  open(c['npz_text'], 'w').write('hello, I am text\n')
  c['npz_empty'] = str(root / 'empty.npz')
  open(c['npz_empty'], 'w').close()
  c['npz_pickled'] = str(root / 'pickled.npz')
  np.savez(c['npz_pickled'], **{**flat, 'cls': np.array([{'a': 1}], dtype=object)})
  c['npz_shapes'] = str(root / 'shapes.npz')
  np.savez(c['npz_shapes'], **{**flat, 'cls': np.zeros((1, 1, 7), np.float32)})
  c['npz_keys'] = str(root / 'keys.npz')
  wrong = {k: v for k, v in flat.items() if k != 'cls'}
  np.savez(c['npz_keys'], **wrong, foo=np.zeros(3, np.float32))
  c['npz_nan'] = str(root / 'nan.npz')
  nan = dict(flat)
  nan['Transformer/encoder_norm/scale'] = np.full_like(flat['Transformer/encoder_norm/scale'],
                                                       np.nan)
  np.savez(c['npz_nan'], **nan)
  # Predict inputs.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  c['clip'] = str(root / 'my clip')
  os.makedirs(c['clip'])
  rng = np.random.default_rng(0)
  for i in range(10):
    Image.fromarray((rng.random((40, 40, 3)) * 255).astype(np.uint8)).save(
        os.path.join(c['clip'], f'img{i}.png'))
  c['empty_folder'] = str(root / 'empty folder')
  os.makedirs(c['empty_folder'])
  c['text_video'] = str(root / 'notes.mp4')
  open(c['text_video'], 'w').write('this is not a video\n')
  c['zero_video'] = str(root / 'zero.mp4')
  open(c['zero_video'], 'w').close()
  return c


def _record_data_dir(workdir, data_dir):
  """Rewrites the run's recorded ``data.data_dir`` (as if it had been trained there)."""
  record = wd.read_json(wd.config_path(workdir))
  record['data']['data_dir'] = data_dir
  wd.write_json(wd.config_path(workdir), record)


def truncate_largest(directory):
  """Cuts every array-data file of an Orbax checkpoint (the files under ``d/`` folders) in half.

  Every one, since which of OCDBT's data files a restore reads depends on how the save was merged.
  """
  files = [os.path.join(r, f) for r, _, fs in os.walk(directory) for f in fs
           if os.path.basename(r) == 'd']
  assert files, directory
  for path in files:
    with open(path, 'r+b') as f:
      f.truncate(os.path.getsize(path) // 2)


def train(c, workdir, *extra):
  return [SMOKE, f'--workdir={c[workdir] if workdir in c else workdir}',
          f'--config.data.data_dir={c["data"]}', '--config.train.num_epochs=1', *extra]


def new(c):
  return os.path.join(c['root'], 'new run')


def ev(c, workdir, *extra):
  return ['--mode=eval', f'--workdir={c[workdir] if workdir in c else workdir}',
          f'--config.data.data_dir={c["data"]}', *extra]


def pr(c, workdir, *extra):
  return ['--mode=predict', f'--workdir={c[workdir] if workdir in c else workdir}', *extra]


# (id, args(ctx), expected fragment of the one stderr line, the workdir whose checksum must not
# change: a ctx key, 'new' for a workdir that must not appear, or None).
CASES = [
    # Command line and config.
    ('missing --config', lambda c: [f'--workdir={new(c)}'], '--config is required', 'new'),
    ('config file missing', lambda c: ['--config=configs/nope.py', f'--workdir={new(c)}'],
     'no config file configs/nope.py', 'new'),
    ('misspelt config argument', lambda c: ['--config=configs/synthetic.py:smok',
                                            f'--workdir={new(c)}'], "['smok']", 'new'),
    ('misspelt key', lambda c: train(c, new(c), '--config.train.lr=0.1'), 'config.train.lr', 'new'),
    ('wrong value type', lambda c: train(c, new(c), '--config.train.batch_size=four'),
     'train.batch_size', 'new'),
    ('unknown mode', lambda c: ['--mode=fit', SMOKE], 'mode', None),
    ('stray argument', lambda c: train(c, new(c), '--config.model.pretrained_path=', '/w.npz'),
     "unexpected argument(s) ['/w.npz']", 'new'),
    ('empty pretrained_path', lambda c: [f'--config={REPO}/configs/samm.py', f'--workdir={new(c)}',
                                         f'--config.data.data_dir={c["empty_data"]}'],
     'config.model.pretrained_path is empty', 'new'),
    ('missing --workdir', lambda c: [SMOKE], '--workdir is required', None),
    ('num_epochs 0', lambda c: train(c, new(c), '--config.train.num_epochs=0'),
     'config.train.num_epochs is 0', 'new'),
    ('num_seeds 0', lambda c: train(c, new(c), '--config.num_seeds=0'), 'config.num_seeds is 0',
     'new'),
    ('batch_size 0', lambda c: train(c, new(c), '--config.train.batch_size=0'),
     'config.train.batch_size is 0', 'new'),
    ('eval_batch_size 0', lambda c: train(c, new(c), '--config.train.eval_batch_size=0'),
     'config.train.eval_batch_size is 0', 'new'),
    ('unknown optimizer', lambda c: train(c, new(c), '--config.train.optimizer=adamx'),
     "config.train.optimizer is 'adamx'", 'new'),
    ('unknown strategy', lambda c: train(c, new(c), '--config.model.training_strategy=lora'),
     "config.model.training_strategy is 'lora'", 'new'),
    ('scratch with a pretrained file', lambda c: train(
        c, new(c), '--config.model.training_strategy=scratch',
        f'--config.model.pretrained_path={c["npz_nan"]}'), 'training_strategy scratch', 'new'),
    ('batch larger than the data', lambda c: train(c, new(c), '--config.train.batch_size=64',
                                                   '--config.train.fit_batch_to_data=False'),
     'batch_size 64 is larger', 'new'),
    ('unprepared dataset', lambda c: [f'--config={REPO}/configs/samm.py:smoke', f'--workdir={new(c)}',
                                      f'--config.data.data_dir={c["empty_data"]}'],
     'Prepare it first: python main.py --mode=prepare', 'new'),
    # Pretrained files.
    ('pretrained missing, path with spaces', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["root"]}/my weights/ViT-B_16.npz'),
     'my weights/ViT-B_16.npz', 'new'),
    ('pretrained a directory', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["npz_dir"]}'), 'is a folder', 'new'),
    ('pretrained a text file', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["npz_text"]}'),
     'not an .npz file', 'new'),
    ('pretrained zero bytes', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["npz_empty"]}'), 'empty file', 'new'),
    ('pretrained pickled', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["npz_pickled"]}'), 'pickled', 'new'),
    ('pretrained wrong shapes', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["npz_shapes"]}'), 'mis-shaped', 'new'),
    ('pretrained wrong keys', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["npz_keys"]}'),
     "Missing: ['cls']; unexpected: ['foo']", 'new'),
    ('pretrained NaN', lambda c: train(
        c, new(c), f'--config.model.pretrained_path={c["npz_nan"]}'),
     'key Transformer/encoder_norm/scale holds 32 NaN or infinite', 'new'),
    # Workdirs.
    ('workdir is a file', lambda c: train(c, 'file'), 'is a file, not a folder', 'file'),
    ('workdir under a file', lambda c: train(c, os.path.join(c['file'], 'run')),
     'which is a file', 'file'),
    ('workdir not writable', lambda c: train(c, '/sys/mpt_jax_run'), 'Cannot create', None),
    ('workdir made with another config', lambda c: train(
        c, 'finished', '--config.train.learning_rate=0.001'), 'train.learning_rate', 'finished'),
    ('eval on a missing workdir', lambda c: ev(c, new(c)), 'does not exist', 'new'),
    ('eval on an empty workdir', lambda c: ev(c, 'empty_wd'), 'holds no run', 'empty_wd'),
    ('eval on a half-finished workdir', lambda c: ev(c, 'half'), '2 of 3 folds', 'half'),
    ('eval without run_info.json', lambda c: ev(c, 'no_info'), 'run_info.json is missing',
     'no_info'),
    ('eval with deleted checkpoints', lambda c: ev(c, 'no_ckpt'),
     'Fold p03 (seed 0) cannot be evaluated: checkpoint folder', 'no_ckpt'),
    ('eval with a truncated checkpoint', lambda c: ev(c, 'truncated'),
     'Fold p03 (seed 0) cannot be evaluated: checkpoint', 'truncated'),
    ('eval with the data moved away', lambda c: ['--mode=eval', f'--workdir={c["moved"]}'],
     'is not prepared in', 'moved'),
    # Predict.
    ('predict without --input', lambda c: pr(c, 'finished'), '--input is required', 'finished'),
    ('predict on a missing workdir', lambda c: pr(c, new(c), f'--input={c["clip"]}'),
     'does not exist', 'new'),
    ('predict with nothing finished', lambda c: pr(c, 'nothing_finished', f'--input={c["clip"]}'),
     'no fold has finished training yet (0 of 3)', 'nothing_finished'),
    ('predict with a truncated checkpoint', lambda c: pr(c, 'truncated', f'--input={c["clip"]}'),
     'Fold p03 (seed 0) cannot be used for prediction', 'truncated'),
    ('predict on a missing input', lambda c: pr(c, 'finished', f'--input={c["root"]}/nope.mp4'),
     'no such file or folder', 'finished'),
    ('predict on an empty folder', lambda c: pr(c, 'finished', f'--input={c["empty_folder"]}'),
     'no image files', 'finished'),
    ('predict on a text file', lambda c: pr(c, 'finished', f'--input={c["text_video"]}'),
     'not a video', 'finished'),
    ('predict on a zero-byte file', lambda c: pr(c, 'finished', f'--input={c["zero_video"]}'),
     'empty (0 bytes)', 'finished'),
    ('predict offset out of range', lambda c: pr(c, 'finished', f'--input={c["clip"]}',
                                                 '--onset=2', '--offset=40'),
     'outside the clip of 10 frames', 'finished'),
    ('predict onset after offset', lambda c: pr(c, 'finished', f'--input={c["clip"]}',
                                                '--onset=7', '--offset=3'),
     '--onset 7 is after --offset 3', 'finished'),
]


def assert_one_line_error(r, fragment):
  assert r.returncode == 2, (r.returncode, r.stderr[-3000:], r.stdout[-3000:])
  lines = r.stderr.strip().splitlines()
  assert len(lines) == 1, r.stderr[-3000:]
  assert lines[0].startswith('error: ') and fragment in lines[0], lines[0]
  assert 'Traceback' not in r.stderr + r.stdout


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_input(ctx, case, run_main):
  _, args, fragment, guarded = case
  path = new(ctx) if guarded == 'new' else ctx.get(guarded) if guarded else None
  before = checksum(path) if path else None
  r = run_main(*args(ctx))
  assert_one_line_error(r, fragment)
  if path:
    assert checksum(path) == before, f'{path} changed'


# As a user runs them: the shell splits the stray argument; a failed checkpoint read leaves Orbax
# threads that would print "Event loop is closed" tracebacks while the process exits.
PROCESS_CASES = ('stray argument', 'unknown mode', 'eval with a truncated checkpoint',
                 'predict with a truncated checkpoint')


@pytest.mark.slow
@pytest.mark.parametrize('case', [c for c in CASES if c[0] in PROCESS_CASES],
                         ids=[c[0] for c in CASES if c[0] in PROCESS_CASES])
def test_bad_input_in_a_process(ctx, case):
  _, args, fragment, guarded = case
  path = ctx.get(guarded) if guarded not in (None, 'new') else None
  before = checksum(path) if path else None
  assert_one_line_error(run_main_process(*args(ctx)), fragment)
  if path:
    assert checksum(path) == before, f'{path} changed'


def test_second_run_on_a_locked_workdir_is_refused(ctx, run_main):
  path = ctx['finished']
  before = checksum(path)
  with wd.Lock(path):
    r = run_main(SMOKE, f'--workdir={path}', f'--config.data.data_dir={ctx["data"]}',
                 *helpers.SMOKE_RUN_FLAGS)  # the run's own config: only the lock stops it
    e = run_main(*ev(ctx, 'finished'))
  assert_one_line_error(r, f'in use by another run (process {os.getpid()}')
  assert_one_line_error(e, f'in use by another run (process {os.getpid()}')
  assert checksum(path) == before  # released: no lock file left


def test_stale_lock_of_a_dead_process_is_taken_over(ctx, tmp_path):
  path = str(tmp_path / 'stale')
  shutil.copytree(ctx['finished'], path)
  dead = subprocess.Popen(['true'])
  dead.wait()
  open(os.path.join(path, wd.LOCK_NAME), 'w').write(f'{dead.pid} somehost\n')
  config = smoke_config(ctx['data'])
  loso.train_and_evaluate(config, path)
  assert not os.path.exists(os.path.join(path, wd.LOCK_NAME))


def test_non_finite_loss_stops_the_fold_and_writes_no_result(ctx, run_main):
  workdir = os.path.join(ctx['root'], 'nan run')
  r = run_main(*train(ctx, workdir, '--config.train.learning_rate=3e38',
                      '--config.train.num_epochs=2'))  # Adam steps of 3e38 overflow the logits
  assert_one_line_error(r, 'fold 1/3 (p01), epoch')
  assert 'not finite' in r.stderr
  assert not os.path.exists(wd.result_path(workdir, 0, 'p01'))
  assert not os.path.exists(os.path.join(workdir, 'results.json'))
  assert not os.path.exists(os.path.join(workdir, wd.LOCK_NAME))


def test_eval_and_predict_write_nothing_and_honour_overrides(ctx, run_main):
  path = ctx['moved']
  before = checksum(path)
  r = run_main('--mode=predict', f'--workdir={path}', f'--input={ctx["clip"]}', '--json')
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout.strip().splitlines()[-1])['folds'] == 3
  assert checksum(path) == before  # predict wrote and created nothing
  listing = sorted(os.listdir(path))
  r = run_main(*ev(ctx, 'moved'))  # --config.data.data_dir honoured without --config
  assert r.returncode == 0, r.stderr[-2000:]
  assert 'identical to the training run' in r.stdout and r.stderr == ''
  assert sorted(os.listdir(path)) == sorted(listing + ['results_eval.json'])
  os.remove(os.path.join(path, 'results_eval.json'))
  assert checksum(path) == before  # eval created no checkpoint folder either


def test_tilde_workdir_is_expanded(ctx, tmp_path, run_main, monkeypatch):
  home = tmp_path / 'home'
  home.mkdir()
  os.symlink(ctx['finished'], home / 'run')
  monkeypatch.setenv('HOME', str(home))
  r = run_main('--mode=predict', '--workdir=~/run', f'--input={ctx["clip"]}')
  assert r.returncode == 0, r.stderr[-2000:]


def test_predict_uses_finished_folds_only(ctx):
  out = predict.predict(ctx['half'], ctx['clip'])
  assert out['folds'] == 2 and out['folds_total'] == 3 and sorted(out['per_fold']) == ['p01', 'p02']


def test_predict_places_the_apex_where_the_model_does(ctx, monkeypatch):
  from mpt_jax import pretrained  # pylint: disable=g-import-not-at-top
  from mpt_jax.models import mpt as mpt_lib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  for t in (7, 8):
    config = helpers.tiny_config(num_frames=t)
    model = mpt_lib.build_model(config.model, 5)
    params = pretrained.init_params(model, config.model, jax.random.PRNGKey(0))
    clips = helpers.random_clips(frames=t)
    apply = jax.jit(model.apply)  # one program per signature; op by op took seconds per call
    default = apply({'params': params}, clips)
    explicit = apply({'params': params}, clips,
                     np.full((2,), input_pipeline.middle_apex(t), np.int32))
    np.testing.assert_allclose(np.asarray(default), np.asarray(explicit), rtol=0, atol=1e-6)
  used = []
  original = input_pipeline.middle_apex
  monkeypatch.setattr(input_pipeline, 'middle_apex', lambda t: used.append(t) or original(t))
  predict.predict(ctx['finished'], ctx['clip'])
  assert used == [8]


def test_damaged_checkpoint_of_an_unfinished_fold_is_retrained(ctx, tmp_path):
  path = str(tmp_path / 'retrain')
  shutil.copytree(ctx['finished'], path)
  expected = json.load(open(wd.result_path(path, 0, 'p03')))
  os.remove(wd.result_path(path, 0, 'p03'))
  truncate_largest(wd.checkpoint_dir(path, 0, 'p03'))
  summary = loso.train_and_evaluate(smoke_config(ctx['data']), path)
  again = json.load(open(wd.result_path(path, 0, 'p03')))
  assert again['predictions'] == expected['predictions']
  assert summary['seeds']['0']['folds'][2]['subject'] == 'p03'
  aside = [d for d in os.listdir(wd.fold_dir(path, 0, 'p03')) if '.damaged.' in d]
  assert len(aside) == 1  # the damaged checkpoint is kept aside, not deleted


def test_other_prepared_data_is_refused_naming_the_clips(ctx):
  config = smoke_config(ctx['data'])
  data = input_pipeline.load(config)
  fewer = data.subset(np.arange(len(data)) != 3)
  before = checksum(ctx['finished'])
  one = rf'1 clips differ: {data.names[3]} \(only in the workdir\)'
  with pytest.raises(wd.RunError, match=one):
    loso.train_and_evaluate(config, ctx['finished'], data=fewer)
  relabelled = input_pipeline.ClipSet(data.clips, (data.labels + 1) % 5, data.apex, data.subjects,
                                      data.names, data.classes)
  with pytest.raises(wd.RunError, match='30 clips differ'):
    loso.train_and_evaluate(config, ctx['finished'], data=relabelled)
  assert checksum(ctx['finished']) == before


def test_whole_initial_tree_is_fingerprinted(ctx, tmp_path):
  """full_finetune trains the backbone too: another pretrained file must still be refused."""
  _, _, flat_a = helpers.fake_vit_checkpoint(seed=0)
  _, _, flat_b = helpers.fake_vit_checkpoint(seed=1)
  a, b = str(tmp_path / 'a.npz'), str(tmp_path / 'b.npz')
  np.savez(a, **flat_a)
  np.savez(b, **flat_b)
  config = smoke_config(ctx['data'])
  config.train.num_epochs = 1
  config.model.training_strategy = 'full_finetune'
  config.model.pretrained_path = a
  config.data.subjects = ('p01', 'p02')
  workdir = str(tmp_path / 'ft')
  loso.train_and_evaluate(config, workdir)
  before = checksum(workdir)
  config.model.pretrained_path = b
  with pytest.raises(wd.RunError, match='initial parameters of seed 0 differ'):
    loso.train_and_evaluate(config, workdir)
  assert checksum(workdir) == before


def test_eval_and_predict_with_a_config_file_use_the_runs_data_and_weights(ctx, run_main,
                                                                            monkeypatch):
  """``--mode=eval --config=<file> --workdir=W``: the file's defaults never replace the run's record.

  The run was trained on the session's smoke data (its record says so); the config file's own
  ``data_dir`` (``$TFDS_DATA_DIR``) holds nothing. Only an explicit ``--config.<key>=`` replaces a
  recorded value, and the command says so in one line.
  """
  path = ctx['finished']
  record = wd.read_json(wd.config_path(path))
  assert record['data']['data_dir'] == ctx['data']
  monkeypatch.setenv('TFDS_DATA_DIR', ctx['empty_data'])  # the config file's default data_dir
  epochs = '--config.train.oracle_best_epoch=True'  # as the run was trained
  r = run_main('--mode=eval', SMOKE, f'--workdir={path}', epochs)
  assert r.returncode == 0, r.stderr
  assert 'identical to the training run' in r.stdout
  os.remove(os.path.join(path, 'results_eval.json'))
  said = [l for l in r.stdout.splitlines() if 'from the command line' in l]
  assert len(said) == 1 and 'oracle_best_epoch=True' in said[0] and 'data_dir' not in said[0], said
  r = run_main('--mode=predict', SMOKE, f'--workdir={path}', epochs, f'--input={ctx["clip"]}',
               '--json')
  assert r.returncode == 0, r.stderr
  assert json.loads(r.stdout.strip().splitlines()[-1])['folds'] == 3
  # Another config file (the full demo: another model, frame size, data) is not applied either.
  full = f'--config={REPO}/configs/synthetic.py'
  r = run_main('--mode=eval', full, f'--workdir={path}')
  assert r.returncode == 0, r.stderr
  assert 'identical to the training run' in r.stdout
  os.remove(os.path.join(path, 'results_eval.json'))
  r = run_main('--mode=config', full, f'--workdir={path}')
  assert r.returncode == 0 and 'image_size: 32' in r.stdout and 'image_size: 64' not in r.stdout
  # A flag that would change the trained model is refused, naming the key.
  r = run_main('--mode=eval', full, f'--workdir={path}', '--config.model.image_size=64')
  assert_one_line_error(r, 'model.image_size: workdir 32 vs command line 64')
  # An explicit override wins, and is named.
  r = run_main('--mode=eval', SMOKE, f'--workdir={path}', epochs,
               f'--config.data.data_dir={ctx["empty_data"]}')
  assert_one_line_error(r, 'is not prepared in')
  said = [l for l in r.stdout.splitlines() if 'from the command line' in l]
  assert len(said) == 1 and f"data.data_dir={ctx['empty_data']!r}" in said[0], r.stdout
  # The same rule for the weights: a given config's pretrained_path is used only when named.
  given = synthetic.get_config('smoke')
  given.data.data_dir = ctx['empty_data']
  given.model.pretrained_path = '/elsewhere/ViT-B_16.npz'
  for k, v in helpers.SMOKE_RUN_TRAIN.items():
    given.train[k] = v
  kept = wd.load_run_config(path, given, [])
  assert kept.model.pretrained_path == record['model']['pretrained_path']
  assert kept.data.data_dir == ctx['data']
  moved = wd.load_run_config(path, given, ['model.pretrained_path'])
  assert moved.model.pretrained_path == '/elsewhere/ViT-B_16.npz'
  assert moved.data.data_dir == ctx['data']
