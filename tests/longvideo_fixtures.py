"""Fake long-video releases in the real layouts: CAS(ME)^2 (``CASME_sq``) and SAMM Long Videos.

Every annotation row of the real releases is there in number and kind (CAS(ME)^2 300 MaE + 57 ME
over 22 subjects; SAMM-LV 343 MaE + 159 ME over 30 subjects), with the documented quirks, but the
videos are a few tiny frames each (rows are placed in frames 1..16), so preparing them takes
seconds. Each writer returns what the builder must report.
"""

import os
from typing import Dict, List

import openpyxl

from tfds_builders import fake_releases as fixtures

# ------------------------------------------------------------------------------------ CAS(ME)^2
CASME2_SUBJECTS = ['s15', 's16'] + [f's{n}' for n in range(19, 28)] + [
    f's{n}' for n in range(29, 39)] + ['s40']  # 22 subjects
CASME2_CODES = [('0101', 'disgust1', 'disgustingteeth'), ('0102', 'disgust2', 'pickingnose'),
                ('0401', 'anger1', 'angryfeeling'), ('0402', 'anger2', 'beatingpregnantwoman'),
                ('0502', 'happy1', 'funnyerrors'), ('0503', 'happy2', 'unnyfarting'),
                ('0505', 'happy3', 'funnyinnovations'), ('0507', 'happy4', 'funnydancing'),
                ('0508', 'happy5', 'funnymusic')]
CASME2_FRAMES = 16
ME_EMOTIONS = ['negative'] * 21 + ['others'] * 19 + ['surprise'] * 9 + ['positive'] * 8  # 57


def casme2_rows() -> List[list]:
  """The 357 rows of ``CASFEcode_final``: 300 MaE + 57 ME, with the release's quirks."""
  rows = []
  counters: Dict[str, int] = {}
  for i in range(357):
    subj = i % 22
    code, name, _ = CASME2_CODES[(i // 22) % 2 + 2 * (subj % 4)]
    counters[(subj, name)] = counters.get((subj, name), 0) + 1
    expr = f'{name}_{counters[(subj, name)]}'
    onset = 1 + (i % 5)
    if i < 57:
      rows.append([subj + 1, expr, onset, onset + 3, onset + 9, '4+7', ME_EMOTIONS[i],
                   'micro-expression', 'disgust'])
    else:
      emo = ('negative', 'positive', 'surprise', 'others')[i % 4]
      rows.append([subj + 1, expr, onset, onset + 4, onset + 10, '12', emo, 'macro-expression',
                   'happyiness' if emo == 'positive' else 'disgust'])
  for j in range(44):                       # 44 MaE rows: offset 0 (not annotated)
    rows[60 + j][4] = 0
  rows[60][3] = 0                           # ... one of them with apex 0 too
  for j in range(3):                        # 3 MaE rows: apex after offset (disgust1_5-like)
    r = rows[120 + j]
    r[3], r[4] = r[2] + 9, r[2] + 3
  rows[0] = [1, 'happy5_1', 998, 1000, 1003, '4', 'negative', 'micro-expression', 'disgust']
  return rows


def write_casme2_longvideo(root: str) -> str:
  """``root/CASME_sq`` with the workbook and ``rawpic/``; one video runs img998..img1003 (the
  3-digit padding outgrown), one folder has no row."""
  base = os.path.join(root, 'CASME_sq')
  rows = casme2_rows()
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'CASFEcode_final'
  for r in rows:
    ws.append(r)
  rule1 = wb.create_sheet('naming rule1')
  for k, s in enumerate(CASME2_SUBJECTS, start=1):
    rule1.append([int(s[1:]), s, k])
  rule2 = wb.create_sheet('naming rule2')
  for code, name, _ in CASME2_CODES:
    rule2.append([int(code) if code == '0502' else code, name])  # one code stored as a number
  os.makedirs(base, exist_ok=True)
  wb.save(os.path.join(base, 'CAS(ME)^2code_final.xlsx'))
  used = {}
  for r in rows:
    subj = CASME2_SUBJECTS[r[0] - 1]
    name = r[1].rsplit('_', 1)[0]
    used[(subj, name)] = max(used.get((subj, name), 0), r[4], r[3])
  desc = {name: (code, d) for code, name, d in CASME2_CODES}
  for (subj, name), _ in used.items():
    code, d = desc[name]
    folder = os.path.join(base, 'rawpic', subj, f'{subj[1:]}_{code}{d}')
    numbers = range(998, 1004) if (subj, name) == ('s15', 'happy5') else range(
        1, CASME2_FRAMES + 1)
    fixtures.write_frames(folder, numbers, 'img{:03d}.jpg')
  fixtures.write_frames(os.path.join(base, 'rawpic', 's16', '16_0508funnymusic'), range(1, 9),
                        'img{:03d}.jpg')  # no row: a video without expressions
  return base


# ------------------------------------------------------------------------------------- SAMM-LV
SAMM_SUBJECTS = [f'{n:03d}' for n in range(6, 38) if n not in (27, 29)]  # 30 subjects
SAMM_FRAMES = 29
SAMMLV_HEADER = ['Subject', 'Filename', 'Inducement Code', 'Onset', 'Apex', 'Offset', 'Duration',
                 'Type', 'Action Units', 'Notes']
SAMM_EMOTIONS = ['Anger', 'Contempt', 'Happiness', 'Surprise', 'Other', 'Disgust', 'Fear',
                 'Sadness']


def samm_rows() -> List[list]:
  """The 502 rows: 343 Macro + 159 Micro - 1/2, with the V2 sheet's quirks."""
  rows = []
  counters: Dict[str, int] = {}
  for i in range(502):
    subj = SAMM_SUBJECTS[i % 30]
    video = f'{subj}_{1 + (i // 30) % 2}'
    counters[video] = counters.get(video, 0) + 1
    onset = 2 + (i % 7)
    kind = 'Micro - 1/2' if i < 159 else 'Macro'
    rows.append([int(subj), f'{video}_{counters[video]}', 1, onset, onset + 4, onset + 12, 13,
                 kind, '12', ''])
  for j in range(177):                  # 177 MaE rows with a fractional frame number (x.4, x.6)
    r = rows[159 + j]
    r[3 + j % 3] = r[3 + j % 3] + (0.6 if j % 2 else 0.4)
  for j in range(10):                   # 10 MaE rows with onset 0
    rows[400 + j][3] = 0
  for j in range(6):                    # 6 rows with apex -1
    rows[420 + j][4] = -1
  return rows


def write_samm_longvideo(root: str, short_sheet: bool = True) -> str:
  """``root/SAMMLV``: the V2 sheet (9-row preamble, header on row 10), ``SAMM_longvideos/`` (one
  video with 5-digit frame numbers) and, optionally, the short-clip sheet with the ME emotions
  (all but the last 9 MEs listed)."""
  base = os.path.join(root, 'SAMMLV')
  rows = samm_rows()
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'FACS_Movement_Only'
  ws['A1'] = 'SAMM Long Videos - FACS codes'
  ws['A3'] = 'Subjects with Apex Frame not annotated were labelled as -1'
  for col, name in enumerate(SAMMLV_HEADER, start=1):
    ws.cell(row=10, column=col, value=name)
  for i, r in enumerate(rows, start=11):
    for col, v in enumerate(r, start=1):
      ws.cell(row=i, column=col, value=v)
  os.makedirs(base, exist_ok=True)
  wb.save(os.path.join(base, 'SAMM_LongVideos_V2_Release.xlsx'))
  if short_sheet:
    wb, ws = fixtures.samm_workbook()
    micro = [r for r in rows if r[7].startswith('Micro')][:150]
    for i, r in enumerate(micro, start=15):
      ws.cell(row=i, column=1, value=f'{r[0]:03d}')
      ws.cell(row=i, column=2, value=r[1])
      ws.cell(row=i, column=8, value='Micro - 1/2')
      ws.cell(row=i, column=10, value=SAMM_EMOTIONS[i % 8])
    wb.save(os.path.join(base, 'SAMM_Micro_FACS_Codes_v2.xlsx'))
  videos = sorted({r[1].rsplit('_', 1)[0] for r in rows})
  for v in videos:
    digits = 5 if v == '037_2' else 4
    fixtures.write_frames(os.path.join(base, 'SAMM_longvideos', v), range(1, SAMM_FRAMES + 1),
                          v + '_{:0' + str(digits) + 'd}.jpg', mode='L')
  return base


# ------------------------------------------------------------- planted expressions, real layout
def write_casme2_planted(root: str, n: int = 420, seed: int = 1, subjects: int = 1):
  """``root/CASME_sq`` with one video of a face with planted expressions per subject (s15, s16,
  ...; the spotter can find them, subject ``j`` drawn with ``seed + j``), their rows in the
  workbook; returns ``(base, frames, events)`` of the first subject."""
  import cv2  # pylint: disable=g-import-not-at-top
  from mpt_jax.spotting import planted_video  # pylint: disable=g-import-not-at-top
  base = os.path.join(root, 'CASME_sq')
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'CASFEcode_final'
  rule1 = wb.create_sheet('naming rule1')
  wb.create_sheet('naming rule2').append(['0101', 'disgust1'])
  first = None
  for j in range(subjects):
    events = planted_video.default_events(n, seed=seed + j, me_every=80)
    frames = planted_video.render(n, events, 128, seed=seed + j)
    first = first or (frames, events)
    for k, e in enumerate(events, start=1):
      ws.append([j + 1, f'disgust1_{k}', e.onset, e.apex, e.offset, '12', 'positive',
                 'micro-expression' if e.type == 'me' else 'macro-expression', 'happiness'])
    rule1.append([15 + j, f's{15 + j}', j + 1])
    folder = os.path.join(base, 'rawpic', f's{15 + j}', f'{15 + j}_0101disgustingteeth')
    os.makedirs(folder, exist_ok=True)
    for i, f in enumerate(frames, start=1):
      cv2.imwrite(os.path.join(folder, f'img{i:03d}.jpg'), f, [cv2.IMWRITE_JPEG_QUALITY, 95])
  wb.save(os.path.join(base, 'CAS(ME)^2code_final.xlsx'))
  return base, first[0], first[1]


# ------------------------------------------------------------------------------ CAS(ME)^3 part A
CASME3_SUBJECTS = [f'spNO.{n}' for n in range(1, 11)]
CASME3_VIDEOS = ('a', 'J')  # an uppercase Filename occurs in the release
CASME3_FRAMES = [n for n in range(9, 33) if n != 20]  # 1..8 and 20 missing, as in most videos
CASME3_EMOTIONS = ['disgust', 'surprise', 'others', 'fear', 'anger', 'sad', 'happy']


def write_casme3_longvideo(root: str) -> str:
  """``root/CASME3``: the part A workbook (.xls, numbers as text; 3,346 Macro- + 860
  Micro-expression rows, 841 eye blinks), the ME label sheet and 20 videos of 23 frames."""
  import xlwt  # pylint: disable=g-import-not-at-top
  base = os.path.join(root, 'CASME3')
  book = xlwt.Workbook()
  ws = book.add_sheet('AU+Emotion')
  for col, name in enumerate(['Subject', 'Filename', 'Onset', 'Apex', 'Offset', 'AU',
                              'Expression type', 'Objective class']):
    ws.write(0, col, name)
  labels = []
  for i in range(3346 + 860):
    subj, vid, j = CASME3_SUBJECTS[i % 10], CASME3_VIDEOS[(i % 20) // 10], i // 20
    onset = 9 + j % 11
    apex, offset = onset + 2, onset + (4 + j // 11 if i < 860 else 10)  # MEs unique per video
    if i == 5:
      apex = offset + 2  # apex after the offset
    kind = 'Micro-expression' if i < 860 else 'Macro-expression'
    for col, v in enumerate([subj, vid, str(onset), str(apex), str(offset), '4', kind, 'III']):
      ws.write(i + 1, col, v)
    if i < 860:
      labels.append([subj, vid, onset, apex, offset, '4', 'III', CASME3_EMOTIONS[i % 7]])
  blink = book.add_sheet('eye blink')
  for col, name in enumerate(['Subject', 'Filename', 'Onset', 'Offset']):
    blink.write(0, col, name)
  for i in range(841):
    for col, v in enumerate([CASME3_SUBJECTS[i % 10], CASME3_VIDEOS[i % 2], str(10 + i % 9),
                             str(12 + i % 9)]):
      blink.write(i + 1, col, v)
  os.makedirs(os.path.join(base, 'annotation', 'partA'), exist_ok=True)
  book.save(os.path.join(base, 'annotation', 'partA', 'CAS(ME)3_part_A_v2.xls'))
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'label'
  ws.append(['Subject', 'Filename', 'Onset', 'Apex', 'Offset', 'AU', 'Objective class',
             'emotion'])
  for r in labels[:-1]:  # the last ME's label row is missing: it is stored without emotion
    ws.append(r)
  wb.save(os.path.join(base, 'annotation', 'cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx'))
  for subj in CASME3_SUBJECTS:
    for vid in CASME3_VIDEOS:
      fixtures.write_frames(os.path.join(base, 'part_A', subj, vid, 'color'), CASME3_FRAMES,
                            '{}.jpg')
  return base
