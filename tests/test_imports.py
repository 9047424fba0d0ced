"""The layering of the packages: ``tfds_builders`` uses ``mpt_jax``, never the other way round.

The builders import mpt_jax's frame, face-alignment and version code; mpt_jax reaches the builders
only through what the program on top hands it (``mpt_jax.datasets.provide``, which ``main.py``
calls). Every module under ``mpt_jax/`` is read with ``ast``, so an import hidden inside a
function (or made with ``importlib``) counts too.
"""

import ast
import importlib
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUILDERS_PACKAGE = 'tfds_builders'


def imported_modules(tree: ast.AST):
  """``(line, module)`` of every import in ``tree``, wherever it is (functions, classes, ``if``s):
  ``import a.b``, ``from a.b import c`` (as ``a.b.c``), ``importlib.import_module('a.b')`` and
  ``__import__('a.b')`` with a literal name."""
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for alias in node.names:
        yield node.lineno, alias.name
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      for alias in node.names:
        yield node.lineno, f'{node.module}.{alias.name}'
    elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
      func = node.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', '')
      if name in ('import_module', '__import__') and isinstance(node.args[0].value, str):
        yield node.lineno, node.args[0].value


def _is_builders(module: str) -> bool:
  return module == BUILDERS_PACKAGE or module.startswith(BUILDERS_PACKAGE + '.')


def builders_imports(source: str, filename: str = '<source>'):
  return sorted((line, m) for line, m in imported_modules(ast.parse(source, filename))
                if _is_builders(m))


def test_the_walker_finds_every_form_of_import():
  source = ('import os\n'
            'import tfds_builders\n'
            'def f():\n'
            '  from tfds_builders import common  # pylint: disable=g-import-not-at-top\n'
            'class C:\n'
            '  def g(self):\n'
            '    import tfds_builders.prepare as prep\n'
            'import importlib\n'
            "importlib.import_module('tfds_builders.longvideo')\n"
            "__import__('tfds_builders')\n"
            'from mpt_jax import tfds_builders_notes\n'
            '"""tfds_builders in a docstring is no import."""\n')
  assert [line for line, _ in builders_imports(source)] == [2, 4, 7, 9, 10]


def test_mpt_jax_never_imports_the_builders():
  modules = sorted((ROOT / 'mpt_jax').rglob('*.py'))
  assert len(modules) > 20, modules  # the walk sees the package (and its subpackages)
  found = [f'{path.relative_to(ROOT)}:{line} imports {module}'
           for path in modules
           for line, module in builders_imports(path.read_text(encoding='utf-8'), str(path))]
  assert not found, ('mpt_jax must not import tfds_builders (the builders import mpt_jax); '
                     'take what is needed from mpt_jax.datasets instead:\n' + '\n'.join(found))


def test_the_builders_import_no_runner_module():
  """The builders use mpt_jax's low-level pieces only, never the training side (which would
  bring the import cycle back through another door)."""
  runner = ('mpt_jax.loso', 'mpt_jax.train', 'mpt_jax.evaluate', 'mpt_jax.predict',
            'mpt_jax.figures', 'mpt_jax.tables', 'mpt_jax.study', 'mpt_jax.input_pipeline',
            'mpt_jax.spotting.run', 'mpt_jax.spotting.dataset', 'mpt_jax.datasets')
  found = []
  for path in sorted((ROOT / BUILDERS_PACKAGE).rglob('*.py')):
    tree = ast.parse(path.read_text(encoding='utf-8'), str(path))
    found += [f'{path.relative_to(ROOT)}:{line} imports {m}' for line, m in imported_modules(tree)
              if any(m == r or m.startswith(r + '.') for r in runner)]
  assert not found, '\n'.join(found)


def test_main_provides_the_builders_and_mpt_jax_says_when_none_are(monkeypatch):
  importlib.import_module('main')  # as every program does: main.py hands the builders over
  import tfds_builders  # pylint: disable=g-import-not-at-top
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  from mpt_jax import datasets  # pylint: disable=g-import-not-at-top
  assert datasets.builder_class('casme2') is tfds_builders.BUILDERS['casme2']
  assert datasets.builder_class('casme2').FRAME_SIZE == 224
  assert datasets.builder_class('casme2_longvideo').FRAME_SIZE == 128
  config = synthetic.get_config('smoke')
  assert type(datasets.builder_for(config.data)) is tfds_builders.BUILDERS['synthetic_me']
  monkeypatch.setattr(datasets, '_builder_for', None)
  with pytest.raises(RuntimeError, match='no dataset builders: import main'):
    datasets.builder_for(config.data)
