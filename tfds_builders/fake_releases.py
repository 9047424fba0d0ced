"""Synthetic dataset folders in the exact on-disk layouts of CASME II, SAMM, SMIC and CAS(ME)^3.

Images are tiny and random, written with real encoders (JPEG, grayscale JPEG, 24-bit BMP) so the
builders' decoding path runs; sheets are real .xlsx files written with openpyxl with the real header
rows, preambles and cell types. Each writer returns what the builder must report. Used by the tests
and by ``benchmarks/bench_prepare.py``; nothing here is imported by the builders themselves.
"""

import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import openpyxl
from PIL import Image

IMG = 12  # fixture frame side length


def _image(path: str, mode: str = 'RGB', seed: int = 0) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  rng = np.random.default_rng(seed)
  if mode == 'L':
    Image.fromarray(rng.integers(0, 255, (IMG + 4, IMG), np.uint8), 'L').save(path)
  else:
    Image.fromarray(rng.integers(0, 255, (IMG + 4, IMG, 3), np.uint8), 'RGB').save(path)


def write_frames(folder: str, numbers: Iterable[int], fmt: str, mode: str = 'RGB') -> None:
  for n in numbers:
    _image(os.path.join(folder, fmt.format(n)), mode, seed=n)


# ----------------------------------------------------------------------------------- CASME II
CASME2_HEADER = {1: 'Subject', 2: 'Filename', 4: 'OnsetFrame', 5: 'ApexFrame', 6: 'OffsetFrame',
                 8: 'Action Units', 9: 'Estimated Emotion'}

# (subject cell, filename, onset, apex, offset, AU, emotion, folder frames or None for no folder)
CASME2_ROWS = [
    (1, 'EP02_01f', 46, 49, 52, 12, 'happiness', range(46, 53)),
    (1, 'EP09f', 10, 12, 15, '1+2', 'surprise', range(9, 16)),      # one extra frame before onset
    (2, 'EP03_02', 131, 133, 136, 18, 'others',
     [131, 132, 134, 135, 136]),                                     # frame 133 missing
    (2, 'EP04_02', 21, 25, 28, 4, 'fear', range(21, 29)),            # not in the 5-class protocol
    (3, 'EP01_2', 5, 7, 9, 14, 'repression', None),                  # row without a folder
    (4, 'EP12_01f', 261, '/', 269, '4+7', 'disgust', range(261, 270)),  # apex '/'
    (5, 'EP19_05f', 40, 44, 47, '4+7+L10', 'disgust', range(40, 48)),
    (12, 'EP09_06', 66, 71, 70, 'R12', 'disgust', range(66, 72)),   # apex > offset, on disk
    (7, 'EP06_02_01', 100, 101, 104, 17, 'repression', range(100, 105)),
]
CASME2_ORPHAN = ('sub03', 'EP07_04')  # folder without a row


def write_casme2_sheet(path: str, rows: Sequence[tuple], subject_as_text: bool = False) -> None:
  """A CASME II coding sheet (.xlsx with openpyxl, legacy .xls with xlwt) with the real header."""
  table = [{1: f'{subj:02d}' if subject_as_text else subj, 2: name, 4: on, 5: apex, 6: off, 8: au,
            9: emo} for subj, name, on, apex, off, au, emo, *_ in rows]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  if path.endswith('.xls'):
    import xlwt  # pylint: disable=g-import-not-at-top
    wb = xlwt.Workbook()
    ws = wb.add_sheet('Sheet1')
    for col, name in CASME2_HEADER.items():
      ws.write(0, col - 1, name)
    for i, values in enumerate(table, start=1):
      for col, v in values.items():
        ws.write(i, col - 1, v)
    wb.save(path)
    return
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'Sheet1'
  for col, name in CASME2_HEADER.items():
    ws.cell(row=1, column=col, value=name)
  for i, values in enumerate(table, start=2):
    for col, v in values.items():
      ws.cell(row=i, column=col, value=v)
  wb.save(path)


def write_casme2(root: str, subject_as_text: bool = False, doubled: bool = True,
                 sheet_name: str = 'CASME2-coding-20140508.xlsx', raw: bool = False,
                 extra_rows: Sequence[tuple] = ()) -> str:
  """Writes a CASME II release under ``root/CASME2``; returns that folder.

  ``extra_rows``: more rows in the format of :data:`CASME2_ROWS` (sheet row and frame folder).
  """
  base = os.path.join(root, 'CASME2')
  rows = list(CASME2_ROWS) + list(extra_rows)
  write_casme2_sheet(os.path.join(base, sheet_name), rows, subject_as_text)
  frames_root = os.path.join(base, 'Cropped', 'Cropped') if doubled else os.path.join(base, 'Cropped')
  fmt = 'reg_img{}.jpg'
  if raw:
    frames_root, fmt = os.path.join(base, 'CASME2_RAW_selected'), 'img{}.jpg'
  for subj, name, *_, frames in rows:
    if frames is not None:
      write_frames(os.path.join(frames_root, f'sub{subj:02d}', name), frames, fmt)
  write_frames(os.path.join(frames_root, *CASME2_ORPHAN), range(1, 4), fmt)
  return base


# ----------------------------------------------------------------------------------------- SAMM
SAMM_PREAMBLE = {
    'A1': 'SAMM Dataset - Master FACS Codes',
    'E1': "(Note to the users: If you're using SAMM, please cite: Davison, A. K., et al.)",
    'A3': '9/9/17 - New updates with Emotional and Objective Classes. For details please refer to: ',
    'I3': 'arXiv preprint arXiv:1708.07549.',
    'E4': "(Note to the users: if you're using the emotional or objective classes, please cite ...)",
    'A6': 'Symbol Key:', 'A7': '"/" = or',
    'A8': '"?" = some AU\'s continue for a while and have unclear offset',
    'A10': 'AU Help:', 'A11': '"L2 or R2" = Unilateral AU 2 on left side of face / right side of face',
    'A12': '"A2" = Asymmetric AU 2. Occurs on both sides of face but stronger on one side',
}
SAMM_HEADER = ['Subject', 'Filename', 'Inducement Code', 'Onset Frame', 'Apex Frame',
               'Offset Frame', 'Duration', 'Micro', 'Action Units', 'Estimated Emotion',
               'Objective Classes', 'Notes']
# (subject, filename, onset, apex, offset, AU, emotion, digits)
SAMM_ROWS = [
    ('006', '006_1_2', 5562, 5564, 5567, '4+7', 'Anger', 5),
    ('006', '006_3_5', 1787, 1789, 1791, '25+26', 'Surprise', 4),
    ('007', '007_3_1', 998, 1001, 1003, '12+15 ', 'Happiness', 4),  # 998..1003 crosses 4 digits
    ('028', '028_4_1', 1130, 1143, 1134, 14, 'Contempt', 4),        # apex after offset
    ('024', '024_2_1', 300, 302, 304, 9, 'Disgust', 4),             # not in 5-class
    ('037', '037_4_1', 1488, 1490, 1492, 24, 'Other', 4),
]


def samm_workbook():
  """A workbook with SAMM's MICRO_ONLY sheet: 13-row preamble, header in row 14, no data yet."""
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'MICRO_ONLY'
  for cell, text in SAMM_PREAMBLE.items():
    ws[cell] = text
  for col, name in enumerate(SAMM_HEADER, start=1):
    ws.cell(row=14, column=col, value=name)
  return wb, ws


def write_samm(root: str, nested: bool = True) -> str:
  base = os.path.join(root, 'SAMM', 'SAMM') if nested else os.path.join(root, 'SAMM')
  wb, ws = samm_workbook()
  for i, (subj, name, on, apex, off, au, emo, _) in enumerate(SAMM_ROWS, start=15):
    row = [subj, name, int(name.split('_')[1]), on, apex, off, off - on + 1, 'Micro - 1/2', au,
           emo, 3, '']
    for col, v in enumerate(row, start=1):
      ws.cell(row=i, column=col, value=v)
  os.makedirs(base, exist_ok=True)
  wb.save(os.path.join(base, 'SAMM_Micro_FACS_Codes_v2.xlsx'))
  for subj, name, on, _, off, _, _, digits in SAMM_ROWS:
    write_frames(os.path.join(base, subj, name), range(on, off + 1),
                 subj + '_{:0' + str(digits) + 'd}.jpg', mode='L')
  return base


# ----------------------------------------------------------------------------------------- SMIC
# (subject folder, emotion, clip, first frame, count)
SMIC_CLIPS = [
    ('s1', 'negative', 's1_ne_01', 559740, 5),
    ('s1', 'positive', 's1_po_01', 560100, 4),
    ('s2', 'surprise', 's2_sur_01', 59881, 4),        # written as reg_image059881.bmp (6 digits)
    ('s5', 'negative', 's5_ne_01', 1038175, 4),       # 7 digits
    ('s20', 'positive', 's20_po_01', 99998, 5),       # 099998 -> 100002: digit count changes
    ('s19', 'surprise', 's19_sur_01', 33012345, 3),   # 8 digits
]


def write_smic(root: str, modality: str = 'HS') -> str:
  """SMIC_all_cropped/<modality>/...; HS frames are reg_image<6+ digits>.bmp, VIS/NIR reg_<5>.bmp."""
  base = os.path.join(root, 'SMIC')
  fmt = 'reg_image{:06d}.bmp' if modality == 'HS' else 'reg_{:05d}.bmp'
  for subj, emo, clip, first, count in SMIC_CLIPS:
    folder = os.path.join(base, 'SMIC_all_cropped', modality, subj, 'micro', emo, clip)
    write_frames(folder, range(first, first + count), fmt)
  write_frames(os.path.join(base, 'SMIC_all_cropped', modality, 's1', 'non_micro', 'ne', 'x_01'),
               range(1, 4), 'reg_image{:06d}.bmp')
  return base


# -------------------------------------------------------------------------------------- CASME3
CASME3_HEADER = ['Subject', 'Filename', 'Onset', 'Apex', 'Offset', 'AU', 'Objective class',
                 'emotion']
CASME3_ROWS = [
    ('spNO.1', 'b', 166, 170, 172, '4', 'III', 'disgust'),
    ('spNO.1', 'j', 28, 30, 33, '24', 'VII', 'happy'),
    ('spNO.1', 'j', 40, 41, 44, '12', 'I', 'Others'),   # second ME from the same video
    ('spNO.2', 'a', 10, 12, 14, '1+2', 'II', 'surprise'),
    ('spNO.2', 'c', 50, 49, 53, '4', 'III', 'anger'),   # apex before onset
]


def write_casme3(root: str, extra_rows: Sequence[tuple] = ()) -> str:
  base = os.path.join(root, 'CASME3', 'part_A')
  rows = list(CASME3_ROWS) + list(extra_rows)
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'label'
  ws.append(CASME3_HEADER)
  for row in rows:
    ws.append(list(row))
  os.makedirs(os.path.join(base, 'annotation'), exist_ok=True)
  wb.save(os.path.join(base, 'annotation', 'cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx'))
  videos: Dict[Tuple[str, str], List[int]] = {}
  for subj, vid, on, _, off, *_ in rows:
    videos.setdefault((subj, vid), []).extend(range(on - 2, off + 3))
  for (subj, vid), frames in videos.items():
    write_frames(os.path.join(base, 'data', 'part_A', subj, vid, 'color'), sorted(set(frames)),
                 '{}.jpg')
  return base


# ---------------------------------------------------------------------- full composite fixture
def write_composite_release(root: str, frames: int = 2) -> Tuple[str, Dict[str, int]]:
  """All 442 composite clips (from the built-in official list) as three unpacked datasets."""
  from tfds_builders import megc2019_composite as comp  # pylint: disable=g-import-not-at-top
  members = comp.builtin_membership()
  casme_emo = {0: 'disgust', 1: 'happiness', 2: 'surprise'}
  samm_emo = {0: 'Anger', 1: 'Happiness', 2: 'Surprise'}
  # CASME II sheet + frames (plus two 'others' rows that are not members).
  wb = openpyxl.Workbook()
  ws = wb.active
  for col, name in CASME2_HEADER.items():
    ws.cell(row=1, column=col, value=name)
  r = 2
  casme = sorted(k for k in members if k[0] == 'casme2') + [('casme2', 'sub10', 'EP01_01'),
                                                             ('casme2', 'sub18', 'EP02_02')]
  for _, subj, clip in casme:
    label = members.get(('casme2', subj, clip))
    emo = casme_emo[label] if label is not None else 'others'
    for col, v in {1: int(subj[3:]), 2: clip, 4: 10, 5: 10, 6: 10 + frames - 1, 8: 4,
                   9: emo}.items():
      ws.cell(row=r, column=col, value=v)
    r += 1
    write_frames(os.path.join(root, 'CASME2', 'Cropped', subj, clip), range(10, 10 + frames),
                 'reg_img{}.jpg')
  wb.save(os.path.join(root, 'CASME2', 'CASME2-coding-20140508.xlsx'))
  # SAMM (plus subject 025 with an 'Other' clip only, which is not a member).
  wb, ws = samm_workbook()
  r = 15
  samm = sorted(k for k in members if k[0] == 'samm') + [('samm', '025', '025_5_1')]
  for _, subj, clip in samm:
    label = members.get(('samm', subj, clip))
    emo = samm_emo[label] if label is not None else 'Other'
    row = [subj, clip, 1, 100, 100, 100 + frames - 1, frames, 'Micro - 1/2', 4, emo, 3, '']
    for col, v in enumerate(row, start=1):
      ws.cell(row=r, column=col, value=v)
    r += 1
    write_frames(os.path.join(root, 'SAMM', subj, clip), range(100, 100 + frames),
                 subj + '_{:04d}.jpg', mode='L')
  wb.save(os.path.join(root, 'SAMM', 'SAMM_Micro_FACS_Codes_v2.xlsx'))
  # SMIC-HS: the per-subject counts of the real release (ne/po/sur).
  counts = {'s1': (3, 2, 1), 's2': (0, 1, 5), 's3': (22, 11, 6), 's4': (10, 4, 5), 's5': (1, 0, 1),
            's6': (2, 0, 2), 's8': (9, 4, 0), 's9': (0, 1, 3), 's11': (3, 3, 1), 's12': (0, 8, 1),
            's13': (0, 10, 0), 's14': (3, 2, 5), 's15': (1, 1, 2), 's18': (2, 0, 5),
            's19': (0, 1, 1), 's20': (14, 3, 5)}
  for subj, per in counts.items():
    for (emo, tok), n in zip((('negative', 'ne'), ('positive', 'po'), ('surprise', 'sur')), per):
      for i in range(1, n + 1):
        write_frames(os.path.join(root, 'SMIC', 'SMIC_all_cropped', 'HS', subj, 'micro', emo,
                                  f'{subj}_{tok}_{i:02d}'), range(500, 500 + frames),
                     'reg_image{:06d}.bmp')
  return root, {'casme2': 145, 'samm': 133, 'smic': 164}


# CASME II per-subject 5-class counts of the 20140508 sheet (research notes 2.3; sum 246).
CASME2_SUBJECT_COUNTS = {1: 9, 2: 13, 3: 7, 4: 5, 5: 19, 6: 5, 7: 9, 8: 3, 9: 13, 10: 13, 11: 10,
                         12: 12, 13: 8, 14: 4, 15: 3, 16: 4, 17: 34, 18: 3, 19: 15, 20: 11, 21: 2,
                         22: 2, 23: 12, 24: 7, 25: 7, 26: 16}


def casme2_release_rows(sheet: str) -> List[tuple]:
  """255 coding-sheet rows with the published counts of one CASME II sheet.

  20140508: happiness 32, surprise 25, disgust 63, repression 27, others 99, sadness 7, fear 2 (5
  classes: 246); 20190701: three sub24 rows sadness -> surprise (249). sub04/EP12_01f (disgust) has
  the apex '/'; in the 20140508 sheet sub12/EP09_06 has apex 111 after offset 106 (the 20190701
  sheet sets the offset to 111). Rows are in the format of :data:`CASME2_ROWS` with 2-frame folders
  (EP09_06: frames up to 111, as in the release).
  """
  five = ['happiness'] * 32 + ['surprise'] * 25 + ['disgust'] * 61 + ['repression'] * 27 + (
      ['others'] * 99)  # disgust 62 and 63: EP12_01f and EP09_06 below
  rows, k = [], 0
  for subj, n in CASME2_SUBJECT_COUNTS.items():
    specials = {4: 1, 12: 1}.get(subj, 0)
    for i in range(n - specials):
      rows.append((subj, f'EP{i + 1:02d}_{subj:02d}', 10, 10, 11, 4, five[k], range(10, 12)))
      k += 1
  assert k == len(five), k
  rows.append((4, 'EP12_01f', 261, '/', 262, '4+7', 'disgust', range(261, 263)))
  rows.append((12, 'EP09_06', 66, 111, 106 if sheet == '20140508' else 111, 'R12', 'disgust',
               range(66, 112)))
  new = sheet == '20190701'
  for clip in ('EP07_01', 'EP07_04f', 'EP10_03'):
    rows.append((24, clip, 5, 6, 7, 1, 'surprise' if new else 'sadness', range(5, 8)))
  for subj, clip, emo in ((2, 'EP20_01', 'sadness'), (9, 'EP20_02', 'sadness'),
                          (17, 'EP20_03', 'sadness'), (19, 'EP20_04', 'sadness'),
                          (5, 'EP20_05', 'fear'), (23, 'EP20_06', 'fear')):
    rows.append((subj, clip, 5, 6, 7, 1, emo, range(5, 8)))
  return rows


def write_casme2_release(root: str, sheet: str = '20140508') -> str:
  """A CASME II release with the published counts (:func:`casme2_release_rows`), root/CASME2."""
  base = os.path.join(root, 'CASME2')
  rows = casme2_release_rows(sheet)
  write_casme2_sheet(os.path.join(base, f'CASME2-coding-{sheet}.xlsx'), rows)
  for subj, name, *_, frames in rows:
    write_frames(os.path.join(base, 'Cropped', f'sub{subj:02d}', name), frames, 'reg_img{}.jpg')
  return base


def write_gt_csv(path: str, rows: Sequence[Tuple[str, str, str, int]]) -> None:
  with open(path, 'w', newline='') as f:
    for row in rows:
      f.write(','.join(map(str, row)) + '\r\n')


def corrupt(path: str) -> None:
  with open(path, 'wb') as f:
    f.write(b'not an image at all')


def first_frame(folder: str) -> Optional[str]:
  names = sorted(os.listdir(folder))
  return os.path.join(folder, names[0]) if names else None
