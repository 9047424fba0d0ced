"""``host_memory.release_free_memory`` really returns freed heap memory to the operating system."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# In a fresh process: 300 MB in 100 kB blocks (glibc serves those from its heap, not from mmap),
# one block allocated after them stays in use, the 300 MB are freed; print the resident MB then
# and after the release.
_SCRIPT = """
import numpy as np
from mpt_jax import host_memory
def rss_mb():
  return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
blocks = [np.ones(100_000 // 8) for _ in range(3000)]
keep = np.ones(1000)
del blocks
before = rss_mb()
returned = host_memory.release_free_memory()
print(before, rss_mb(), returned)
"""


@pytest.mark.skipif(not os.path.exists('/proc/self/statm') or
                    os.confstr('CS_GNU_LIBC_VERSION') is None, reason='needs Linux with glibc')
def test_release_returns_freed_heap_memory():
  out = subprocess.run([sys.executable, '-c', _SCRIPT], cwd=ROOT, check=True, text=True,
                       stdout=subprocess.PIPE).stdout.split()
  before, after, returned = float(out[0]), float(out[1]), out[2]
  assert returned == 'True'
  # glibc itself hands back part of it; what it keeps (the rest) must go now.
  assert before - after >= 50, (before, after)
  assert after < 150, after
