"""Finding a release's files and folders as unpacked, and the error for another layout.

The releases come as folders in their authors' layouts, often with extra copies: other versions of
the coding sheet, renamed copies, macOS resource forks (``._name``) and Office lock files
(``~$name``). These functions find the one file or folder a builder reads (refusing several
different candidates rather than picking one by sort order), check ``manual_dir`` itself, and raise
:class:`DatasetLayoutError` naming what was expected and what is there.
"""

import hashlib
import json
import os
import re
from typing import Callable, List, Optional, Sequence, Tuple

from mpt_jax import errors
from mpt_jax import frame_files


class DatasetLayoutError(errors.UserError):
  """The manual_dir does not look like the expected dataset (the message says what was expected)."""


def is_junk_name(name: str) -> bool:
  """macOS resource forks (``._x.xlsx``), hidden files and Office lock files (``~$x.xlsx``)."""
  return name.startswith(('.', '~$'))


def find_files(root: str, pattern: str, max_depth: int = 5) -> List[str]:
  """Files under ``root`` (depth-limited) whose name matches the regex ``pattern``, sorted.

  Junk names (:func:`is_junk_name`: ``._SAMM_...xlsx`` written by macOS, ``~$...xlsx`` lock
  files) never match.
  """
  rx = re.compile(pattern, re.IGNORECASE)
  return [os.path.join(dirpath, f) for dirpath, filenames in _walk(root, max_depth)
          for f in sorted(filenames) if rx.fullmatch(f) and not is_junk_name(f)]


def _walk(root: str, max_depth: int):
  """``(folder, file names)`` under ``root`` (including it), sorted, at most ``max_depth`` deep."""
  root = os.path.abspath(root)
  for dirpath, dirnames, filenames in os.walk(root):
    if dirpath[len(root):].count(os.sep) >= max_depth:
      dirnames[:] = []
    dirnames.sort()
    yield dirpath, filenames


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file's bytes."""
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def choose_file(manual_dir: str, dataset: str, what: str, pattern: str, exact: Sequence[str] = (),
                max_depth: int = 5) -> Optional[str]:
  """The one file under ``manual_dir`` matching ``pattern``; None when there is none.

  The released file names ``exact`` are preferred over other matches (other versions, renamed
  copies); copies with identical bytes count as one. Several different candidates are refused,
  listing them, rather than one picked by sort order.
  """
  found = find_files(manual_dir, pattern, max_depth)
  exact_lower = {e.lower() for e in exact}
  preferred = [f for f in found if os.path.basename(f).lower() in exact_lower] or found
  if not preferred:
    return None
  if len({file_sha256(f) for f in preferred}) > 1:
    names = [os.path.relpath(f, manual_dir) for f in preferred]
    raise DatasetLayoutError(f'{dataset}: several different {what} files under {manual_dir}: '
                             f'{names}; keep only the one to use')
  return preferred[0]


def layout_hint(manual_dir: str, pattern: str = r'.*\.(xlsx|xls|csv)') -> str:
  """``'; found a.xlsx, b.xls'``: the sheet-like files that are there, for error messages."""
  found = [os.path.relpath(f, manual_dir) for f in find_files(manual_dir, pattern)]
  if not found:
    return '; there is no .xlsx/.xls/.csv file at all'
  return '; found ' + ', '.join(found[:8]) + (' ...' if len(found) > 8 else '')


def find_dirs(root: str, predicate, max_depth: int = 5) -> List[str]:
  """Directories under ``root`` (including it, depth-limited) for which ``predicate(path)`` holds."""
  return [dirpath for dirpath, _ in _walk(root, max_depth) if predicate(dirpath)]


def subdirs(path: str) -> List[str]:
  try:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
  except OSError:
    return []


def check_manual_dir(manual_dir: str, dataset: str, expected: str) -> str:
  """Raises a clear error when ``manual_dir`` is unset, missing, not a folder or empty."""
  if not manual_dir:
    raise DatasetLayoutError(f'{dataset}: no manual_dir given. Pass '
                             f'--config.data.manual_dir=/path/to/the/unpacked/dataset ({expected}).')
  path = os.path.expanduser(str(manual_dir))
  if os.path.isfile(path):
    raise DatasetLayoutError(f'{dataset}: manual_dir {path} is a file, not a folder: pass the '
                             'folder the dataset was unpacked into, not an archive or a sheet '
                             f'({expected}).')
  if not os.path.exists(path):
    raise DatasetLayoutError(f'{dataset}: manual_dir {path} does not exist ({expected}).')
  if not os.path.isdir(path):
    raise DatasetLayoutError(f'{dataset}: manual_dir {path} is not a folder ({expected}).')
  try:
    entries = os.listdir(path)
  except OSError as e:
    raise DatasetLayoutError(f'{dataset}: manual_dir {path} cannot be listed '
                             f'({e.strerror or e}).') from e
  if not [e for e in entries if not is_junk_name(e)]:
    raise DatasetLayoutError(f'{dataset}: manual_dir {path} is empty ({expected}).')
  return path


def scan_release(manual_dir: str, dataset: str, expected_layout: str, scan: Callable[[str], Tuple],
                 what: str, name: Callable[[object], str]):
  """A builder's scan of the release in ``manual_dir``: ``(items, report)``.

  ``scan(manual_dir)`` gives ``(items, report)``; the items (clips, videos) come back in the
  natural order of their subject, then of ``name(item)``. Refuses a missing folder and a release in
  which the scan found nothing, naming the expected layout and the scan's first problems.
  """
  manual_dir = check_manual_dir(str(manual_dir), dataset, expected_layout)
  items, report = scan(manual_dir)
  if not items:
    raise DatasetLayoutError(f'{dataset}: found no usable {what} under {manual_dir} '
                             f'({expected_layout}). Problems: {json.dumps(report.issues[:10])}')
  key = frame_files.natural_key
  items.sort(key=lambda it: (key(it.subject), key(name(it))))
  return items, report
