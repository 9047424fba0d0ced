"""The SAMM builder: ``SAMM_Micro_FACS_Codes_v2.xlsx`` (sheet ``MICRO_ONLY``) + grayscale frames.

Expected under ``manual_dir`` (nesting such as ``SAMM/SAMM`` is fine)::

  SAMM_Micro_FACS_Codes_v2.xlsx            (13-row preamble; header row 14 starts with 'Subject')
  006/006_1_2/006_05562.jpg ...            (frame numbers padded to 4 or 5 digits per video)

Rules (each application is listed in the preparation report): the header row is found by its
``Subject`` cell; ``Subject`` text ``'006'`` or number ``6`` both give the LOSO id ``006``; frame
numbers are the integer after the last ``_`` (natural sort); an apex outside onset..offset is set to
the midpoint; the ``Duration`` formula is never needed; grayscale frames are replicated to RGB.

Builder configs: ``5class`` (anger, contempt, happiness, surprise, other; 136 clips, 27 subjects),
``all`` (all eight emotions, 159 clips).
"""

import dataclasses
import os
import re
from typing import List, Optional, Tuple

import tensorflow_datasets as tfds

from tfds_builders import common

FIVE_CLASSES = ('anger', 'contempt', 'happiness', 'surprise', 'other')
ALL_CLASSES = ('anger', 'contempt', 'happiness', 'surprise', 'other', 'disgust', 'fear', 'sadness')
SHEET_PATTERN = r'.*Micro_FACS_Codes.*\.xlsx'
FPS = 200.0


@dataclasses.dataclass
class SammConfig(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = FIVE_CLASSES


def _is_subject_root(path: str) -> bool:
  for s in [d for d in common.subdirs(path) if re.fullmatch(r'\d{3}', d)][:3]:
    for clip in common.subdirs(os.path.join(path, s))[:2]:
      if clip.startswith(s + '_') and common.list_frames(os.path.join(path, s, clip)):
        return True
  return False


def find_frame_root(manual_dir: str) -> Optional[str]:
  roots = common.find_dirs(manual_dir, _is_subject_root)
  return roots[0] if roots else None


def normalise_emotion(text: str) -> str:
  e = text.strip().lower()
  return 'other' if e == 'others' else e


def scan(manual_dir: str, config: SammConfig) -> Tuple[List[common.Clip], common.Report]:
  report = common.Report('samm')
  sheets = common.find_files(manual_dir, SHEET_PATTERN)
  if not sheets:
    raise common.DatasetLayoutError(f'samm: no SAMM_Micro_FACS_Codes*.xlsx sheet under {manual_dir}')
  sheet = sheets[0]
  root = find_frame_root(manual_dir)
  if root is None:
    raise common.DatasetLayoutError(f'samm: no frame folders like 006/006_1_2/006_05562.jpg under '
                                    f'{manual_dir}')
  report.source = {'sheet': os.path.relpath(sheet, manual_dir),
                   'frames': os.path.relpath(root, manual_dir) or '.'}
  clips, annotated = common.clips_from_sheet(
      'samm', sheet, root, manual_dir, lambda n: f'{n:03d}', normalise_emotion, config.classes,
      FPS, report, sheet_name='MICRO_ONLY')
  common.report_unannotated_folders(root, annotated, report)
  return clips, report


class Samm(common.MEBuilder):
  """SAMM spontaneous micro-facial movements (Davison et al. 2016), 200 fps grayscale."""

  DATASET = 'samm'
  EXPECTED_LAYOUT = ('SAMM_Micro_FACS_Codes_v2.xlsx and frame folders 006/006_1_2/006_05562.jpg, '
                     'as unpacked from the SAMM release')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request SAMM from https://helward.mmu.ac.uk/STAFF/M.Yap/dataset.php (licence agreement), unpack
  it and pass the folder holding the subject folders and the FACS codes sheet as manual_dir.
  """
  BUILDER_CONFIGS = [
      SammConfig(name='5class', description='anger, contempt, happiness, surprise, other'),
      SammConfig(name='all', classes=ALL_CLASSES, description='all eight estimated emotions'),
  ]

  def _scan(self, manual_dir):
    return scan(manual_dir, self.builder_config)
