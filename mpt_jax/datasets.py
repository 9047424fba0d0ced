"""The dataset builders, as the program running mpt_jax hands them over.

The builders (package ``tfds_builders``) use mpt_jax's frame, face-alignment and version code, so
mpt_jax never imports them back: the dependency runs one way. The program on top hands them over
once with :func:`provide` (``main.py`` does, when it is imported, so the tests and benchmarks that
import ``main`` have them too); mpt_jax then reaches them only through :func:`builder_for` (the
TFDS builder of ``config.data``, to read a prepared dataset) and :func:`builder_class` (a
registered builder's class, e.g. for its stored frame size).

Outside ``main.py`` (a notebook, a script)::

  import tfds_builders
  from tfds_builders import prepare
  from mpt_jax import datasets
  datasets.provide(prepare.builder_for, tfds_builders.BUILDERS.__getitem__)
"""

from typing import Any, Callable, Optional

_builder_for: Optional[Callable[[Any], Any]] = None
_builder_class: Optional[Callable[[str], type]] = None


def provide(builder_for: Callable[[Any], Any], builder_class: Callable[[str], type]) -> None:
  """Hands the dataset builders to mpt_jax (a later call replaces the earlier one).

  Args:
    builder_for: ``config.data`` -> the TFDS builder it names, prepared or not
      (``tfds_builders.prepare.builder_for``).
    builder_class: a dataset name -> its registered builder class (``tfds_builders.BUILDERS``).
  """
  global _builder_for, _builder_class  # pylint: disable=global-statement
  _builder_for, _builder_class = builder_for, builder_class


def _provided():
  if _builder_for is None or _builder_class is None:
    raise RuntimeError('mpt_jax was given no dataset builders: import main (main.py provides '
                       'them) or call mpt_jax.datasets.provide(builder_for, builder_class) before '
                       'reading a prepared dataset')
  return _builder_for, _builder_class


def builder_for(data_config):
  """The TFDS builder named by ``config.data`` (name, builder config, options, data_dir)."""
  return _provided()[0](data_config)


def builder_class(name: str) -> type:
  """The class of the registered builder ``name`` (its ``FRAME_SIZE``, its configs)."""
  return _provided()[1](name)
