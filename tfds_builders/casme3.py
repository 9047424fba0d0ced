"""The CAS(ME)^3 part A builder: micro-expressions cut from the long colour videos by the sheet.

Expected under ``manual_dir``::

  .../annotation/cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx   (columns Subject, Filename, Onset,
                                                             Apex, Offset, AU, Objective class, emotion)
  .../part_A/spNO.1/a/color/355.jpg ...                      (long videos, frames numbered from 1)
  or the pre-clipped supply: .../Part_A_ME_clip/spNO.1_a_355/355.jpg ...

Several micro-expressions come from one video (same Subject and Filename); a clip is named
``<Filename>_<Onset>`` and its LOSO id is the ``spNO.<n>`` subject. Two of them with the same onset
in one video are named ``<Filename>_<Onset>`` and ``<Filename>_<Onset>_2`` (sheet order, reported);
a row repeating another row exactly is reported and skipped. Emotions are lower-cased with aliases
(``Others`` -> ``others``, ``sadness`` -> ``sad``, ``happiness`` -> ``happy``); every row left out
(emotion outside the protocol or unknown) is reported. An apex outside onset..offset is set to the
midpoint (reported; the frames of the long video are no evidence for moving the onset or offset);
``drop_slash_apex`` drops the rows whose apex is ``'/'``.

Builder configs: ``3class`` (negative = disgust + fear + anger + sad, positive = happy, surprise),
``4class`` (+ others), ``7class`` (all seven emotions).
"""

import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

import tensorflow_datasets as tfds

from mpt_jax import frame_files
from tfds_builders import annotations
from tfds_builders import discovery
from tfds_builders import me_builder
from tfds_builders import sheets

FPS = 30.0
EMOTIONS = ('disgust', 'surprise', 'others', 'fear', 'anger', 'sad', 'happy')
THREE = {'disgust': 'negative', 'fear': 'negative', 'anger': 'negative', 'sad': 'negative',
         'happy': 'positive', 'surprise': 'surprise'}
FOUR = dict(THREE, others='others')
ALIASES = annotations.Emotions(EMOTIONS, (('other', 'others'), ('sadness', 'sad'),
                                     ('happiness', 'happy'), ('angry', 'anger'),
                                     ('disgusted', 'disgust')))
SHEET_PATTERN = r'cas\(me\)3_part_A_ME_label.*\.xlsx'
SHEET_NAME = 'cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx'  # the released file name (preferred)


@dataclasses.dataclass
class Casme3Config(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = ('negative', 'positive', 'surprise')
  mapping: Optional[Dict[str, str]] = None  # emotion -> class; None = identity
  drop_slash_apex: bool = False  # drop the rows whose apex is '/' (else: apex at the midpoint)


def _find_video_root(manual_dir: str) -> Optional[str]:
  def ok(p):
    subs = [d for d in discovery.subdirs(p) if re.fullmatch(r'spNO\.\d+', d)]
    return any(os.path.isdir(os.path.join(p, s, v, 'color'))
               for s in subs[:3] for v in discovery.subdirs(os.path.join(p, s))[:3])
  roots = discovery.find_dirs(manual_dir, ok, max_depth=6)
  return roots[0] if roots else None


def _find_clip_root(manual_dir: str) -> Optional[str]:
  def ok(p):
    return any(re.fullmatch(r'spNO\.\d+_[a-z]+\d*_\d+', d) for d in discovery.subdirs(p)[:20])
  roots = discovery.find_dirs(manual_dir, ok, max_depth=6)
  return roots[0] if roots else None


def sources(manual_dir: str) -> Dict[str, str]:
  """The files the prepared data is made from: the ``sheet`` and the ``frames`` root."""
  sheet = discovery.choose_file(manual_dir, 'casme3', 'annotation sheet', SHEET_PATTERN,
                                (SHEET_NAME,), max_depth=6)
  if sheet is None:
    raise discovery.DatasetLayoutError(f'casme3: no {SHEET_NAME} under {manual_dir}'
                                       f'{discovery.layout_hint(manual_dir)}')
  video_root, clip_root = _find_video_root(manual_dir), _find_clip_root(manual_dir)
  if video_root is None and clip_root is None:
    raise discovery.DatasetLayoutError(
        f'casme3: no frames under {manual_dir} (expected part_A/spNO.1/a/color/355.jpg or '
        'Part_A_ME_clip/spNO.1_a_355/355.jpg)')
  out = {'sheet': sheet, 'frames': video_root or clip_root}
  if video_root and clip_root:
    out['clip_frames'] = clip_root
  return out


def scan(manual_dir: str, config: Casme3Config
         ) -> Tuple[List[annotations.Clip], annotations.Report]:
  report = annotations.Report('casme3')
  src = sources(manual_dir)
  sheet = src['sheet']
  video_root = _find_video_root(manual_dir)
  clip_root = src.get('clip_frames') or (None if video_root else src['frames'])
  report.source = {'sheet': os.path.relpath(sheet, manual_dir),
                   'frames': os.path.relpath(src['frames'], manual_dir)}
  header, rows = sheets.read_sheet(sheet, 'Subject', sheet='label')
  cols = sheets.column_index(header, ['Subject', 'Filename', 'Onset', 'Apex', 'Offset', 'AU',
                                      'emotion'], sheet)
  mapping = config.mapping or {e: e for e in EMOTIONS}
  clips = []
  named: Dict[Tuple[str, str], Tuple[int, tuple]] = {}  # (subject, clip name) -> (row, its values)
  for rownum, row in rows:
    cell = lambda name: row[cols[name]] if cols[name] < len(row) else None  # pylint: disable=cell-var-from-loop,unnecessary-lambda-assignment
    subject, video = sheets.cell_text(cell('Subject')), sheets.cell_text(cell('Filename'))
    onset, offset = sheets.to_int(cell('Onset')), sheets.to_int(cell('Offset'))
    where = f'{os.path.basename(sheet)} row {rownum} ({subject}/{video})'
    if not re.fullmatch(r'spNO\.\d+', subject) or not video or onset is None or offset is None \
        or offset < onset:
      report.add(where, 'unreadable Subject/Filename/Onset/Offset', 'skipped')
      continue
    emotion = annotations.protocol_emotion(report, where, cell('emotion'), ALIASES, mapping)
    if emotion is None:
      continue
    if config.drop_slash_apex and annotations.is_slash_apex(cell('Apex')):
      report.add(where, "apex is '/'", 'skipped (drop_slash_apex)')
      continue
    values = tuple(sheets.cell_text(cell(c)) for c in ('Onset', 'Apex', 'Offset', 'AU'))
    values += (emotion,)
    name = f'{video}_{onset}'
    if (subject, name) in named:
      first_row, first_values = named[(subject, name)]
      if first_values == values:
        report.add(where, f'repeats row {first_row} exactly', 'skipped (duplicate row)')
        continue
      k = 2
      while (subject, f'{name}_{k}') in named:
        k += 1
      report.add(where, f'a second micro-expression with onset {onset} in video {video} '
                 f'(row {first_row} has the name {name})', f'named {name}_{k}')
      name = f'{name}_{k}'
    named[(subject, name)] = (rownum, values)
    folder = None
    if video_root and os.path.isdir(os.path.join(video_root, subject, video, 'color')):
      folder = os.path.join(video_root, subject, video, 'color')
    elif clip_root and os.path.isdir(os.path.join(clip_root, f'{subject}_{video}_{onset}')):
      folder = os.path.join(clip_root, f'{subject}_{video}_{onset}')
    if folder is None:
      report.add(where, 'no frame folder for this row', 'skipped')
      continue
    long_video = folder.endswith('color')
    frames = frame_files.list_frames(folder)
    apex = onset
    if frames:
      onset, apex, offset = annotations.resolve_apex(report, where, frames, onset, cell('Apex'),
                                                     offset, long_video=long_video)
    selected = annotations.select_frames(report, where, folder, onset, offset,
                                         long_video=long_video, frames=frames)
    if selected is None:
      continue
    nums, paths = selected
    clips.append(annotations.Clip('casme3', subject, name, emotion, mapping[emotion],
                                  onset, apex, offset, sheets.cell_text(cell('AU')), FPS, paths,
                                  nums))
  return clips, report


class Casme3(me_builder.MEBuilder):
  """CAS(ME)^3 part A micro-expressions (Li et al. 2022), 30 fps colour."""

  DATASET = 'casme3'
  EXPECTED_LAYOUT = ('the part A annotation sheet and part_A/spNO.N/<video>/color/<n>.jpg frames, '
                     'as unpacked from the CAS(ME)^3 release')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request CAS(ME)^3 from http://casme.psych.ac.cn/casme/e4 (licence agreement), unpack part A and
  pass the folder holding annotation/ and the frame folders as manual_dir.
  """
  BUILDER_CONFIGS = [
      Casme3Config(name='3class', classes=('negative', 'positive', 'surprise'), mapping=THREE),
      Casme3Config(name='4class', classes=('negative', 'positive', 'surprise', 'others'),
                   mapping=FOUR),
      Casme3Config(name='7class', classes=EMOTIONS, mapping=None),
  ]

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir)

  def _scan(self, manual_dir):
    return scan(manual_dir, self.builder_config)
