"""The annotation rules shared by the builders, and the records they produce.

A builder turns each row of its dataset's annotation into a :class:`Clip` (every path and frame
checked) and lists every quirk it fixed or row it skipped in a :class:`Report`, with the rule that
applied. The rules written here:

* frames: a clip's frames are the files of its folder numbered onset..offset (:func:`select_frames`;
  gaps are kept and reported, a duplicate number keeps the first file);
* apex: ``'/'``, empty or outside onset..offset becomes the midpoint (:func:`fix_apex`), unless the
  apex frame is on disk past the offset (or before the onset), which then moves to it
  (:func:`resolve_apex`);
* emotions: each dataset's spellings and aliases (:class:`Emotions`); a row whose emotion is
  unknown or outside the protocol's classes is reported and skipped (:func:`protocol_emotion`);
* the CASME II / SAMM style coding sheet, one folder per row (:func:`clips_from_sheet`), and the
  folders no row names (:func:`report_unannotated_folders`).
"""

import dataclasses
import os
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from mpt_jax import frame_files
from tfds_builders import discovery
from tfds_builders import sheets


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
  a = sheets.to_int(apex)
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
  return sheets.cell_text(apex) == SLASH_APEX


SHEET_COLUMNS = ('Subject', 'Filename', 'Onset Frame', 'Apex Frame', 'Offset Frame',
                 'Action Units', 'Estimated Emotion')


@dataclasses.dataclass(frozen=True)
class Emotions:
  """A dataset's emotion vocabulary: the spellings it uses and the aliases that map onto them."""
  known: Tuple[str, ...]  # every emotion the dataset's sheet uses, in its canonical spelling
  aliases: Tuple[Tuple[str, str], ...] = ()  # (other spelling, canonical spelling)

  def normalise(self, text: Any) -> str:
    """Lower-cased, inner spaces collapsed, aliases applied: ``'Others '`` -> ``'others'``."""
    e = ' '.join(sheets.cell_text(text).split()).lower()
    return dict(self.aliases).get(e, e)


def protocol_emotion(report: Report, where: str, text: Any, emotions: Emotions,
                     protocol: Iterable[str]) -> Optional[str]:
  """The normalised emotion of a row, or None after reporting why the row is dropped."""
  e = emotions.normalise(text)
  protocol = tuple(protocol)
  if e not in emotions.known:
    report.add(where, f'emotion {sheets.cell_text(text)!r} is none of the known '
               f'{list(emotions.known)}', 'skipped')
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
  header, rows = sheets.read_sheet(sheet, 'Subject', sheet=sheet_name)
  cols = sheets.column_index(header, SHEET_COLUMNS, sheet)
  clips, annotated = [], set()
  for rownum, row in rows:
    cell = lambda name: row[cols[name]] if cols[name] < len(row) else None  # pylint: disable=cell-var-from-loop,unnecessary-lambda-assignment
    where = f'{os.path.basename(sheet)} row {rownum}'
    subj = sheets.to_int(cell('Subject'))
    name = sheets.cell_text(cell('Filename'))
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
    onset, offset = sheets.to_int(cell('Onset Frame')), sheets.to_int(cell('Offset Frame'))
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
                      sheets.cell_text(cell('Action Units')), fps, paths, nums))
  return clips, annotated


def report_unannotated_folders(root: str, annotated: set, report: Report) -> None:
  """Reports every ``root/<subject>/<clip>`` folder that no sheet row names."""
  for subject in discovery.subdirs(root):
    for clip in discovery.subdirs(os.path.join(root, subject)):
      if (subject, clip) not in annotated:
        report.add(f'{subject}/{clip}', 'folder has no row in the coding sheet', 'skipped')
