"""The SAMM builder: ``SAMM_Micro_FACS_Codes_v2.xlsx`` (sheet ``MICRO_ONLY``) + grayscale frames.

Expected under ``manual_dir`` (nesting such as ``SAMM/SAMM`` is fine)::

  SAMM_Micro_FACS_Codes_v2.xlsx            (13-row preamble; header row 14 starts with 'Subject')
  006/006_1_2/006_05562.jpg ...            (frame numbers padded to 4 or 5 digits per video)

Rules (each application is listed in the preparation report): the sheet is the released
``SAMM_Micro_FACS_Codes_v2.xlsx`` when present, else the one other ``*Micro_FACS_Codes*.xlsx``
(macOS ``._*`` files are ignored; several different candidates are refused, listing them); the
header row is found by its ``Subject`` cell; ``Subject`` text ``'006'`` or number ``6`` both give
the LOSO id ``006``; emotions are lower-cased with ``others`` -> ``other``, and every row left out
(emotion outside the protocol or unknown) is reported; frame numbers are the integer after the
last ``_`` (natural sort); an apex outside onset..offset is set to the midpoint unless its frame is
in the clip folder (then the onset/offset moves to it); the ``Duration`` formula is never needed;
grayscale frames are replicated to RGB.

Builder configs: ``5class`` (anger, contempt, happiness, surprise, other; 136 clips, 27 subjects),
``all`` (all eight emotions, 159 clips).
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

FIVE_CLASSES = ('anger', 'contempt', 'happiness', 'surprise', 'other')
ALL_CLASSES = ('anger', 'contempt', 'happiness', 'surprise', 'other', 'disgust', 'fear', 'sadness')
SHEET_PATTERN = r'.*Micro_FACS_Codes.*\.xlsx'
SHEET_NAME = 'SAMM_Micro_FACS_Codes_v2.xlsx'  # the released file name (preferred)
EMOTIONS = annotations.Emotions(ALL_CLASSES, (('others', 'other'), ('happy', 'happiness'),
                                         ('sad', 'sadness'), ('angry', 'anger')))
FPS = 200.0


@dataclasses.dataclass
class SammConfig(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = FIVE_CLASSES
  drop_slash_apex: bool = False  # drop the rows whose apex is '/' (else: apex at the midpoint)


def _is_subject_root(path: str) -> bool:
  for s in [d for d in discovery.subdirs(path) if re.fullmatch(r'\d{3}', d)][:3]:
    for clip in discovery.subdirs(os.path.join(path, s))[:2]:
      if clip.startswith(s + '_') and frame_files.list_frames(os.path.join(path, s, clip)):
        return True
  return False


def find_frame_root(manual_dir: str) -> Optional[str]:
  roots = discovery.find_dirs(manual_dir, _is_subject_root)
  return roots[0] if roots else None


def normalise_emotion(text: str) -> str:
  return EMOTIONS.normalise(text)


def sources(manual_dir: str) -> Dict[str, str]:
  """The files the prepared data is made from: the ``sheet`` and the ``frames`` root."""
  sheet = discovery.choose_file(manual_dir, 'samm', 'FACS codes sheet', SHEET_PATTERN,
                                (SHEET_NAME,))
  if sheet is None:
    raise discovery.DatasetLayoutError(f'samm: no {SHEET_NAME} (or other *Micro_FACS_Codes*.xlsx) '
                                       f'sheet under {manual_dir}'
                                       f'{discovery.layout_hint(manual_dir)}')
  root = find_frame_root(manual_dir)
  if root is None:
    raise discovery.DatasetLayoutError(f'samm: no frame folders like 006/006_1_2/006_05562.jpg '
                                       f'under {manual_dir}')
  return {'sheet': sheet, 'frames': root}


def scan(manual_dir: str, config: SammConfig) -> Tuple[List[annotations.Clip], annotations.Report]:
  report = annotations.Report('samm')
  src = sources(manual_dir)
  sheet, root = src['sheet'], src['frames']
  report.source = {'sheet': os.path.relpath(sheet, manual_dir),
                   'frames': os.path.relpath(root, manual_dir) or '.'}
  clips, annotated = annotations.clips_from_sheet(
      'samm', sheet, root, manual_dir, lambda n: f'{n:03d}', EMOTIONS, config.classes,
      FPS, report, sheet_name='MICRO_ONLY', drop_slash_apex=config.drop_slash_apex)
  annotations.report_unannotated_folders(root, annotated, report)
  return clips, report


class Samm(me_builder.MEBuilder):
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

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir)

  def _scan(self, manual_dir):
    return scan(manual_dir, self.builder_config)
