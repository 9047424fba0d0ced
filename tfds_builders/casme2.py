"""The CASME II builder: ``Cropped`` (default) or ``CASME2_RAW_selected`` frames + a coding sheet.

Expected under ``manual_dir`` (any nesting depth up to 5; doubled folders such as ``Cropped/Cropped``
are fine)::

  CASME2-coding-20190701.xlsx and/or CASME2-coding-20140508.xlsx (or CASME2_label_Ver_2.xls)
  Cropped/sub01/EP02_01f/reg_img46.jpg ...             (also Cropped-updated/Cropped/...)
  CASME2_RAW_selected/sub01/EP02_01f/img46.jpg ...     (for the ``*_raw`` configs)

Rules (each application is listed in the preparation report):

* the sheet's header row is found by its ``Subject`` cell; columns are matched by name, so the two
  blank columns and an extra ``Objective Classes`` column do not matter;
* ``Subject`` may be a number (``1``) or text (``'01'``): the LOSO id is ``sub%02d``;
* emotions are lower-cased with aliases (``other`` -> ``others``, ``happy`` -> ``happiness``,
  ``sad`` -> ``sadness``); every row left out (emotion outside the protocol or unknown) is reported;
* an apex after the offset whose frames are in the clip folder moves the offset to it (the
  20140508 sheet's sub12/EP09_06); an apex of ``'/'``, or outside onset..offset and not on disk, is
  set to the midpoint (``drop_slash_apex`` drops the ``'/'`` rows instead);
* frames are those of the clip folder numbered onset..offset, naturally sorted; missing frames are
  reported, extra ones ignored; a row without a folder and a folder without a row are reported and
  skipped.

Builder configs name the coding sheet they read, so one name always means one set of clips:
``5class`` (happiness, surprise, disgust, repression, others; ``CASME2-coding-20190701.xlsx``, 249
clips), ``5class_20140508`` (the original sheet, 246 clips), ``5class_ver2`` (the legacy
``CASME2_label_Ver_2.xls``), ``5class_raw`` (20190701, raw frames) and ``all`` (20190701, all seven
emotions). A config whose sheet is absent stops with the configs the sheets present would allow.
"""

import dataclasses
import os
import re
from typing import Dict, List, Optional, Tuple

import tensorflow_datasets as tfds

from tfds_builders import annotations
from tfds_builders import discovery
from tfds_builders import me_builder

FIVE_CLASSES = ('happiness', 'surprise', 'disgust', 'repression', 'others')
ALL_CLASSES = ('happiness', 'surprise', 'disgust', 'repression', 'others', 'fear', 'sadness')
SHEET_PATTERNS = {
    '20190701': r'CASME2-coding-20190701\.xlsx',
    '20140508': r'CASME2-coding-20140508\.xlsx',
    'ver2': r'CASME2_label_Ver_2\.xls',
}
SHEET_CONFIG = {'20190701': '5class', '20140508': '5class_20140508', 'ver2': '5class_ver2'}
EMOTIONS = annotations.Emotions(ALL_CLASSES, (('other', 'others'), ('happy', 'happiness'),
                                         ('sad', 'sadness'), ('surprised', 'surprise')))
FPS = 200.0


@dataclasses.dataclass
class Casme2Config(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = FIVE_CLASSES
  # The coding sheet: '20190701' | '20140508' | 'ver2'; 'newest' (the newest present) only for the
  # composite, whose membership comes from the official list, not from the sheet.
  sheet: str = '20190701'
  frames: str = 'cropped'  # 'cropped' | 'raw'
  drop_slash_apex: bool = False  # drop the rows whose apex is '/' (else: apex at the midpoint)


def _is_subject_root(path: str, prefix: str) -> bool:
  subs = [d for d in discovery.subdirs(path) if re.fullmatch(r'sub\d\d', d)]
  if not subs:
    return False
  for s in subs[:3]:
    for ep in discovery.subdirs(os.path.join(path, s))[:2]:
      names = os.listdir(os.path.join(path, s, ep))
      if any(re.fullmatch(prefix + r'\d+\.(jpg|jpeg|png|bmp)', n, re.I) for n in names):
        return True
  return False


def find_frame_root(manual_dir: str, frames: str) -> Optional[str]:
  """The folder holding ``subXX/EPxx/`` with cropped (``reg_img``) or raw (``img``) frames.

  Raw frames: the onset..offset selections (a folder named ``*selected*`` below ``manual_dir``) are
  preferred over the full CASME2-RAW sequences. Only the path below ``manual_dir`` counts, so a
  ``manual_dir`` such as ``/data/selected_sets/CASME2`` does not make every candidate look selected.
  """
  prefix = 'reg_img' if frames == 'cropped' else 'img'
  manual_dir = os.path.abspath(manual_dir)
  roots = discovery.find_dirs(manual_dir, lambda p: _is_subject_root(p, prefix))
  if frames == 'raw':
    roots.sort(key=lambda p: ('selected' not in os.path.relpath(p, manual_dir).lower(), len(p)))
  return roots[0] if roots else None


def find_sheet(manual_dir: str, which: str) -> Tuple[str, str]:
  """``(version, path)`` of the coding sheet to use (the config's; 'newest': the newest present)."""
  order = ['20190701', '20140508', 'ver2'] if which == 'newest' else [which]
  for version in order:
    path = discovery.choose_file(manual_dir, 'casme2', 'coding sheet', SHEET_PATTERNS[version])
    if path:
      return version, path
  want = ' or '.join(SHEET_PATTERNS[v].replace('\\', '') for v in order)
  present = [v for v in SHEET_PATTERNS if v not in order and
             discovery.find_files(manual_dir, SHEET_PATTERNS[v])]
  hint = ''
  if present:
    hint = ('; the sheet(s) present are read by --config.data.builder_config=' +
            ' or '.join(SHEET_CONFIG[v] for v in present))
  raise discovery.DatasetLayoutError(f'casme2: no coding sheet {want} under {manual_dir}{hint}'
                                     f'{discovery.layout_hint(manual_dir) if not present else ""}')


def sources(manual_dir: str, config: Casme2Config) -> Dict[str, str]:
  """The files the prepared data is made from: ``sheet``, ``sheet_version``, ``frames`` root."""
  version, sheet = find_sheet(manual_dir, config.sheet)
  root = find_frame_root(manual_dir, config.frames)
  if root is None:
    layout = ('Cropped/subXX/EPxx/reg_imgN.jpg' if config.frames == 'cropped'
              else 'CASME2_RAW_selected/subXX/EPxx/imgN.jpg')
    raise discovery.DatasetLayoutError(f'casme2: no frame folders like {layout} under {manual_dir}')
  return {'sheet': sheet, 'sheet_version': version, 'frames': root}


def scan(manual_dir: str, config: Casme2Config
         ) -> Tuple[List[annotations.Clip], annotations.Report]:
  """Parses the sheet and validates every clip folder."""
  report = annotations.Report('casme2')
  src = sources(manual_dir, config)
  root = src['frames']
  report.source = {'sheet': os.path.relpath(src['sheet'], manual_dir),
                   'sheet_version': src['sheet_version'],
                   'frames': os.path.relpath(root, manual_dir) or '.',
                   'frame_variant': config.frames}
  clips, annotated = annotations.clips_from_sheet(
      'casme2', src['sheet'], root, manual_dir, lambda n: f'sub{n:02d}', EMOTIONS,
      config.classes, FPS, report, drop_slash_apex=config.drop_slash_apex)
  annotations.report_unannotated_folders(root, annotated, report)
  return clips, report


class Casme2(me_builder.MEBuilder):
  """CASME II micro-expressions (Yan et al. 2014), 200 fps, LOSO by subject (``subXX``)."""

  DATASET = 'casme2'
  EXPECTED_LAYOUT = ('a CASME2-coding-*.xlsx sheet and Cropped/subXX/EPxx/reg_imgN.jpg frames, '
                     'as unpacked from the CASME II release')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request CASME II from http://casme.psych.ac.cn/casme/e2 (licence agreement), unpack it and pass
  the folder holding the coding sheet and the Cropped/ frames as manual_dir.
  """
  BUILDER_CONFIGS = [
      Casme2Config(name='5class',
                   description='5 classes from CASME2-coding-20190701.xlsx (249 clips), cropped'),
      Casme2Config(name='5class_20140508', sheet='20140508',
                   description='5 classes from CASME2-coding-20140508.xlsx (246 clips), cropped'),
      Casme2Config(name='5class_ver2', sheet='ver2',
                   description='5 classes from the legacy CASME2_label_Ver_2.xls, cropped'),
      Casme2Config(name='5class_raw', frames='raw',
                   description='5 classes from the 20190701 sheet, CASME2_RAW_selected frames'),
      Casme2Config(name='all', classes=ALL_CLASSES,
                   description='all 7 emotions from the 20190701 sheet, cropped'),
  ]

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir, self.builder_config)

  def _scan(self, manual_dir):
    return scan(manual_dir, self.builder_config)
