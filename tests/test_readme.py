"""Every command README.md shows runs as written, as far as it can without licensed data.

The commands are read out of README.md itself: the fenced blocks (continuation lines joined) and
the `python main.py ...` spans of its tables, with the README's own placeholders expanded (`...`
and `P` of the reproduction table). Each ``python main.py`` command is parsed by main.py's own flag
parser and run in this process as ``--mode=config`` (the config file loads, every
``--config.<key>=`` exists and takes its value, every other flag exists); a command that reads a
finished run (``--workdir`` without ``--config``) reads a run folder written here. Study and table
names go through the parsers of their modes; ``make`` targets, benchmark modules and the files a
command names must exist.
"""

import json
import os
import re
import shlex

import pytest

import main
from configs import synthetic
from mpt_jax import study
from mpt_jax import tables
from mpt_jax import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
  with open(os.path.join(ROOT, 'README.md')) as f:
    return f.read()


def readme_commands():
  """The README's commands, one string each, placeholders expanded, comments dropped."""
  text = _readme()
  commands = []
  for block in re.findall(r'^```[a-z]*\n(.*?)^```', text, re.S | re.M):
    for line in re.sub(r'\\\n\s*', ' ', block).splitlines():
      line = re.split(r'\s#\s', line)[0].strip()
      if re.match(r'(python|make|bash|\.venv/bin/)', line):
        commands.append(line)
  table_prefix = re.search(r'\(`\.\.\.` = `([^`]*)`', text).group(1)
  p_value = re.search(r'`P = ([^`]*)`', text).group(1)
  for span in re.findall(r'`((?:python main\.py|\.\.\.) [^`]*)`', text):
    commands.append(span.replace('...', table_prefix, 1) if span.startswith('...') else span)
  expanded = []
  for command in commands:
    command = re.sub(r'\[([^\]]*)\]', r'\1', command)  # optional flags: shown, so checked too
    expanded.append(' '.join(p_value if w == 'P' else w for w in command.split()))
  return expanded


COMMANDS = readme_commands()
MAIN_COMMANDS = [c for c in COMMANDS if c.startswith('python main.py')]


def test_the_readme_shows_the_commands_a_user_needs():
  modes = {re.search(r'--mode=(\w+)', c).group(1) if '--mode=' in c else 'train'
           for c in MAIN_COMMANDS}
  assert {'train', 'eval', 'predict', 'prepare', 'profile', 'figures', 'table', 'config', 'spot',
          'study'} <= modes, modes
  assert {'make demo', 'make test'} <= {c.split(' #')[0].strip() for c in COMMANDS}


@pytest.fixture(scope='module')
def recorded_run(tmp_path_factory):
  """A run folder as the runner records it (its config.json), for the commands that read a run."""
  workdir = str(tmp_path_factory.mktemp('readme run'))
  wd.write_json(wd.config_path(workdir), json.loads(synthetic.get_config('smoke').to_json()))
  return workdir


def _flag(argv, name):
  values = [a.split('=', 1)[1] for a in argv if a.startswith(f'--{name}=')]
  return values


@pytest.mark.parametrize('command', MAIN_COMMANDS)
def test_main_command_parses_and_its_config_resolves(command, recorded_run, capsys):
  argv = shlex.split(command)[1:]  # ['main.py', flags...]
  mode = (_flag(argv, 'mode') or ['train'])[0]
  assert mode in main.MODES, command
  for name in _flag(argv, 'study'):
    study.parse_study_arg(name)
  for name in _flag(argv, 'table'):
    tables.parse_table_arg(name)
  for path in _flag(argv, 'config'):
    assert os.path.exists(os.path.join(ROOT, path.split(':')[0])), command
  # The same flags, resolved as --mode=config. Without --config the run's record is read (from a
  # recorded run here); --workdir given several times (figures) is then given once.
  flags = [a for a in argv[1:] if not a.startswith('--mode=')]
  if not _flag(argv, 'config'):
    flags = [a for a in flags if not a.startswith('--workdir=')] + [f'--workdir={recorded_run}']
  assert main.cli(['main.py', '--mode=config'] + flags) == 0
  out = capsys.readouterr().out
  assert out.startswith('data:') or '\ndata:' in out, command
  for override in (a for a in flags if a.startswith('--config.')):
    key, value = override[len('--config.'):].split('=', 1)
    leaf = key.rsplit('.', 1)[-1]
    assert re.search(rf'^\s*{re.escape(leaf)}: .*{re.escape(value)}', out, re.M), override


@pytest.mark.parametrize('command', [c for c in COMMANDS if not c.startswith('python main.py')])
def test_other_commands_name_what_exists(command):
  words = shlex.split(command)
  if words[0] == 'make':
    with open(os.path.join(ROOT, 'Makefile')) as f:
      targets = set(re.findall(r'^([\w-]+):', f.read(), re.M))
    assert set(w for w in words[1:] if not w.startswith('-')) <= targets, command
  elif words[:2] == ['python', '-m']:
    assert os.path.exists(os.path.join(ROOT, *words[2].split('.')) + '.py'), command
  else:  # bash script.sh, .venv/bin/pip install -r file -c file
    for w in words[1:]:
      if re.search(r'\.(sh|txt|py)$', w):
        assert os.path.exists(os.path.join(ROOT, w)), (command, w)
