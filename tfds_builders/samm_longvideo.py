"""The SAMM Long Videos builder (``samm_longvideo``): 147 videos of 30 subjects at 200 fps.

Expected under ``manual_dir`` (any nesting up to 5 levels)::

  SAMM_LongVideos_V3_Release.xlsx   (or V2 / V1; the newest present is read)
  SAMM_longvideos/006_1/006_1_0001.jpg ...   (frame numbers padded to 4 digits, 5 past 9,999)
  SAMM_Micro_FACS_Codes_v2.xlsx     (optional: the SAMM short-clip sheet, for the ME emotions)

The long-video sheet ``FACS_Movement_Only`` has a 9-row preamble and its header (``Subject,
Filename, Inducement Code, Onset, Apex, Offset, Duration, Type, Action Units, Notes``) on row 10;
``Filename`` is ``<subject>_<video>_<index>`` (``006_1_2``): the video is the folder ``006_1``.

Rules (each application is listed in the preparation report):

* ``Type`` ``Macro`` -> ``mae``, ``Micro - 1/2`` (any ``Micro...``) -> ``me``;
* fractional frame numbers (177 macro-expression cells, e.g. ``566.4``) are rounded half up, as
  the MEGC2020 baseline rounds them;
* onset 0 (10 rows; frames are 1-based) is set to 1, the video's first frame;
* apex -1 (not annotated, 6 rows), or outside onset..offset (the V1 sheet), is set to the midpoint;
* there is no emotion column: an ME takes the ``Estimated Emotion`` of the row with the same
  ``Filename`` in the short-clip sheet (when present), mapped to negative (anger, contempt,
  disgust, fear, sadness), positive (happiness), surprise or others; MEs without a match, and
  every MaE, have no emotion;
* the frames are taken every 7th (working rate 200 / 7 = 28.6 fps); intervals stay in the source
  frame numbers.
"""

import os
import re
from typing import Dict, List, Optional, Tuple

import tensorflow_datasets as tfds

from mpt_jax.spotting import metrics
from tfds_builders import annotations
from tfds_builders import discovery
from tfds_builders import longvideo
from tfds_builders import sheets

FPS = 200.0
SHEET_PATTERN = r'SAMM_LongVideos_V(\d+)_Release\.xlsx'
WORKSHEET = 'FACS_Movement_Only'
SHORT_PATTERN = r'.*Micro_FACS_Codes.*\.xlsx'
SHORT_NAME = 'SAMM_Micro_FACS_Codes_v2.xlsx'
COLUMNS = ('Subject', 'Filename', 'Onset', 'Apex', 'Offset', 'Type', 'Action Units')


def _is_frame_root(path: str) -> bool:
  for v in [d for d in discovery.subdirs(path) if re.fullmatch(r'\d{3}_\d+', d)][:3]:
    names = os.listdir(os.path.join(path, v))[:50]
    if any(re.fullmatch(re.escape(v) + r'_\d+\.(jpg|jpeg|png|bmp)', n, re.I) for n in names):
      return True
  return False


def sources(manual_dir: str) -> Dict[str, str]:
  found = sorted(discovery.find_files(manual_dir, SHEET_PATTERN),
                 key=lambda p: int(re.search(r'_V(\d+)_', os.path.basename(p)).group(1)))
  if not found:
    raise discovery.DatasetLayoutError(f'samm_longvideo: no SAMM_LongVideos_V*_Release.xlsx sheet '
                                       f'under {manual_dir}{discovery.layout_hint(manual_dir)}')
  newest = int(re.search(r'_V(\d+)_', os.path.basename(found[-1])).group(1))
  same = [p for p in found if f'_V{newest}_' in os.path.basename(p)]
  if len({discovery.file_sha256(p) for p in same}) > 1:
    raise discovery.DatasetLayoutError(f'samm_longvideo: several different V{newest} sheets under '
                                       f'{manual_dir}: {same}; keep only the one to use')
  roots = discovery.find_dirs(manual_dir, _is_frame_root)
  if not roots:
    raise discovery.DatasetLayoutError(f'samm_longvideo: no frame folders like '
                                       f'SAMM_longvideos/006_1/006_1_0001.jpg under {manual_dir}')
  out = {'sheet': same[0], 'sheet_version': f'V{newest}', 'frames': roots[0]}
  short = discovery.choose_file(manual_dir, 'samm_longvideo', 'short-clip FACS codes sheet',
                                SHORT_PATTERN, (SHORT_NAME,))
  if short is not None:
    out['emotion_sheet'] = short
  return out


def short_clip_emotions(path: str) -> Dict[str, str]:
  """``{Filename: Estimated Emotion}`` of the SAMM short-clip sheet (its micro-movements)."""
  header, rows = sheets.read_sheet(path, 'Subject', sheet='MICRO_ONLY')
  cols = sheets.column_index(header, ('Filename', 'Estimated Emotion'), path)
  return {sheets.cell_text(r[cols['Filename']]): sheets.cell_text(r[cols['Estimated Emotion']])
          for _, r in rows if sheets.cell_text(r[cols['Filename']])}


def _type(text: str) -> Optional[str]:
  t = text.strip().lower()
  if t.startswith('macro'):
    return 'mae'
  if t.startswith('micro'):
    return 'me'
  return None


def scan(manual_dir: str) -> Tuple[List[longvideo.Video], annotations.Report]:
  report = annotations.Report('samm_longvideo')
  src = sources(manual_dir)
  sheet, root = src['sheet'], src['frames']
  report.source = {'sheet': os.path.relpath(sheet, manual_dir),
                   'sheet_version': src['sheet_version'],
                   'frames': os.path.relpath(root, manual_dir) or '.'}
  emotions = {}
  if 'emotion_sheet' in src:
    report.source['emotion_sheet'] = os.path.relpath(src['emotion_sheet'], manual_dir)
    emotions = short_clip_emotions(src['emotion_sheet'])
  else:
    report.add('samm_longvideo', f'no short-clip sheet {SHORT_NAME} (the ME emotions)',
               'MEs stored without emotion (spotting works; STR needs the emotions)')
  videos: Dict[str, longvideo.Video] = {}
  for vdir in [d for d in discovery.subdirs(root) if re.fullmatch(r'\d{3}_\d+', d)]:
    got = longvideo.add_video_frames(report, f'samm_longvideo/{vdir}', os.path.join(root, vdir),
                                     FPS)
    if got is not None:
      nums, paths, stride = got
      videos[vdir] = longvideo.Video('samm_longvideo', vdir.split('_')[0], vdir, FPS, paths, nums,
                                     stride)
  header, rows = sheets.read_sheet(sheet, 'Subject', sheet=WORKSHEET)
  cols = sheets.column_index(header, COLUMNS, sheet)
  base = os.path.basename(sheet)
  for rownum, r in rows:
    where = f'{base} row {rownum}'
    cell = lambda name, r=r: r[cols[name]] if cols[name] < len(r) else None  # pylint: disable=all
    name = sheets.cell_text(cell('Filename'))
    parts = name.split('_')
    if len(parts) < 3 or not all(p.isdigit() for p in parts):
      report.add(where, f'Filename {name!r} is not <subject>_<video>_<index>', 'skipped')
      continue
    kind = _type(sheets.cell_text(cell('Type')))
    if kind is None:
      report.add(where, f'Type {sheets.cell_text(cell("Type"))!r} is neither Macro nor Micro',
                 'skipped')
      continue
    video = videos.get('_'.join(parts[:2]))
    if video is None:
      report.add(where, f'no folder {"_".join(parts[:2])} for {name}', 'skipped')
      continue
    onset = longvideo.frame_number(report, where, cell('Onset'), 'onset')
    offset = longvideo.frame_number(report, where, cell('Offset'), 'offset')
    apex = longvideo.frame_number(report, where, cell('Apex'), 'apex')
    if onset is None or offset is None:
      report.add(where, f'onset/offset {sheets.cell_text(cell("Onset"))!r}/'
                 f'{sheets.cell_text(cell("Offset"))!r} not numbers', 'skipped')
      continue
    if onset == 0:
      report.add(where, 'onset 0 (frames are 1-based)', 'onset set to 1, the first frame')
      onset = 1
    if offset < onset:
      report.add(where, f'offset {offset} before onset {onset}', 'skipped')
      continue
    apex_cell = '' if apex is None or apex < 0 else apex
    if apex is not None and apex < 0:
      report.add(where, f'apex {apex} (not annotated)', f'apex set to the midpoint '
                 f'{(onset + offset) // 2}')
    apex = annotations.fix_apex(report, where, onset, apex_cell, offset) if apex_cell != '' else (
        (onset + offset) // 2)
    detail = ''
    if kind == 'me' and emotions:
      detail = emotions.get(name, '')
      if not detail:
        report.add(where, f'{name} is not in the short-clip sheet', 'ME stored without emotion')
    e = longvideo.Expression(onset, apex, offset, kind, emotion=metrics.coarse_emotion(detail),
                             emotion_detail=detail.lower(),
                             action_units=sheets.cell_text(cell('Action Units')), name=name)
    longvideo.add_expression(report, where, video, e)
  return longvideo.finish_scan(videos, report)


class SammLongvideo(longvideo.LongVideoBuilder):
  """SAMM Long Videos (Yap et al. 2020; the MEGC2020-2021 spotting data), 200 fps grayscale."""

  DATASET = 'samm_longvideo'
  EXPECTED_LAYOUT = ('SAMM_LongVideos_V*_Release.xlsx and SAMM_longvideos/006_1/006_1_0001.jpg '
                     'frames, as unpacked from the SAMM Long Videos release')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request SAMM Long Videos from https://helward.mmu.ac.uk/STAFF/M.Yap/dataset.php (licence
  agreement), unpack it (with the SAMM short-clip FACS sheet for the emotions) and pass the folder
  as manual_dir.
  """
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='default',
                                             description='every video, faces aligned')]

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir)

  def _scan_videos(self, manual_dir):
    return scan(manual_dir)
