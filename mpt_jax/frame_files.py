"""The frame files of a clip folder, in the order of the numbers in their names.

One way to list a folder of frames, used by the dataset builders (the released clips), by
``--mode=predict`` and by ``--mode=spot --input=<folder>``: every image file whose name holds a
number, ordered by the last number in the name (``img2`` before ``img10``, never
lexicographically). :func:`natural_key` gives subject and clip names the same order (``s2`` before
``s10``); it is the order of the prepared datasets and of the LOSO folds.

Imports only the standard library: the builders, their preparation workers and a training run
that never touches TensorFlow Datasets all use it.
"""

import os
import re
from typing import List, Tuple

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp')
_LAST_INT = re.compile(r'(\d+)(?!.*\d)')


def frame_number(name: str) -> int:
  """The last integer in a file name's stem: ``reg_img46.jpg`` -> 46, ``006_05562.jpg`` -> 5562."""
  stem = os.path.splitext(os.path.basename(name))[0]
  m = _LAST_INT.search(stem)
  if not m:
    raise ValueError(f'No frame number in file name {name!r}')
  return int(m.group(1))


def list_frames(folder: str) -> List[Tuple[int, str]]:
  """``(frame_number, path)`` of each image in ``folder``, by number (never lexicographically)."""
  out = []
  for name in os.listdir(folder):
    if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith('.'):
      try:
        out.append((frame_number(name), os.path.join(folder, name)))
      except ValueError:
        continue
  out.sort()
  return out


def natural_key(s: str):
  """Sort key that orders embedded integers numerically (``s2`` < ``s10``)."""
  return [int(t) if t.isdigit() else t for t in re.split(r'(\d+)', s)]
