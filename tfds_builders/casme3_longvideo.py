"""The CAS(ME)^3 part A long-video builder (``casme3_longvideo``): colour videos at 30 fps.

Expected under ``manual_dir`` (any nesting up to 6 levels)::

  .../annotation/partA/CAS(ME)3_part_A_v2.xls          (sheets 'AU+Emotion' and 'eye blink')
  .../cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx         (optional: the ME emotions, sheet 'label')
  .../part_A/spNO.1/a/color/1.jpg ...                   (frames numbered from 1, unpadded)

Rules (each application is listed in the preparation report):

* sheet ``AU+Emotion`` (numbers stored as text): one row per expression, ``Expression type``
  ``Macro-expression`` -> ``mae``, ``Micro-expression`` -> ``me`` (the sheet's type is kept;
  CAS(ME)^3 defines an ME by onset -> apex <= 8 frames, not by its total length);
* sheet ``eye blink``: kept as ``negatives`` (hard negatives for a learned spotter);
* frames are indexed by their file names, never by position: most videos miss 7-8 frames at the
  start and a few in the middle (reported);
* an ME's emotion comes from the ``JpgIndex`` label sheet's row with the same subject, video,
  onset and offset (anger, disgust, fear, sad -> negative, happy -> positive, surprise, others);
* an apex outside onset..offset is set to the midpoint.
"""

import os
import re
from typing import Dict, List, Tuple

import tensorflow_datasets as tfds

from mpt_jax.spotting import metrics
from tfds_builders import annotations
from tfds_builders import discovery
from tfds_builders import longvideo
from tfds_builders import sheets

FPS = 30.0
SHEET_PATTERN = r'CAS\(ME\)3_part_A_v2\.xlsx?'
LABEL_PATTERN = r'cas\(me\)3_part_A_ME_label.*\.xlsx'
TYPES = {'macro-expression': 'mae', 'micro-expression': 'me'}


def _is_video_root(path: str) -> bool:
  subs = [d for d in discovery.subdirs(path) if re.fullmatch(r'spNO\.\d+', d)]
  return any(os.path.isdir(os.path.join(path, s, v, 'color'))
             for s in subs[:3] for v in discovery.subdirs(os.path.join(path, s))[:3])


def sources(manual_dir: str) -> Dict[str, str]:
  sheet = discovery.choose_file(manual_dir, 'casme3_longvideo', 'part A annotation', SHEET_PATTERN,
                                max_depth=6)
  if sheet is None:
    raise discovery.DatasetLayoutError(f'casme3_longvideo: no CAS(ME)3_part_A_v2.xls under '
                                       f'{manual_dir}{discovery.layout_hint(manual_dir)}')
  roots = discovery.find_dirs(manual_dir, _is_video_root, max_depth=6)
  if not roots:
    raise discovery.DatasetLayoutError(f'casme3_longvideo: no frame folders like '
                                       f'part_A/spNO.1/a/color/1.jpg under {manual_dir}')
  out = {'sheet': sheet, 'frames': roots[0]}
  labels = discovery.choose_file(manual_dir, 'casme3_longvideo', 'ME label sheet', LABEL_PATTERN,
                                 max_depth=6)
  if labels:
    out['emotion_sheet'] = labels
  return out


def _rows(path: str, sheet: str, columns) -> Tuple[List[Tuple[int, List]], Dict[str, int]]:
  header, rows = sheets.read_sheet(path, 'Subject', sheet=sheet)
  return rows, sheets.column_index(header, columns, path)


def scan(manual_dir: str) -> Tuple[List[longvideo.Video], annotations.Report]:
  report = annotations.Report('casme3_longvideo')
  src = sources(manual_dir)
  sheet, root = src['sheet'], src['frames']
  report.source = {'sheet': os.path.relpath(sheet, manual_dir),
                   'frames': os.path.relpath(root, manual_dir) or '.'}
  emotions: Dict[Tuple[str, str, int, int], str] = {}
  if 'emotion_sheet' in src:
    report.source['emotion_sheet'] = os.path.relpath(src['emotion_sheet'], manual_dir)
    rows, c = _rows(src['emotion_sheet'], 'label',
                    ('Subject', 'Filename', 'Onset', 'Offset', 'emotion'))
    for _, r in rows:
      onset, offset = sheets.to_int(r[c['Onset']]), sheets.to_int(r[c['Offset']])
      if onset is not None and offset is not None:
        emotions[(sheets.cell_text(r[c['Subject']]), sheets.cell_text(r[c['Filename']]),
                  onset, offset)] = sheets.cell_text(r[c['emotion']])
  else:
    report.add('casme3_longvideo', 'no ME label sheet (cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx)',
               'MEs stored without emotion')
  videos: Dict[Tuple[str, str], longvideo.Video] = {}
  for subject in [d for d in discovery.subdirs(root) if re.fullmatch(r'spNO\.\d+', d)]:
    for vid in discovery.subdirs(os.path.join(root, subject)):
      folder = os.path.join(root, subject, vid, 'color')
      if not os.path.isdir(folder):
        continue
      got = longvideo.add_video_frames(report, f'casme3_longvideo/{subject}/{vid}', folder, FPS)
      if got is not None:
        nums, paths, stride = got
        videos[(subject, vid)] = longvideo.Video('casme3_longvideo', subject, vid, FPS, paths,
                                                 nums, stride)
  base = os.path.basename(sheet)
  rows, c = _rows(sheet, 'AU+Emotion', ('Subject', 'Filename', 'Onset', 'Apex', 'Offset', 'AU',
                                        'Expression type'))
  for rownum, r in rows:
    where = f'{base}:AU+Emotion row {rownum}'
    subject, vid = sheets.cell_text(r[c['Subject']]), sheets.cell_text(r[c['Filename']])
    kind = TYPES.get(sheets.cell_text(r[c['Expression type']]).lower())
    if kind is None:
      report.add(where, f'Expression type {sheets.cell_text(r[c["Expression type"]])!r} is '
                 f'neither of {list(TYPES)}', 'skipped')
      continue
    video = videos.get((subject, vid))
    if video is None:
      report.add(where, f'no folder {subject}/{vid}/color', 'skipped')
      continue
    onset = longvideo.frame_number(report, where, r[c['Onset']], 'onset')
    offset = longvideo.frame_number(report, where, r[c['Offset']], 'offset')
    if onset is None or offset is None or offset < onset:
      report.add(where, f'onset/offset {sheets.cell_text(r[c["Onset"]])!r}/'
                 f'{sheets.cell_text(r[c["Offset"]])!r} not an interval', 'skipped')
      continue
    apex = annotations.fix_apex(report, where, onset, r[c['Apex']], offset)
    detail = emotions.get((subject, vid, onset, offset), '') if kind == 'me' else ''
    if kind == 'me' and emotions and not detail:
      report.add(where, f'no label-sheet row for {subject}/{vid} {onset}..{offset}',
                 'ME stored without emotion')
    e = longvideo.Expression(onset, apex, offset, kind, emotion=metrics.coarse_emotion(detail),
                             emotion_detail=detail.lower(),
                             action_units=sheets.cell_text(r[c['AU']]),
                             name=f'{vid}_{onset}')
    longvideo.add_expression(report, where, video, e)
  rows, c = _rows(sheet, 'eye blink', ('Subject', 'Filename', 'Onset', 'Offset'))
  for rownum, r in rows:
    video = videos.get((sheets.cell_text(r[c['Subject']]), sheets.cell_text(r[c['Filename']])))
    onset, offset = sheets.to_int(r[c['Onset']]), sheets.to_int(r[c['Offset']])
    if video is None or onset is None or offset is None or offset < onset:
      report.add(f'{base}:eye blink row {rownum}', 'no such video or not an interval', 'skipped')
      continue
    video.negatives.append((onset, offset))
  return longvideo.finish_scan(videos, report)


class Casme3Longvideo(longvideo.LongVideoBuilder):
  """CAS(ME)^3 part A long videos (Li et al. 2022), 30 fps colour; eye blinks as negatives."""

  DATASET = 'casme3_longvideo'
  EXPECTED_LAYOUT = ('annotation/partA/CAS(ME)3_part_A_v2.xls and part_A/spNO.1/a/color/1.jpg '
                     'frames, as unpacked from the CAS(ME)^3 release')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request CAS(ME)^3 from http://casme.psych.ac.cn/casme/e4 (licence agreement), unpack part A and
  its annotation and pass the folder as manual_dir.
  """
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name='default',
                                             description='part A colour videos, faces aligned')]

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir)

  def _scan_videos(self, manual_dir):
    return scan(manual_dir)
