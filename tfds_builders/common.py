"""Shared machinery of the micro-expression TFDS builders.

Each builder parses its dataset's annotation into :class:`Clip` records (validating every path and
frame eagerly, in ``_split_generators``), collects every quirk it fixed or skipped in a
:class:`Report`, and then only reads, resizes and stores frames in ``_generate_examples``.

Stored examples share one feature layout (:func:`features`): the frames onset..offset (naturally
sorted, resized to ``FRAME_SIZE`` x ``FRAME_SIZE`` with PIL's antialiased bilinear filter, stored as
lossless PNG inside an ``array_record`` file), the dataset, the subject (the LOSO id), the clip name,
the emotion as written, the protocol's class label, onset/apex/offset frame numbers, the apex position
within the stored frames, the action units and the frame rate. Everything lives in one ``train`` split;
LOSO folds are cut by subject at training time.

Why 224 px PNG: the model runs at 224 px, so storing more would only cost disk and preparation time,
and PNG is lossless (JPEG re-encoding would add block artefacts of the size of the motions we look
for). The datasets are small: training resamples every clip to T frames and holds the whole protocol
in memory (CASME II: 255 clips x 16 x 224 x 224 x 3 in float16 is about 1.2 GB).
"""

import dataclasses
import hashlib
import json
import os
import re
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from mpt_jax import clip_frames
from mpt_jax import errors
from mpt_jax import face_align
from mpt_jax import frame_files
from mpt_jax import prepared_version

FRAME_SIZE = 224


class DatasetLayoutError(errors.UserError):
  """The manual_dir does not look like the expected dataset (the message says what was expected)."""


class CorruptImageError(errors.UserError):
  """An image file could not be decoded (the message names the file)."""


@dataclasses.dataclass
class Clip:
  """One annotated micro-expression clip, validated and ready to store."""
  dataset: str
  subject: str
  clip: str
  emotion: str
  label: str
  onset: int
  apex: int
  offset: int
  action_units: str
  fps: float
  frames: List[str]
  frame_numbers: List[int]

  @property
  def key(self) -> str:
    return f'{self.dataset}/{self.subject}/{self.clip}'

  @property
  def apex_index(self) -> int:
    """Position of the apex within the stored frames (the nearest stored frame)."""
    nums = np.asarray(self.frame_numbers)
    return int(np.argmin(np.abs(nums - self.apex)))


@dataclasses.dataclass
class Report:
  """What a preparation fixed or skipped, and the final counts."""
  dataset: str
  source: Dict[str, str] = dataclasses.field(default_factory=dict)
  issues: List[Dict[str, str]] = dataclasses.field(default_factory=list)

  def add(self, where: str, problem: str, action: str) -> None:
    self.issues.append({'where': where, 'problem': problem, 'action': action})

  def summary(self, clips: Sequence[Clip], classes: Sequence[str]) -> Dict[str, Any]:
    per_class = {c: 0 for c in classes}
    per_subject: Dict[str, Dict[str, int]] = {}
    for c in clips:
      per_class[c.label] += 1
      per_subject.setdefault(c.subject, {k: 0 for k in classes})[c.label] += 1
    return {
        'dataset': self.dataset,
        'source': self.source,
        'num_clips': len(clips),
        'num_subjects': len(per_subject),
        'per_class': per_class,
        'per_subject': {s: per_subject[s]
                        for s in sorted(per_subject, key=frame_files.natural_key)},
        'issues': self.issues,
    }


def first_of_each_number(report: Report, where: str, frames: List[Tuple[int, str]]
                         ) -> List[Tuple[int, str]]:
  """``(number, path)`` frames with one file per number (the first; duplicates are reported)."""
  seen, kept = set(), []
  for n, p in frames:
    if n not in seen:
      seen.add(n)
      kept.append((n, p))
  if len(kept) != len(frames):
    report.add(where, 'duplicate frame numbers', 'kept the first file of each number')
  return kept


def select_frames(report: Report, where: str, folder: str, onset: int, offset: int,
                  min_frames: int = 2, long_video: bool = False,
                  frames: Optional[List[Tuple[int, str]]] = None
                  ) -> Optional[Tuple[List[int], List[str]]]:
  """The frames of ``folder`` numbered onset..offset, reporting gaps and extra frames.

  ``long_video``: the folder is a whole recording the clip is cut from (CAS(ME)^3), so frames
  outside onset..offset are expected and not reported. ``frames``: the folder's
  :func:`mpt_jax.frame_files.list_frames`, when the caller has listed it already. Returns None
  (and reports why) when fewer than ``min_frames`` frames remain.
  """
  frames = frame_files.list_frames(folder) if frames is None else frames
  if not frames:
    report.add(where, f'folder {folder} has no image files', 'skipped')
    return None
  inside = [(n, p) for n, p in frames if onset <= n <= offset]
  outside = len(frames) - len(inside)
  if outside and not long_video:
    report.add(where, f'{outside} frame file(s) outside onset..offset {onset}..{offset}',
               'ignored those frames')
  inside = first_of_each_number(report, where, inside)
  nums = [n for n, _ in inside]
  expected = offset - onset + 1
  if len(nums) < expected and len(nums) >= min_frames:
    missing = sorted(set(range(onset, offset + 1)) - set(nums))
    shown = ', '.join(map(str, missing[:8])) + (' ...' if len(missing) > 8 else '')
    report.add(where, f'{len(missing)} missing frame(s) in {onset}..{offset}: {shown}',
               'kept the frames present (temporal resampling spans the gap)')
  if len(nums) < min_frames:
    report.add(where, f'only {len(nums)} frame(s) in onset..offset {onset}..{offset} in {folder}',
               'skipped')
    return None
  return nums, [p for _, p in inside]


SLASH_APEX = '/'  # The apex text of rows without an annotated apex (CASME II sub04/EP12_01f).


def fix_apex(report: Report, where: str, onset: int, apex: Any, offset: int) -> int:
  """Documented apex rule: ``'/'``, empty or outside onset..offset -> the midpoint (reported)."""
  mid = (onset + offset) // 2
  try:
    a = int(float(str(apex).strip()))
  except ValueError:
    report.add(where, f'apex is {str(apex).strip()!r}', f'apex set to the midpoint {mid}')
    return mid
  if not onset <= a <= offset:
    report.add(where, f'apex {a} outside onset..offset {onset}..{offset}',
               f'apex set to the midpoint {mid}')
    return mid
  return a


def resolve_apex(report: Report, where: str, frames: Sequence[Tuple[int, str]], onset: int,
                 apex: Any, offset: int, long_video: bool = False) -> Tuple[int, int, int]:
  """``(onset, apex, offset)`` after the apex rules (each application reported).

  An annotated apex after the offset (or before the onset) whose frame is on disk in the clip's own
  folder is kept, and the offset (onset) moves to it: the dataset's authors extracted those frames,
  as with CASME II sub12/EP09_06 in the 20140508 sheet (offset 106, apex 111, frames up to 111; the
  20190701 sheet sets the offset to 111). An apex that is not on disk, ``'/'`` or empty becomes the
  midpoint (:func:`fix_apex`). In a whole recording (``long_video``, CAS(ME)^3) every frame is on
  disk, so that is no evidence and the midpoint rule applies.
  """
  a = to_int(apex)
  if a is not None and not long_video and not onset <= a <= offset and (
      a in {n for n, _ in frames}):
    if a > offset:
      report.add(where, f'apex {a} after offset {offset}; frames {offset + 1}..{a} are on disk',
                 f'offset set to the apex {a}')
      return onset, a, a
    report.add(where, f'apex {a} before onset {onset}; frames {a}..{onset - 1} are on disk',
               f'onset set to the apex {a}')
    return a, a, offset
  return onset, fix_apex(report, where, onset, apex, offset), offset


def is_slash_apex(apex: Any) -> bool:
  """Whether an apex cell is ``'/'`` (no apex annotated; some MER codes drop these rows)."""
  return cell_text(apex) == SLASH_APEX


def to_int(value: Any) -> Optional[int]:
  try:
    return int(float(str(value).strip()))
  except (TypeError, ValueError):
    return None


def cell_text(value: Any) -> str:
  if value is None:
    return ''
  if isinstance(value, float) and value.is_integer():
    value = int(value)
  return str(value).strip()


_XLSX_MAGIC = b'PK\x03\x04'  # .xlsx files are zip archives
_XLS_MAGIC = b'\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1'  # legacy .xls files are OLE2 compound files


def _pick_worksheet(path: str, names: Sequence[str], wanted: Optional[str]) -> str:
  """The worksheet to read: ``wanted`` if present, else the only one; else a clear error."""
  if wanted is None or wanted in names:
    return wanted if wanted is not None else names[0]
  if len(names) == 1:
    return names[0]
  raise DatasetLayoutError(f'{path}: no worksheet named {wanted!r} and several others '
                           f'{list(names)}; expected the released file with its {wanted!r} sheet')


def read_table(path: str, sheet: Optional[str] = None) -> Tuple[str, List[List[Any]]]:
  """``(worksheet name, rows of cell values)`` of an .xlsx or legacy .xls workbook.

  The format is decided by the file's content, not its name (an .xlsx saved as ``.xls`` is read
  as .xlsx); a file that is neither, or is truncated or damaged, raises one error naming it.
  """
  try:
    with open(path, 'rb') as f:
      magic = f.read(8)
  except OSError as e:
    raise DatasetLayoutError(f'{path}: cannot be read ({e.strerror or e})') from e
  if magic.startswith(_XLSX_MAGIC):
    import openpyxl  # pylint: disable=g-import-not-at-top
    try:
      with open(path, 'rb') as f:
        wb = openpyxl.load_workbook(f, read_only=True, data_only=True)
        name = _pick_worksheet(path, wb.sheetnames, sheet)
        table = [list(r) for r in wb[name].iter_rows(values_only=True)]
        wb.close()
    except DatasetLayoutError:
      raise
    except Exception as e:  # zipfile, XML and openpyxl errors for damaged files
      raise DatasetLayoutError(f'{path}: damaged .xlsx workbook, cannot be read '
                               f'({type(e).__name__}: {e}); copy it again from the release') from e
    return name, table
  if magic.startswith(_XLS_MAGIC):
    import xlrd  # pylint: disable=g-import-not-at-top
    try:
      with open(os.devnull, 'w') as quiet:  # xlrd prints its warnings to stdout otherwise
        book = xlrd.open_workbook(path, logfile=quiet, on_demand=True)
        name = _pick_worksheet(path, book.sheet_names(), sheet)
        ws = book.sheet_by_name(name)
        table = [ws.row_values(i) for i in range(ws.nrows)]
        book.release_resources()
    except DatasetLayoutError:
      raise
    except Exception as e:  # xlrd raises XLRDError, IndexError, struct.error... on damaged files
      raise DatasetLayoutError(f'{path}: damaged .xls workbook, cannot be read '
                               f'({type(e).__name__}: {e}); copy it again from the release') from e
    return name, table
  kind = 'empty file' if not magic else f'starts with bytes {magic[:4]!r}'
  raise DatasetLayoutError(f'{path}: not an Excel workbook ({kind}); expected the .xlsx/.xls '
                           'coding sheet of the release')


def read_sheet(path: str, header_first_cell: str = 'Subject', sheet: Optional[str] = None,
               scan_rows: int = 30) -> Tuple[List[str], List[Tuple[int, List[Any]]]]:
  """Reads an .xlsx/.xls sheet whose header row starts with ``header_first_cell``.

  The header is found by scanning the first ``scan_rows`` rows (SAMM has a 13-row preamble).
  ``sheet``: the worksheet to read; when absent, the workbook's only worksheet (several others:
  an error listing them).

  Returns:
    ``(header, rows)`` with rows as ``(excel_row_number, cells)``; fully empty rows are dropped.
  """
  name, table = read_table(path, sheet)
  for i, row in enumerate(table[:scan_rows]):
    if row and cell_text(row[0]) == header_first_cell:
      header = [cell_text(c) for c in row]
      rows = [(j + 1, list(r)) for j, r in enumerate(table[i + 1:], start=i + 1)
              if any(cell_text(c) for c in r)]
      return header, rows
  raise DatasetLayoutError(f'{path}: no header row starting with {header_first_cell!r} in the first '
                           f'{scan_rows} rows of worksheet {name!r}')


def column_index(header: Sequence[str], names: Iterable[str], path: str) -> Dict[str, int]:
  """Maps each wanted column name to its index (case- and space-insensitive)."""
  norm = {re.sub(r'\s+', '', h).lower(): i for i, h in enumerate(header) if h}
  out, missing = {}, []
  for name in names:
    key = re.sub(r'\s+', '', name).lower()
    if key in norm:
      out[name] = norm[key]
    else:
      missing.append(name)
  if missing:
    raise DatasetLayoutError(f'{path}: missing column(s) {missing}; found {[h for h in header if h]}')
  return out


SHEET_COLUMNS = ('Subject', 'Filename', 'Onset Frame', 'Apex Frame', 'Offset Frame',
                 'Action Units', 'Estimated Emotion')


@dataclasses.dataclass(frozen=True)
class Emotions:
  """A dataset's emotion vocabulary: the spellings it uses and the aliases that map onto them."""
  known: Tuple[str, ...]  # every emotion the dataset's sheet uses, in its canonical spelling
  aliases: Tuple[Tuple[str, str], ...] = ()  # (other spelling, canonical spelling)

  def normalise(self, text: Any) -> str:
    """Lower-cased, inner spaces collapsed, aliases applied: ``'Others '`` -> ``'others'``."""
    e = ' '.join(cell_text(text).split()).lower()
    return dict(self.aliases).get(e, e)


def protocol_emotion(report: Report, where: str, text: Any, emotions: Emotions,
                     protocol: Iterable[str]) -> Optional[str]:
  """The normalised emotion of a row, or None after reporting why the row is dropped."""
  e = emotions.normalise(text)
  protocol = tuple(protocol)
  if e not in emotions.known:
    report.add(where, f'emotion {cell_text(text)!r} is none of the known {list(emotions.known)}',
               'skipped')
    return None
  if e not in protocol:
    report.add(where, f'emotion {e!r} is not one of this protocol\'s {list(protocol)}',
               'skipped (not in the protocol)')
    return None
  return e


def clips_from_sheet(dataset: str, sheet: str, root: str, manual_dir: str, subject_id,
                     emotions: Emotions, classes: Sequence[str], fps: float, report: Report,
                     sheet_name: Optional[str] = None, drop_slash_apex: bool = False
                     ) -> Tuple[List[Clip], set]:
  """Clips of a CASME II / SAMM style coding sheet, one folder ``root/<subject>/<Filename>`` each.

  Args:
    dataset: dataset name stored in the clips.
    sheet: the .xlsx/.xls path; columns are matched by name, spaces ignored.
    root: the folder holding ``<subject>/<clip>/`` frame folders.
    manual_dir: for relative paths in the report.
    subject_id: int -> LOSO id (``sub01``, ``006``).
    emotions: the dataset's emotion vocabulary (spellings and aliases).
    classes: emotions kept by the protocol; every other row is reported with its emotion.
    fps: frame rate stored with the clips.
    report: collects every quirk handled and every row dropped.
    sheet_name: worksheet to read (default: the first).
    drop_slash_apex: drop the rows whose apex is ``'/'`` instead of using the midpoint.

  Returns:
    (clips, every (subject, clip) named by a readable row, kept or not).
  """
  header, rows = read_sheet(sheet, 'Subject', sheet=sheet_name)
  cols = column_index(header, SHEET_COLUMNS, sheet)
  clips, annotated = [], set()
  for rownum, row in rows:
    cell = lambda name: row[cols[name]] if cols[name] < len(row) else None  # pylint: disable=cell-var-from-loop,unnecessary-lambda-assignment
    where = f'{os.path.basename(sheet)} row {rownum}'
    subj = to_int(cell('Subject'))
    name = cell_text(cell('Filename'))
    if subj is None or not name:
      report.add(where, f'unreadable Subject/Filename {cell("Subject")!r}/{cell("Filename")!r}',
                 'skipped')
      continue
    subject = subject_id(subj)
    annotated.add((subject, name))
    where = f'{where} ({subject}/{name})'
    emotion = protocol_emotion(report, where, cell('Estimated Emotion'), emotions, classes)
    if emotion is None:
      continue
    onset, offset = to_int(cell('Onset Frame')), to_int(cell('Offset Frame'))
    if onset is None or offset is None or offset < onset:
      report.add(where, f'bad onset/offset {cell("Onset Frame")!r}/{cell("Offset Frame")!r}',
                 'skipped')
      continue
    if drop_slash_apex and is_slash_apex(cell('Apex Frame')):
      report.add(where, "apex is '/'", 'skipped (drop_slash_apex)')
      continue
    folder = os.path.join(root, subject, name)
    if not os.path.isdir(folder):
      report.add(where, f'no folder {os.path.relpath(folder, manual_dir)}', 'skipped')
      continue
    frames = frame_files.list_frames(folder)
    apex = onset  # replaced below; a folder without frames is reported and skipped
    if frames:
      onset, apex, offset = resolve_apex(report, where, frames, onset, cell('Apex Frame'), offset)
    selected = select_frames(report, where, folder, onset, offset, frames=frames)
    if selected is None:
      continue
    nums, paths = selected
    clips.append(Clip(dataset, subject, name, emotion, emotion, onset, apex, offset,
                      cell_text(cell('Action Units')), fps, paths, nums))
  return clips, annotated


def report_unannotated_folders(root: str, annotated: set, report: Report) -> None:
  """Reports every ``root/<subject>/<clip>`` folder that no sheet row names."""
  for subject in subdirs(root):
    for clip in subdirs(os.path.join(root, subject)):
      if (subject, clip) not in annotated:
        report.add(f'{subject}/{clip}', 'folder has no row in the coding sheet', 'skipped')


def is_junk_name(name: str) -> bool:
  """macOS resource forks (``._x.xlsx``), hidden files and Office lock files (``~$x.xlsx``)."""
  return name.startswith(('.', '~$'))


def find_files(root: str, pattern: str, max_depth: int = 5) -> List[str]:
  """Files under ``root`` (depth-limited) whose name matches the regex ``pattern``, sorted.

  Junk names (:func:`is_junk_name`: ``._SAMM_...xlsx`` written by macOS, ``~$...xlsx`` lock
  files) never match.
  """
  rx = re.compile(pattern, re.IGNORECASE)
  out = []
  root = os.path.abspath(root)
  for dirpath, dirnames, filenames in os.walk(root):
    depth = dirpath[len(root):].count(os.sep)
    if depth >= max_depth:
      dirnames[:] = []
    dirnames.sort()
    out.extend(os.path.join(dirpath, f) for f in sorted(filenames)
               if rx.fullmatch(f) and not is_junk_name(f))
  return out


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
  out = []
  root = os.path.abspath(root)
  for dirpath, dirnames, _ in os.walk(root):
    depth = dirpath[len(root):].count(os.sep)
    if depth >= max_depth:
      dirnames[:] = []
    dirnames.sort()
    if predicate(dirpath):
      out.append(dirpath)
  return out


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


def load_frame(path: str, size: int = FRAME_SIZE) -> np.ndarray:
  """Reads an image as RGB uint8 (grayscale replicated), resized to ``size`` x ``size``."""
  try:
    return clip_frames.load_resized(path, size)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
    raise CorruptImageError(f'Cannot decode image {path}: {" ".join(str(e).split())}') from e


def features(classes: Sequence[str], size: int = FRAME_SIZE,
             alignment: bool = True) -> tfds.features.FeaturesDict:
  """The feature layout shared by every builder.

  With ``alignment`` each example also stores how its frames were made from the files:
  ``align_method`` ('landmarks' | 'haar' | 'centre' (no face found) | 'none' (resized as
  released)), ``align_transform`` (the (2, 3) affine map from source pixel coordinates, pixel
  centres at integers, to stored pixel coordinates, the same for every frame) and ``align_frame``
  (the index of the stored frame the transform was estimated on, -1 if none).
  """
  feats = {
      'frames': tfds.features.Sequence(tfds.features.Image(shape=(size, size, 3),
                                                           encoding_format='png')),
      'frame_numbers': tfds.features.Sequence(np.int64),
      'dataset': tfds.features.Text(),
      'subject': tfds.features.Text(),
      'clip': tfds.features.Text(),
      'emotion': tfds.features.Text(),
      'label': tfds.features.ClassLabel(names=list(classes)),
      'onset': np.int64,
      'apex': np.int64,
      'offset': np.int64,
      'apex_index': np.int32,
      'action_units': tfds.features.Text(),
      'fps': np.float32,
  }
  if alignment:
    feats.update({
        'align_method': tfds.features.Text(),
        'align_transform': tfds.features.Tensor(shape=(2, 3), dtype=np.float64),
        'align_frame': np.int32,
    })
  return tfds.features.FeaturesDict(feats)


def example(clip: Clip, prepared: Dict[str, Any]) -> Dict[str, Any]:
  """The example dict of a clip whose frames ``prepared`` (a :func:`clip_frames.process_clip`
  result) holds as stored PNG bytes, one per frame of ``clip.frames``."""
  return {
      'frames': list(prepared['pngs']),
      'frame_numbers': [int(n) for n in clip.frame_numbers],
      'dataset': clip.dataset,
      'subject': clip.subject,
      'clip': clip.clip,
      'emotion': clip.emotion,
      'label': clip.label,
      'onset': clip.onset,
      'apex': clip.apex,
      'offset': clip.offset,
      'apex_index': clip.apex_index,
      'action_units': clip.action_units,
      'fps': clip.fps,
      'align_method': prepared['method'],
      'align_transform': np.asarray(prepared['transform'], np.float64),
      'align_frame': int(prepared['frame']),
  }


class MEBuilder(tfds.core.GeneratorBasedBuilder):
  """Base class: subclasses implement :meth:`_scan`, returning validated clips and a report.

  Preparation options (passed by ``prepare.builder_for`` from ``config.data``):

  * ``align``: 'auto' | 'always' | 'never' (see ``tfds_builders/pipeline.py``), ``align_margin``:
    the face margin. Both are part of the dataset's identity: anything but the defaults ('auto',
    ``face_align.DEFAULT_MARGIN``) is stored under its own builder-config name
    (``<config>-align_<mode>[-margin_<m>]``), so changing them prepares a new dataset instead of
    silently reusing the old one.
  * ``skip_bad_frames``: an unreadable frame is an error naming the file (default) or is skipped and
    listed in the report (a clip left with fewer than 2 frames is skipped and listed).
  * ``prepare_workers``: processes decoding and encoding clips (0 = every core).
  """

  VERSION = tfds.core.Version(prepared_version.DATASET_VERSION)
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'Apex after the offset kept when its frames are on disk; emotion aliases; every '
               'dropped row reported; CASME II configs name their sheet; preparation record.',
      '2.0.0': 'Faces aligned at preparation (one similarity per clip) where the release has no '
               'face crops; each example stores its alignment method and transform.',
      '2.1.0': 'Aligned frames: the antialiasing area resize reads only the part of the frame the '
               'aligned face comes from (a different resampling grid phase: stored pixels differ '
               'from 2.0.0 by 0.6 grey levels on average); PNGs encoded with faster settings '
               '(lossless, same pixels).',
      '2.2.0': 'Aligned frames of 600 px and more (SAMM, CAS(ME)^3): the dlib face box is searched '
               'on the frame reduced to half size (landmarks still at full size), so the eyes, '
               'and with them the transform, move by up to about 1 source pixel.',
  }
  FRAME_SIZE = FRAME_SIZE
  DATASET = ''
  EXPECTED_LAYOUT = ''
  ALIGNS_FACES = True  # False for generated data (nothing to align, no alignment features)

  def __init__(self, *, align: str = 'auto', align_margin: float = face_align.DEFAULT_MARGIN,
               skip_bad_frames: bool = False, prepare_workers: int = 0, **kwargs):
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    if align not in pipeline.ALIGN_MODES:
      raise DatasetLayoutError(f'config.data.align is {align!r}; expected one of '
                               f'{list(pipeline.ALIGN_MODES)}')
    if not 0.0 <= float(align_margin) <= 2.0:
      raise DatasetLayoutError(f'config.data.align_margin is {align_margin}; expected 0..2')
    self._align = align
    self._align_margin = float(align_margin)
    self._skip_bad_frames = bool(skip_bad_frames)
    self._prepare_workers = int(prepare_workers)
    suffix = self.identity_suffix(align, float(align_margin))
    if suffix and self.ALIGNS_FACES:
      config = kwargs.get('config')
      if config is None:
        config = self.BUILDER_CONFIGS[0] if self.BUILDER_CONFIGS else None
      elif isinstance(config, str):
        config = next((c for c in self.BUILDER_CONFIGS if c.name == config), None)
        if config is None:
          raise DatasetLayoutError(f'{self.DATASET}: unknown builder config {kwargs["config"]!r}')
      if config is not None:
        kwargs['config'] = dataclasses.replace(config, name=config.name + suffix)
    super().__init__(**kwargs)

  @staticmethod
  def identity_suffix(align: str, margin: float) -> str:
    """What ``align`` and ``margin`` add to the builder-config name ('' for the defaults)."""
    suffix = '' if align == 'auto' else f'-align_{align}'
    if align != 'never' and margin != face_align.DEFAULT_MARGIN:
      suffix += f'-margin_{margin:g}'
    return suffix

  @property
  def classes(self) -> List[str]:
    return list(self.builder_config.classes)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=features(self.classes, self.FRAME_SIZE, self.ALIGNS_FACES),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _scan(self, manual_dir: str) -> Tuple[List[Clip], Report]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    manual_dir = check_manual_dir(str(dl_manager.manual_dir), self.DATASET, self.EXPECTED_LAYOUT)
    clips, report = self._scan(manual_dir)
    if not clips:
      raise DatasetLayoutError(f'{self.DATASET}: found no usable clip under {manual_dir} '
                               f'({self.EXPECTED_LAYOUT}). Problems: '
                               f'{json.dumps(report.issues[:10])}')
    clips.sort(key=lambda c: (frame_files.natural_key(c.subject),
                              frame_files.natural_key(c.clip)))
    keys = [c.key for c in clips]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
      raise DatasetLayoutError(f'{self.DATASET}: duplicate clips {dup[:5]}')
    # Frames are decoded, checked, aligned and encoded on all cores while TFDS writes the clips
    # already done (_generate_examples). The report is stored when the last clip is in.
    tasks = [clip_frames.ClipTask(i, tuple(c.frames), self.FRAME_SIZE,
                                  pipeline.should_align(self._align, c.dataset, c.frames[0]),
                                  self._align_margin, c.apex_index)
             for i, c in enumerate(clips)]
    workers = pipeline.num_workers(self._prepare_workers, sum(len(c.frames) for c in clips),
                                   len(clips))
    return {'train': self._generate_examples(clips, tasks, workers, report)}

  def _generate_examples(self, clips, tasks, workers, report):
    """Yields each clip's example as soon as the pool has it; then stores the report."""
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    stream = pipeline.stream_clips(tasks, workers)
    kept_clips, kept_results = [], []  # the results without their PNGs (the memory is TFDS's)
    sheet_frames = {}  # the contact sheet's onset frames, per subject
    try:
      for clip, res in zip(clips, stream):
        if res['bad'] and not self._skip_bad_frames:
          # Every clip is checked first, so that the error says how many frames are unreadable.
          self._refuse_bad_frames(clip, res, [r['bad'] for r in stream])  # not their PNGs
        clip, res = self._keep_readable(clip, res, report)
        if clip is None:
          continue
        kept_clips.append(clip)
        kept_results.append({k: v for k, v in res.items() if k != 'pngs'})
        pipeline.sheet_add(sheet_frames, clip.subject, next((p for p in res['pngs'] if p), None))
        yield clip.key, example(clip, res)
      if not kept_clips:
        raise DatasetLayoutError(f'{self.DATASET}: no clip has two readable frames')
      summary = report.summary(kept_clips, self.classes)
      sheet = os.path.join(self.data_dir, pipeline.CONTACT_SHEET)
      pipeline.contact_sheet(sheet, sheet_frames)
      summary['alignment'] = pipeline.alignment_summary(
          self._align, self._align_margin, [c.key for c in kept_clips], kept_results,
          pipeline.CONTACT_SHEET if os.path.exists(sheet) else '')
      self.info.metadata['preparation_report'] = summary
      self._last_report = summary  # pylint: disable=attribute-defined-outside-init
    finally:
      stream.close()

  @staticmethod
  def _refuse_bad_frames(clip: Clip, res: Dict[str, Any], rest_bad: Sequence[List[Any]]):
    """The one-line error for the first clip with unreadable frames, counting every clip's
    (``rest_bad``: the ``bad`` list of each later clip)."""
    path, msg = res['bad'][0]
    frames = len(res['bad']) + sum(len(b) for b in rest_bad)
    clips_bad = 1 + sum(1 for b in rest_bad if b)
    raise CorruptImageError(
        f'Cannot decode image {path} ({clip.key}): {msg}; {frames} unreadable frame(s) in '
        f'{clips_bad} clip(s), nothing was written. Replace them, or pass '
        '--config.data.skip_bad_frames=True to skip them and list them in the report.')

  def _keep_readable(self, clip, res, report):
    """``(clip, result)`` without its unreadable frames (each reported), or ``(None, None)`` for a
    clip left with fewer than 2 frames (reported)."""
    if not res['bad']:
      return clip, res
    for path, msg in res['bad']:
      report.add(clip.key, f'unreadable frame {path}: {msg}', 'skipped the frame')
    keep = [k for k, p in enumerate(res['pngs']) if p is not None]
    if len(keep) < 2:
      report.add(clip.key, f'only {len(keep)} readable frame(s)', 'skipped')
      return None, None
    if len(keep) < len(res['pngs']):
      clip = dataclasses.replace(clip, frames=[clip.frames[k] for k in keep],
                                 frame_numbers=[clip.frame_numbers[k] for k in keep])
      frame = res['frame']
      res = dict(res, pngs=[res['pngs'][k] for k in keep],
                 frame=keep.index(frame) if frame in keep else frame)
    return clip, res
