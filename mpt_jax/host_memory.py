"""Handing host memory that the process freed back to the operating system.

Initialising ViT-B/16 (an XLA program that draws 86 M random numbers) and compiling its training
step free most of what they allocate, but glibc's allocator keeps freed blocks inside its heap
for reuse; what XLA later allocates for the step itself does not reuse them, so without a trim
that garbage sits under the training step's peak (``benchmarks/bench_vs_peer.py`` measures the
peak; docs/benchmarks.md).
"""

import ctypes
import ctypes.util
import functools
from typing import Optional


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Optional[ctypes._CFuncPtr]:  # pylint: disable=protected-access
  name = ctypes.util.find_library('c')
  try:
    libc = ctypes.CDLL(name)
    return libc.malloc_trim
  except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl): nothing to do
    return None


def release_free_memory() -> bool:
  """Returns the heap's free pages to the operating system (glibc's ``malloc_trim(0)``).

  Values in use are untouched; only the process's resident size shrinks. Costs tens of
  milliseconds, so it is called after the few big one-off phases (model initialisation, compiling
  a program), never per step.

  Returns:
    True if memory was returned, False if there was none to return or the C library has no
    ``malloc_trim``.
  """
  trim = _malloc_trim()
  return bool(trim(0)) if trim is not None else False
