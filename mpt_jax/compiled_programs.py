"""XLA compile options of the runner's programs, and compiling them ahead of their first call."""

from typing import Any, Callable, Dict, Optional, Sequence

import jax
from absl import logging

from mpt_jax import host_memory


# XLA:CPU hands matrix products (and the elementwise work and reductions around them) to the
# YNNPACK library by default. For float32 models that was slower and needed more memory than XLA's
# own kernels (the ViT-B/16 MPT training step and forward); bfloat16 models keep it: their
# products are about twice as fast there (docs/benchmarks.md).
_CPU_FLOAT32_OPTIONS = {'xla_cpu_experimental_ynn_fusion_type': ''}


def compiler_options(dtype: str, devices: Sequence[jax.Device]) -> Dict[str, str]:
  """XLA compile options for the programs of a model computing in ``dtype`` (``config.model.dtype``)
  on ``devices``: without YNNPACK for float32 on CPUs, none otherwise."""
  if dtype == 'float32' and devices and devices[0].platform == 'cpu':
    return dict(_CPU_FLOAT32_OPTIONS)
  return {}


class CompiledAhead:
  """A jitted or pmapped program that compiles before it first runs, once per argument signature.

  Compiling ViT-B/16's training step frees a few hundred MB that glibc keeps in its heap, and the
  step's own buffers do not reuse them, so they would sit under the run's peak memory. Compiling
  ahead (``lower(...).compile()``) and then handing the freed memory back
  (:func:`mpt_jax.host_memory.release_free_memory`) keeps them out; the result is the program
  ``jax.jit`` / ``jax.pmap`` would have compiled with ``options`` (:func:`compiler_options`; the
  persistent compilation cache serves it the same way). An option this jaxlib does not know is
  dropped with a warning (the program is the same, only its speed may differ).
  """

  def __init__(self, program: Callable, options: Optional[Dict[str, str]] = None):
    self._program = program
    self._options = dict(options or {})
    self._compiled: Dict[Any, Callable] = {}

  @staticmethod
  def _signature(args) -> Any:
    """What ``jax.jit`` retraces for: tree structure, shapes, dtypes and weak types (a weak
    float32 scalar and a float32 one promote differently). Shardings are not part of it: the
    runner always passes its arguments with the same placement."""
    leaves, treedef = jax.tree.flatten(args)
    return treedef, tuple(
        (getattr(x, 'shape', None), getattr(x, 'dtype', type(x)),
         bool(getattr(x, 'weak_type', False))) for x in leaves)

  def _compile(self, args) -> Callable:
    lowered = self._program.lower(*args)
    try:
      return lowered.compile(compiler_options=self._options or None)
    except jax.errors.JaxRuntimeError as e:
      unknown = [k for k in self._options if k in str(e)]
      if not unknown:
        raise
      logging.warning('XLA does not take the option(s) %s; compiling without them', unknown)
      for k in unknown:
        del self._options[k]
      return lowered.compile(compiler_options=self._options or None)

  def lower(self, *args):
    """The program lowered for ``args`` (not compiled): e.g. for XLA's cost analysis."""
    return self._program.lower(*args)

  def __call__(self, *args):
    key = self._signature(args)
    program = self._compiled.get(key)
    if program is None:
      program = self._compiled[key] = self._compile(args)
      host_memory.release_free_memory()
    return program(*args)
