"""The SMIC builder (HS, VIS, NIR): labels from folder names, no annotation sheet.

Expected under ``manual_dir``::

  SMIC_all_cropped/HS/s1/micro/negative/s1_ne_01/reg_image559740.bmp ...   (default)
  SMIC_all_cropped/VIS/s1/micro/positive/s1_po_01/reg_06524.bmp ...
  SMIC_all_raw/HS/s1/micro/...                                            (if no cropped copy)
  .../s1/non_micro/...                                                    (ignored)

Rules: subjects are ``s<N>`` (unpadded, the LOSO id); the emotion is the folder name
(``negative``/``positive``/``surprise``), cross-checked with the clip name's token (``ne``/``po``/
``sur``, a mismatch is reported and the folder wins); frame numbers are the last integer of the file
name (6 to 8 digits in HS, 5 in VIS/NIR), naturally sorted; onset/offset are the first/last frame;
SMIC has no apex, so the middle frame stands in (SLSTT and MEB do the same).

Builder configs: ``hs_3class`` (164 clips, 16 subjects), ``vis_3class``, ``nir_3class``.
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

CLASSES = ('negative', 'positive', 'surprise')
TOKENS = {'ne': 'negative', 'po': 'positive', 'sur': 'surprise'}
FPS = {'HS': 100.0, 'VIS': 25.0, 'NIR': 25.0}


@dataclasses.dataclass
class SmicConfig(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = CLASSES
  modality: str = 'HS'


def frame_variant(manual_dir: str, root: str) -> str:
  """``'cropped'`` when the path below ``manual_dir`` names a crop (``SMIC_all_cropped``), else
  ``'raw'``. Only the part below ``manual_dir`` counts: ``/data/my_cropped_data/SMIC`` says nothing
  about the frames inside it."""
  rel = os.path.relpath(os.path.abspath(root), os.path.abspath(manual_dir))
  return 'cropped' if 'crop' in rel.lower() else 'raw'


def find_modality_root(manual_dir: str, modality: str) -> Optional[str]:
  """The ``<modality>`` folder holding ``s<N>/micro``; cropped copies are preferred over raw."""
  def ok(p):
    return os.path.basename(p).upper() == modality and any(
        re.fullmatch(r's\d+', d) and os.path.isdir(os.path.join(p, d, 'micro'))
        for d in discovery.subdirs(p))
  roots = discovery.find_dirs(manual_dir, ok)
  roots.sort(key=lambda p: (frame_variant(manual_dir, p) != 'cropped', len(p)))
  return roots[0] if roots else None


def sources(manual_dir: str, modality: str) -> Dict[str, str]:
  """What the prepared data is made from: the ``frames`` root (SMIC has no sheet)."""
  root = find_modality_root(manual_dir, modality)
  if root is None:
    raise discovery.DatasetLayoutError(
        f'smic: no {modality}/s<N>/micro/<emotion>/<clip>/ folders under {manual_dir} (expected '
        f'SMIC_all_cropped/{modality}/s1/micro/negative/s1_ne_01/...)')
  return {'frames': root}


def scan_modality(manual_dir: str, modality: str, dataset: str = 'smic'
                  ) -> Tuple[List[annotations.Clip], annotations.Report]:
  report = annotations.Report(dataset)
  root = sources(manual_dir, modality)['frames']
  report.source = {'frames': os.path.relpath(root, manual_dir) or '.', 'modality': modality,
                   'frame_variant': frame_variant(manual_dir, root)}
  clips = []
  for subject in discovery.subdirs(root):
    if not re.fullmatch(r's\d+', subject):
      report.add(subject, 'not a subject folder (s<N>)', 'ignored')
      continue
    micro = os.path.join(root, subject, 'micro')
    if not os.path.isdir(micro):
      continue  # subjects with only non_micro material
    subj_id = f's{int(subject[1:])}'
    for emotion in discovery.subdirs(micro):
      if emotion.lower() not in CLASSES:
        report.add(f'{subject}/micro/{emotion}', 'unknown emotion folder', 'skipped')
        continue
      for name in discovery.subdirs(os.path.join(micro, emotion)):
        where = f'{subject}/micro/{emotion}/{name}'
        m = re.fullmatch(r's\d+_([a-z]+)_\d+', name)
        if m and TOKENS.get(m.group(1)) not in (None, emotion.lower()):
          report.add(where, f'clip token {m.group(1)!r} disagrees with folder {emotion!r}',
                     'used the folder')
        frames = frame_files.list_frames(os.path.join(micro, emotion, name))
        if len(frames) < 2:
          report.add(where, f'{len(frames)} frame(s)', 'skipped')
          continue
        nums = [n for n, _ in frames]
        selected = annotations.select_frames(report, where, os.path.join(micro, emotion, name),
                                             nums[0], nums[-1])
        if selected is None:
          continue
        nums, paths = selected
        apex = nums[len(nums) // 2]
        clips.append(annotations.Clip(dataset, subj_id, name, emotion.lower(), emotion.lower(),
                                      nums[0], apex, nums[-1], '', FPS[modality], paths, nums))
  return clips, report


class Smic(me_builder.MEBuilder):
  """SMIC spontaneous micro-expressions (Li et al. 2013); HS 100 fps, VIS/NIR 25 fps."""

  DATASET = 'smic'
  EXPECTED_LAYOUT = ('SMIC_all_cropped/HS/s1/micro/negative/s1_ne_01/reg_image*.bmp, '
                     'as unpacked from the SMIC release')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Request SMIC from the University of Oulu (licence agreement), unpack it and pass the folder that
  holds SMIC_all_cropped/ (or SMIC_all_raw/) as manual_dir.
  """
  BUILDER_CONFIGS = [
      SmicConfig(name='hs_3class', modality='HS', description='SMIC-HS, 100 fps'),
      SmicConfig(name='vis_3class', modality='VIS', description='SMIC-VIS, 25 fps'),
      SmicConfig(name='nir_3class', modality='NIR', description='SMIC-NIR, 25 fps'),
  ]

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir, self.builder_config.modality)

  def _scan(self, manual_dir):
    return scan_modality(manual_dir, self.builder_config.modality)
