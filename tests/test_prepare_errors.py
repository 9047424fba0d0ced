"""Bad inputs to ``main.py --mode=prepare``, run as a user would.

Each case runs the command line (``main.cli``, in this process) on a ``:smoke`` config and a
fixture folder, and asserts what the user sees: exit code 2, exactly one ``error:`` line on stderr
holding the expected fragment, and no traceback anywhere.
"""

import contextlib
import io
import os
import shutil
import types

import ml_collections
import pytest

import main
from tfds_builders import fake_releases

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _samm_with_sheet(root, data=None, name=None):
  base = fake_releases.write_samm(root, nested=False)
  sheet = os.path.join(base, 'SAMM_Micro_FACS_Codes_v2.xlsx')
  if data is not None:
    with open(sheet, 'rb') as f:
      good = f.read()
    with open(sheet, 'wb') as f:
      f.write(data(good))
  if name:
    os.rename(sheet, os.path.join(base, name))
  return base


def _casme2_xls(root, data):
  base = fake_releases.write_casme2(root, sheet_name='CASME2_label_Ver_2.xls')
  sheet = os.path.join(base, 'CASME2_label_Ver_2.xls')
  with open(sheet, 'rb') as f:
    good = f.read()
  with open(sheet, 'wb') as f:
    f.write(data(good))
  return base


def _smic_without_frames(root):
  base = fake_releases.write_smic(root)
  for subj, emo, clip, _, _ in fake_releases.SMIC_CLIPS:  # every clip folder emptied
    folder = os.path.join(base, 'SMIC_all_cropped', 'HS', subj, 'micro', emo, clip)
    shutil.rmtree(folder)
    os.makedirs(folder)
  return base


def _samm_two_worksheets(root):
  base = fake_releases.write_samm(root, nested=False)
  sheet = os.path.join(base, 'SAMM_Micro_FACS_Codes_v2.xlsx')
  import openpyxl  # pylint: disable=g-import-not-at-top
  wb = openpyxl.load_workbook(sheet)
  wb['MICRO_ONLY'].title = 'Micro'
  wb.create_sheet('Macro')
  wb.save(sheet)
  return base


def _file(root):
  path = os.path.join(root, 'SAMM.zip')
  os.makedirs(root, exist_ok=True)
  with open(path, 'wb') as f:
    f.write(b'PK\x03\x04 an archive')
  return path


def _empty(root):
  os.makedirs(root, exist_ok=True)
  return root


def _prepared_then_other(root):
  """casme2 prepared from folder a (in-process), then prepare is asked for folder b."""
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  a = fake_releases.write_casme2(os.path.join(root, 'a'), sheet_name='CASME2-coding-20190701.xlsx')
  prepare.prepare(ml_collections.ConfigDict(dict(
      name='casme2', builder_config='5class', manual_dir=a,
      data_dir=os.path.join(os.path.dirname(root), 'tfds'))))  # the case's data_dir
  return fake_releases.write_casme2(os.path.join(root, 'b'), sheet_name='CASME2-coding-20190701.xlsx')


# (id, config, manual_dir writer (None: not given), extra flags, expected exit code, fragment).
CASES = [
    ('manual_dir_not_given', 'samm', None, [], 2, 'samm: no manual_dir given'),
    ('manual_dir_empty', 'samm', _empty, [], 2, 'is empty'),
    ('manual_dir_a_file', 'samm', _file, [], 2, 'is a file, not a folder'),
    ('manual_dir_missing', 'samm', lambda r: os.path.join(r, 'nope'), [], 2, 'does not exist'),
    ('another_datasets_folder', 'samm', fake_releases.write_smic, [], 2,
     'no SAMM_Micro_FACS_Codes_v2.xlsx'),
    ('truncated_xlsx', 'samm', lambda r: _samm_with_sheet(r, lambda b: b[:len(b) // 2]), [], 2,
     'damaged .xlsx workbook'),
    ('zero_byte_xlsx', 'samm', lambda r: _samm_with_sheet(r, lambda b: b''), [], 2,
     'not an Excel workbook (empty file)'),
    ('truncated_xls', 'casme2', lambda r: _casme2_xls(r, lambda b: b[:len(b) // 2]),
     ['--config.data.builder_config=5class_ver2'], 2, 'damaged .xls workbook'),
    ('garbage_xls', 'casme2', lambda r: _casme2_xls(r, lambda b: b'<html>export</html>'),
     ['--config.data.builder_config=5class_ver2'], 2, 'not an Excel workbook'),
    ('misnamed_sheet_file', 'samm', lambda r: _samm_with_sheet(r, name='SAMM_codes.xlsx'), [], 2,
     'found SAMM_codes.xlsx'),
    ('misnamed_worksheet', 'samm', _samm_two_worksheets, [], 2,
     "no worksheet named 'MICRO_ONLY' and several others ['Micro', 'Macro']"),
    ('casme2_5class_with_only_the_old_sheet', 'casme2', fake_releases.write_casme2, [], 2,
     '--config.data.builder_config=5class_20140508'),
    ('every_frame_folder_empty', 'smic', _smic_without_frames, [], 2, 'found no usable clip'),
    ('manual_dir_differs_from_recorded', 'casme2', _prepared_then_other, [], 2,
     'the sources given differ in manual_dir: recorded'),
]


def _main(*args):
  """The command line in this process: its exit code, stdout and stderr."""
  out, err = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
    try:
      code = main.cli(['main.py', *args])
    except SystemExit as e:
      code = e.code
  return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _run(case, tmp):
  name, config, write, flags, _, _ = case
  root = os.path.join(tmp, name)
  args = ['--mode=prepare', f'--config={ROOT}/configs/{config}.py:smoke',
          f'--config.data.data_dir={os.path.join(root, "tfds")}'] + flags
  if write is not None:
    args.append(f'--config.data.manual_dir={write(os.path.join(root, "manual"))}')
  return _main(*args)


@pytest.fixture(scope='module')
def results(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp('prepare_errors'))
  return {case[0]: _run(case, tmp) for case in CASES}


@pytest.mark.parametrize('case', CASES, ids=[c[0] for c in CASES])
def test_bad_prepare_input_is_one_clear_line(results, case):
  name, _, _, _, code, fragment = case
  r = results[name]
  seen = f'stdout:\n{r.stdout}\nstderr:\n{r.stderr}'
  assert 'Traceback' not in r.stdout + r.stderr, seen
  assert r.returncode == code, seen
  errors = [l for l in r.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and fragment in errors[0], seen


def test_reuse_is_said_plainly(tmp_path):
  """Prepare again without manual_dir prints where the data came from."""
  manual = fake_releases.write_samm(str(tmp_path / 'manual'))
  base = ['--mode=prepare', f'--config={ROOT}/configs/samm.py:smoke',
          f'--config.data.data_dir={tmp_path / "tfds"}']
  first = _main(*base, f'--config.data.manual_dir={manual}')
  assert first.returncode == 0, first.stderr
  assert [l for l in first.stdout.splitlines() if l.startswith('Prepared ')], first.stdout
  again = _main(*base)
  assert again.returncode == 0, again.stderr
  line = again.stdout.splitlines()[0]
  assert line.startswith('Reusing the prepared data in ') and os.path.realpath(manual) in line
  assert 'SAMM_Micro_FACS_Codes_v2.xlsx' in line, line
