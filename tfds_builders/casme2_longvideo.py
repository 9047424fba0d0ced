"""The CAS(ME)^2 long-video builder (``casme2_longvideo``): the ``CASME_sq`` release, 30 fps.

Expected under ``manual_dir`` (any nesting up to 5 levels)::

  CAS(ME)^2code_final.xlsx   (also renamed: code_final.xlsx, CASME_sq_gt.xlsx)
  rawpic/s15/15_0101disgustingteeth/img001.jpg ...        (builder config ``rawpic``, default)
  <face-cropped long videos>/s15/15_0101.../img_1.jpg ... (builder config ``cropped``)

The workbook's sheets: ``CASFEcode_final`` (no header row; one row per expression: subject index,
expression id such as ``anger1_1``, onset, apex, offset, action units, coarse emotion, type,
self-reported emotion), ``naming rule1`` (file prefix ``15``, folder ``s15``, subject index 1) and
``naming rule2`` (video code ``0101``, video name ``disgust1``). A row's video is the folder
``<folder>/<prefix>_<code>*`` (the folder names go on with a description, matched on the first 7
characters).

Rules (each application is listed in the preparation report):

* frames are sorted by the number in their names: ``img999`` < ``img1000`` (the 3-digit padding
  that ``img1000`` outgrows) and ``img_1`` (the cropped release, unpadded); frame numbers are the
  sheet's, 1-based;
* ``type`` ``macro-expression`` -> ``mae``, ``micro-expression`` -> ``me``;
* offset 0 (not annotated; 44 macro-expressions): the offset is set to the apex, as the MEGC2020
  baseline and MEAN read it; when the apex is not after the onset either, to the onset;
* apex 0, or after the offset (3 macro-expressions), or before the onset: the apex is set to the
  midpoint of onset..offset (the annotated interval, which the metric scores, is kept);
* a row whose subject, video code or folder is not found, or whose interval is outside its video's
  frames, is skipped; a folder without a row is kept as a video without expressions;
* numeric video codes (``101``) are read as the 4-digit codes of the folder names (``0101``).
"""

import dataclasses
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
WORKBOOK_PATTERN = r'.*code_final.*\.xlsx|CASME_sq_gt\.xlsx'
WORKBOOK_NAME = 'CAS(ME)^2code_final.xlsx'
CODE_SHEET, RULE1, RULE2 = 'CASFEcode_final', 'naming rule1', 'naming rule2'
TYPES = {'macro-expression': 'mae', 'micro-expression': 'me'}
_VIDEO_DIR = re.compile(r'(\d+)_(\d{4})')


@dataclasses.dataclass
class Casme2LongConfig(tfds.core.BuilderConfig):
  frames: str = 'rawpic'  # 'rawpic' (img001.jpg, aligned) | 'cropped' (img_1.jpg, as released)


def _is_frame_root(path: str, cropped: bool) -> bool:
  for s in [d for d in discovery.subdirs(path) if re.fullmatch(r's\d+', d)][:3]:
    for v in [d for d in discovery.subdirs(os.path.join(path, s)) if _VIDEO_DIR.match(d)][:2]:
      names = os.listdir(os.path.join(path, s, v))[:50]
      pattern = r'img_\d+\.(jpg|jpeg|png|bmp)' if cropped else r'img\d+\.(jpg|jpeg|png|bmp)'
      if any(re.fullmatch(pattern, n, re.I) for n in names):
        return True
  return False


def sources(manual_dir: str, config: Casme2LongConfig) -> Dict[str, str]:
  book = discovery.choose_file(manual_dir, 'casme2_longvideo', 'coding workbook', WORKBOOK_PATTERN,
                               (WORKBOOK_NAME, 'code_final.xlsx'))
  if book is None:
    raise discovery.DatasetLayoutError(
        f'casme2_longvideo: no {WORKBOOK_NAME} (or code_final.xlsx / CASME_sq_gt.xlsx) under '
        f'{manual_dir}{discovery.layout_hint(manual_dir)}')
  cropped = config.frames == 'cropped'
  roots = discovery.find_dirs(manual_dir, lambda p: _is_frame_root(p, cropped))
  if not roots:
    layout = ('s15/15_0101.../img_1.jpg' if cropped
              else 'rawpic/s15/15_0101disgustingteeth/img001.jpg')
    other = ('; the rawpic/ frames are read by the default builder config' if cropped and
             discovery.find_dirs(manual_dir, lambda p: _is_frame_root(p, False)) else '')
    raise discovery.DatasetLayoutError(f'casme2_longvideo: no frame folders like {layout} under '
                                       f'{manual_dir}{other}')
  roots.sort(key=lambda p: (os.path.basename(p) != 'rawpic', len(p)))
  return {'sheet': book, 'frames': roots[0]}


def _code(value) -> str:
  text = sheets.cell_text(value)
  return text.zfill(4) if text.isdigit() else text


def naming_rules(book: str) -> Tuple[Dict[int, Tuple[str, str]], Dict[str, str]]:
  """``({subject index: (file prefix, folder)}, {video name: code})`` from the naming sheets."""
  subjects, videos = {}, {}
  for sheet, out in ((RULE1, subjects), (RULE2, videos)):
    name, rows = longvideo.read_all_rows(book, sheet)
    if name != sheet:
      raise discovery.DatasetLayoutError(f'{book}: no worksheet {sheet!r} (it maps the '
                                         f'{"subjects" if out is subjects else "video codes"})')
    for _, r in rows:
      r = list(r) + [None] * 3
      if out is subjects:
        index = sheets.to_int(r[2])
        if index is not None and sheets.cell_text(r[1]):
          prefix = sheets.cell_text(r[0])
          prefix = prefix.zfill(2) if prefix.isdigit() else prefix
          subjects[index] = (prefix, sheets.cell_text(r[1]))
      elif sheets.cell_text(r[0]) and sheets.cell_text(r[1]):
        videos[sheets.cell_text(r[1]).lower()] = _code(r[0])
  return subjects, videos


def scan(manual_dir: str, config: Casme2LongConfig
         ) -> Tuple[List[longvideo.Video], annotations.Report]:
  report = annotations.Report('casme2_longvideo')
  src = sources(manual_dir, config)
  book, root = src['sheet'], src['frames']
  report.source = {'sheet': os.path.relpath(book, manual_dir),
                   'frames': os.path.relpath(root, manual_dir) or '.',
                   'frame_variant': config.frames}
  subjects, codes = naming_rules(book)
  videos: Dict[Tuple[str, str], longvideo.Video] = {}
  for subject in [d for d in discovery.subdirs(root) if re.fullmatch(r's\d+', d)]:
    for vdir in [d for d in discovery.subdirs(os.path.join(root, subject)) if _VIDEO_DIR.match(d)]:
      where = f'casme2_longvideo/{subject}/{vdir}'
      got = longvideo.add_video_frames(report, where, os.path.join(root, subject, vdir), FPS)
      if got is None:
        continue
      nums, paths, stride = got
      videos[(subject, vdir[:7])] = longvideo.Video('casme2_longvideo', subject, vdir, FPS, paths,
                                                   nums, stride)
  sheet, rows = longvideo.read_all_rows(book, CODE_SHEET)
  if sheet != CODE_SHEET:
    report.add(os.path.basename(book), f'no worksheet {CODE_SHEET!r}', f'read {sheet!r}')
  for rownum, r in rows:
    r = list(r) + [None] * 9
    where = f'{os.path.basename(book)}:{sheet} row {rownum}'
    index, expr_id = sheets.to_int(r[0]), sheets.cell_text(r[1])
    onset = longvideo.frame_number(report, where, r[2], 'onset')
    if index is None or onset is None or not expr_id:
      report.add(where, f'not an annotation row ({[sheets.cell_text(c) for c in r[:4]]})',
                 'skipped')
      continue
    kind = TYPES.get(sheets.cell_text(r[7]).lower())
    if kind is None:
      report.add(where, f'type {sheets.cell_text(r[7])!r} is neither of {list(TYPES)}', 'skipped')
      continue
    if index not in subjects:
      report.add(where, f'subject index {index} is not in {RULE1!r}', 'skipped')
      continue
    prefix, folder = subjects[index]
    video_name = expr_id.rsplit('_', 1)[0].lower()
    if video_name not in codes:
      report.add(where, f'video {video_name!r} of {expr_id!r} is not in {RULE2!r}', 'skipped')
      continue
    video = videos.get((folder, f'{prefix}_{codes[video_name]}'))
    if video is None:
      report.add(where, f'no folder {folder}/{prefix}_{codes[video_name]}* for {expr_id!r}',
                 'skipped')
      continue
    apex = longvideo.frame_number(report, where, r[3], 'apex')
    offset = longvideo.frame_number(report, where, r[4], 'offset')
    apex = 0 if apex is None else apex
    offset = 0 if offset is None else offset
    if offset == 0:
      if apex > onset:
        report.add(where, 'offset 0 (not annotated)', f'offset set to the apex {apex}')
        offset = apex
      else:
        report.add(where, f'offset 0 and apex {apex} (neither annotated)',
                   f'offset and apex set to the onset {onset}')
        offset = apex = onset
    if offset < onset:
      report.add(where, f'offset {offset} before onset {onset}', 'skipped')
      continue
    apex = annotations.fix_apex(report, where, onset, apex if apex > 0 else '', offset)
    e = longvideo.Expression(onset, apex, offset, kind,
                             emotion=metrics.coarse_emotion(r[6]),
                             emotion_detail=sheets.cell_text(r[8]).lower(),
                             action_units=sheets.cell_text(r[5]), name=expr_id)
    longvideo.add_expression(report, where, video, e)
  return longvideo.finish_scan(videos, report)


class Casme2Longvideo(longvideo.LongVideoBuilder):
  """CAS(ME)^2 long videos (Qu et al. 2018; the MEGC2019-2021 spotting data), 30 fps."""

  DATASET = 'casme2_longvideo'
  EXPECTED_LAYOUT = ('CAS(ME)^2code_final.xlsx and rawpic/s15/15_0101disgustingteeth/img001.jpg '
                     'frames, as unpacked from the CAS(ME)^2 (CASME_sq) release')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request CAS(ME)^2 from http://casme.psych.ac.cn/casme/e3 (licence agreement), unpack it and pass
  the folder holding the code_final workbook and rawpic/ as manual_dir.
  """
  BUILDER_CONFIGS = [
      Casme2LongConfig(name='rawpic', description='rawpic/ long videos, faces aligned'),
      Casme2LongConfig(name='cropped', frames='cropped',
                       description='the face-cropped long-video release (img_N.jpg), as released'),
  ]

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir, self.builder_config)

  def _released_cropped(self) -> bool:
    return self.builder_config.frames == 'cropped'

  def _scan_videos(self, manual_dir):
    return scan(manual_dir, self.builder_config)
