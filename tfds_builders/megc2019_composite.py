"""The MEGC2019 composite (CDE) builder: CASME II + SAMM + SMIC-HS, 3 classes, 68 LOSO subjects.

Membership and labels come from the official ``combined_3class_gt.csv`` when it is found under
``manual_dir`` (no header, ``dataset,subject,filename,label``; SMIC ids padded ``s01``/``s01_ne_01``,
SAMM subjects unpadded ``6``), otherwise from the copy of the official list built into this module
(the same 442 rows). Labels: 0 negative, 1 positive, 2 surprise. Membership is never re-derived from
the emotion columns of the sheets (the 20190701 CASME II sheet would add three clips).

Expected under ``manual_dir``: the three datasets as unpacked, side by side (e.g. ``CASME2/``,
``SAMM/``, ``SMIC/``), each as its own builder expects; optionally ``combined_3class_gt.csv``.
LOSO ids keep each dataset's spelling (``sub01``, ``006``, ``s1``), so the 68 subjects stay distinct.
"""

import csv
import dataclasses
import os
import re
from typing import Dict, List, Tuple

import tensorflow_datasets as tfds

from tfds_builders import annotations
from tfds_builders import casme2
from tfds_builders import discovery
from tfds_builders import me_builder
from tfds_builders import samm
from tfds_builders import smic

CLASSES = ('negative', 'positive', 'surprise')

# The official list (MEGC2019 combined_3class_gt.csv), CASME II and SAMM parts: "subject clip:label".
# SMIC-HS: every micro clip of SMIC-HS belongs to it, labelled by its emotion folder.
CASME2_MEMBERS = """
sub01 EP02_01f:1 EP19_05f:0 EP19_06f:0
sub02 EP01_11f:0 EP02_04f:0 EP03_02f:0 EP06_01f:0 EP06_02f:0 EP09_01:1 EP11_01:2 EP13_04:2 EP14_01:2
sub03 EP01_2:2 EP07_04:0 EP09_03:0 EP18_06:0 EP19_08:0
sub04 EP12_02f:0 EP13_06f:0
sub05 EP02_07:2 EP03_01:1 EP03_06:2 EP04_05:2 EP04_06:2 EP12_03f:2
sub06 EP01_01:1 EP02_31:2 EP15_02:2 EP16_05:0
sub07 EP01_01:0 EP06_02_01:0 EP06_02_02:0 EP08_02:0 EP15_01:0
sub08 EP13_01f:0
sub09 EP02_01f:1 EP05_05:1 EP06_01f:0 EP06_02f:1 EP09_04:0 EP09_05:0 EP09f:1 EP13_01:0 EP15_05:1 EP17_08:0
sub11 EP08_01f:0 EP13_02f:0 EP13_03f:0 EP13_05f:0
sub12 EP01_02:0 EP02_05:2 EP03_04:1 EP04_16:0 EP06_06:2 EP08_01:2 EP08_03:2 EP08_07:1 EP09_02:0 EP09_06:0 EP16_02:0
sub13 EP03_01:1 EP09_10:1
sub14 EP09_03:1 EP09_04:1 EP09_06:1
sub15 EP03_02:1 EP04_02:2 EP08_02:0
sub16 EP01_05:1 EP01_08:0 EP04_02f:1
sub17 EP01_06:1 EP01_13:2 EP01_15:1 EP02_01:0 EP02_03:0 EP02_11:0 EP02_18f:0 EP03_02:0 EP03_09:1 EP05_02:1 EP05_03:1 EP05_03f:0 EP05_04:0 EP05_09:0 EP05_10:0 EP06_04:0 EP06_07:1 EP06_08:0 EP07_01:0 EP08_02:0 EP10_06:0 EP11_01:0 EP11_02:0 EP12_03:0 EP13_03:0 EP13_04:0 EP13_06:0 EP13_09:1 EP15_04:0 EP16_01f:0 EP18_07:0
sub19 EP01_01f:1 EP01_02f:1 EP02_01:2 EP06_01f:2 EP08_02:1 EP11_04f:2 EP13_01:0 EP16_01:0 EP16_02:0 EP19_02:2 EP19_03:2
sub20 EP01_03:0 EP06_03:0
sub21 EP05_02:0
sub22 EP01_12:0 EP13_08:0
sub23 EP02_01:1 EP03_14f:0 EP04_03f:0 EP05_24f:0 EP05_25f:0 EP12_02f:0 EP12_03:0 EP13_04:0
sub24 EP01_08:0 EP02_02f:0 EP18_03:2
sub25 EP09_02:0 EP10_01:0 EP10_10:2 EP12_01:2 EP18_04f:0
sub26 EP03_10:1 EP09_04:0 EP09_09:0 EP13_02:1 EP13_11:0 EP16_01:0 EP18_44:0 EP18_47:0 EP18_49:0 EP18_50:0 EP18_51:0
"""
SAMM_MEMBERS = """
6 006_1_2:0 006_1_3:0 006_1_4:0 006_1_5:0 006_1_6:0 006_2_4:0 006_3_4:0 006_3_5:2 006_5_10:0 006_5_11:0 006_5_9:2
7 007_3_1:0 007_5_3:2 007_6_1:1 007_6_2:1 007_6_3:1 007_6_5:1 007_7_1:2 007_7_5:1
9 009_2_1:0 009_3_2:0 009_3_3:0 009_3_4:2
10 010_2_1:0 010_2_8:0 010_4_1:0 010_4_2:0
11 011_1_4:0 011_2_1:0 011_2_2:0 011_2_3:0 011_2_7:1 011_3_1:0 011_3_4:1 011_3_5:1 011_3_6:1 011_4_1:0 011_4_12:0 011_4_13:0 011_4_2:0 011_5_1:0 011_6_1:0 011_6_13:1 011_6_5:1 011_6_6:1 011_7_1:0 011_7_10:0
12 012_3_1:0 012_3_2:0 012_7_1:2
13 013_1_10:0 013_1_11:0 013_1_12:0 013_1_8:0 013_1_9:0 013_7_7:0
14 014_1_1:0 014_2_3:2 014_2_4:1 014_3_3:1 014_3_4:1 014_5_2:0 014_6_1:1 014_6_2:1 014_6_3:1 014_7_1:1
15 015_5_1:0 015_5_2:0 015_5_3:2
16 016_7_1:0 016_7_2:2 016_7_3:0 016_7_5:2 016_7_8:1
17 017_3_1:0 017_3_2:2 017_3_4:0 017_6_1:0
18 018_3_1:0 018_5_1:0 018_7_1:2
19 019_4_1:1
20 020_4_1:0 020_4_2:1 020_7_1:0 020_7_10:1
21 021_7_1:0 021_7_2:0
22 022_2_3:0 022_3_2:0 022_3_3:1 022_4_1:0 022_5_1:1
23 023_1_1:0
24 024_2_1:0
26 026_1_1:0 026_2_1:0 026_2_2:0 026_2_3:0 026_3_3:0 026_3_4:0 026_5_1:0 026_6_1:0 026_7_3:0
28 028_4_1:0 028_4_3:2 028_4_4:2
30 030_1_1:0 030_1_2:0 030_5_1:0
31 031_3_1:0
32 032_3_1:0 032_3_2:0 032_4_2:0 032_6_1:0
33 033_1_3:1 033_1_4:0 033_1_5:0 033_2_1:0 033_2_2:0
34 034_3_1:0 034_7_2:0 034_7_3:0
35 035_1_1:0 035_4_1:0 035_4_2:0 035_5_2:0 035_5_3:0 035_6_3:0 035_7_1:2 035_7_2:0
36 036_7_3:0
37 037_3_2:0
"""


@dataclasses.dataclass
class CompositeConfig(tfds.core.BuilderConfig):
  classes: Tuple[str, ...] = CLASSES


def builtin_membership() -> Dict[Tuple[str, str, str], int]:
  """``{(dataset, subject, clip): label}`` for CASME II and SAMM from the built-in list."""
  out = {}
  for dataset, text in (('casme2', CASME2_MEMBERS), ('samm', SAMM_MEMBERS)):
    for line in text.strip().splitlines():
      subject, *items = line.split()
      subject = f'{int(subject):03d}' if dataset == 'samm' else subject
      for item in items:
        clip, label = item.rsplit(':', 1)
        out[(dataset, subject, clip)] = int(label)
  return out


def normalise_row(dataset: str, subject: str, clip: str) -> Tuple[str, str, str]:
  """Maps the official file's ids onto the folder spellings."""
  dataset, subject, clip = dataset.strip().lower(), subject.strip(), clip.strip()
  if dataset == 'smic':
    subject = f's{int(subject.lstrip("sS"))}'
    m = re.fullmatch(r's0*(\d+)_(.+)', clip)
    if m:
      clip = f's{int(m.group(1))}_{m.group(2)}'
  elif dataset == 'samm':
    subject = f'{int(subject):03d}'
  elif dataset == 'casme2':
    subject = f'sub{int(subject.lower().replace("sub", "")):02d}'
  return dataset, subject, clip


def read_gt_csv(path: str) -> Dict[Tuple[str, str, str], int]:
  try:
    with open(path, newline='', encoding='utf-8-sig') as f:
      rows = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise discovery.DatasetLayoutError(f'{path}: cannot be read as the '
                                       'dataset,subject,filename,label CSV '
                                       f'({type(e).__name__}: {e})') from e
  out = {}
  for i, row in enumerate(rows, start=1):
    if not row or not ''.join(row).strip():
      continue
    if len(row) < 4:
      raise discovery.DatasetLayoutError(f'{path} line {i}: expected '
                                         f'dataset,subject,filename,label; got {row}')
    if i == 1 and not row[3].strip().isdigit():
      continue  # a header line (HTNet's edited copy has one)
    try:
      out[normalise_row(row[0], row[1], row[2])] = int(row[3])
    except ValueError as e:
      raise discovery.DatasetLayoutError(f'{path} line {i}: cannot read {row} ({e})') from e
  return out


GT_NAME = 'combined_3class_gt.csv'
# CASME II as the composite reads it: every emotion, the newest sheet present (membership and labels
# come from the official list, so the sheet only locates the frames).
CASME2_CONFIG = casme2.Casme2Config(name='composite', classes=casme2.ALL_CLASSES, sheet='newest')


def sources(manual_dir: str) -> Dict[str, str]:
  """The files the prepared data is made from: the three datasets' sheets and frame roots and the
  membership CSV (when present)."""
  out = {}
  gt = discovery.choose_file(manual_dir, 'megc2019_composite', 'membership list',
                             re.escape(GT_NAME))
  if gt:
    out['membership'] = gt
  out.update({f'casme2_{k}': v for k, v in casme2.sources(manual_dir, CASME2_CONFIG).items()})
  out.update({f'samm_{k}': v for k, v in samm.sources(manual_dir).items()})
  out.update({f'smic_{k}': v for k, v in smic.sources(manual_dir, 'HS').items()})
  return out


def scan(manual_dir: str) -> Tuple[List[annotations.Clip], annotations.Report]:
  report = annotations.Report('megc2019_composite')
  gt = discovery.choose_file(manual_dir, 'megc2019_composite', 'membership list',
                             re.escape(GT_NAME))
  if gt:
    members = read_gt_csv(gt)
    report.source['membership'] = os.path.relpath(gt, manual_dir)
  else:
    members = builtin_membership()
    report.source['membership'] = 'built-in copy of combined_3class_gt.csv'
  found: Dict[Tuple[str, str, str], annotations.Clip] = {}
  c_clips, c_report = casme2.scan(manual_dir, CASME2_CONFIG)
  s_clips, s_report = samm.scan(manual_dir, samm.SammConfig(name='x', classes=samm.ALL_CLASSES))
  m_clips, m_report = smic.scan_modality(manual_dir, 'HS')
  for sub in (c_report, s_report, m_report):
    report.issues.extend(dict(i, where=f'{sub.dataset}: {i["where"]}') for i in sub.issues)
    report.source.update({f'{sub.dataset}_{k}': v for k, v in sub.source.items()})
  for clip in c_clips + s_clips + m_clips:
    found[(clip.dataset, clip.subject, clip.clip)] = clip
  if not gt:
    for clip in m_clips:
      members[(clip.dataset, clip.subject, clip.clip)] = CLASSES.index(clip.emotion)
  clips = []
  for key, label in sorted(members.items()):
    if key not in found:
      report.add('/'.join(key), 'listed in the composite but not found in the data', 'skipped')
      continue
    if not 0 <= label < len(CLASSES):
      report.add('/'.join(key), f'label {label} outside 0..2', 'skipped')
      continue
    clip = dataclasses.replace(found[key], label=CLASSES[label])
    clips.append(clip)
  return clips, report


class Megc2019Composite(me_builder.MEBuilder):
  """MEGC2019 composite dataset (CASME II + SAMM + SMIC-HS), 3 classes, 442 clips, 68 subjects."""

  DATASET = 'megc2019_composite'
  EXPECTED_LAYOUT = ('CASME II, SAMM and SMIC unpacked side by side (e.g. CASME2/, SAMM/, SMIC/), '
                     'optionally with combined_3class_gt.csv')
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Place the unpacked CASME II, SAMM and SMIC folders side by side in one folder and pass it as
  manual_dir (optionally with the official combined_3class_gt.csv).
  """
  BUILDER_CONFIGS = [CompositeConfig(name='3class', description='negative, positive, surprise')]

  def source_files(self, manual_dir: str) -> Dict[str, str]:
    return sources(manual_dir)

  def _scan(self, manual_dir):
    return scan(manual_dir)
