"""SAMM and CAS(ME)^3 releases at their real frame sizes with a real face in every frame.

The face is scikit-image's ``astronaut`` photo (public domain) placed into the frame by a known
similarity (rotation, scale, shift), a different one per subject, so a test can check where the
stored, aligned frames put its eyes. Layouts and sheets are those of ``fake_releases.py``.
"""

import os
from typing import Dict, Tuple

import cv2
import numpy as np
import openpyxl
import skimage.data
from PIL import Image

from tfds_builders import fake_releases

# Hand-annotated pupil centres (x, y) of skimage.data.astronaut(): image-left, image-right eye.
ASTRONAUT_EYES = np.array([[203.5, 100.5], [245.5, 103.0]])
SAMM_SIZE = (650, 960)  # (height, width), grayscale
CASME3_SIZE = (720, 1280)  # colour


def face_frame(frame_hw, angle_deg: float, scale: float, centre_xy, gray: bool = False,
               background: int = 90) -> Tuple[np.ndarray, np.ndarray]:
  """The astronaut rotated/scaled about her eyes, centred at ``centre_xy``: (frame, (2, 3) map)."""
  face = skimage.data.astronaut()
  m = cv2.getRotationMatrix2D((225.0, 102.0), angle_deg, scale)  # about the eye midpoint
  m[:, 2] += np.asarray(centre_xy, np.float64) - np.array([225.0, 102.0])
  h, w = frame_hw
  mask = cv2.warpAffine(np.full(face.shape[:2], 255, np.uint8), m, (w, h)) > 127
  warped = cv2.warpAffine(face, m, (w, h), flags=cv2.INTER_LINEAR)
  out = np.where(mask[..., None], warped, np.uint8(background))
  if gray:
    out = cv2.cvtColor(out, cv2.COLOR_RGB2GRAY)
  return out, m


def _save(path: str, img: np.ndarray) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(img).save(path, quality=92)


# (subject, clip, onset, apex, offset, emotion, (angle, scale, centre), face?)
SAMM_FACE_ROWS = [
    ('006', '006_1_2', 5562, 5563, 5565, 'Anger', (8.0, 1.9, (470, 300)), True),
    ('006', '006_3_5', 1787, 1788, 1790, 'Surprise', (8.0, 1.9, (470, 300)), True),
    ('011', '011_2_1', 200, 201, 208, 'Happiness', (-6.0, 3.7, (480, 280)), True),  # large face
    ('011', '011_4_2', 300, 301, 303, 'Other', (0.0, 1.0, (0, 0)), False),  # no face in the frame
]


def write_samm_faces(root: str) -> Tuple[str, Dict[str, np.ndarray]]:
  """A SAMM release (960 x 650 grayscale JPEGs); returns (folder, {clip: face placement map})."""
  base = os.path.join(root, 'SAMM')
  wb, ws = fake_releases.samm_workbook()
  placements = {}
  for i, (subj, name, on, apex, off, emo, (angle, scale, centre), has_face) in enumerate(
      SAMM_FACE_ROWS, start=15):
    row = [subj, name, int(name.split('_')[1]), on, apex, off, off - on + 1, 'Micro - 1/2', '4',
           emo, 3, '']
    for col, v in enumerate(row, start=1):
      ws.cell(row=i, column=col, value=v)
    if has_face:
      frame, m = face_frame(SAMM_SIZE, angle, scale, centre, gray=True)
      placements[name] = m
    else:
      yy, xx = np.mgrid[0:SAMM_SIZE[0], 0:SAMM_SIZE[1]]
      frame = (100 + xx / 12.0 + yy / 20.0).astype(np.uint8)
    digits = 5 if on >= 5000 else 4
    for n in range(on, off + 1):
      _save(os.path.join(base, subj, name, f'{subj}_{n:0{digits}d}.jpg'), frame)
  wb.save(os.path.join(base, 'SAMM_Micro_FACS_Codes_v2.xlsx'))
  return base, placements


# (subject, video, onset, apex, offset, emotion, (angle, scale, centre))
CASME3_FACE_ROWS = [
    ('spNO.1', 'a', 30, 31, 33, 'disgust', (5.0, 2.2, (640, 340))),
    ('spNO.1', 'b', 10, 11, 12, 'happy', (5.0, 2.2, (640, 340))),
    ('spNO.2', 'a', 50, 52, 53, 'surprise', (-10.0, 1.8, (600, 380))),
]


def write_casme3_faces(root: str) -> Tuple[str, Dict[str, np.ndarray]]:
  """A CAS(ME)^3 part A release (1280 x 720 colour JPEGs in long-video folders)."""
  base = os.path.join(root, 'CASME3', 'part_A')
  wb = openpyxl.Workbook()
  ws = wb.active
  ws.title = 'label'
  ws.append(fake_releases.CASME3_HEADER)
  placements = {}
  for subj, vid, on, apex, off, emo, (angle, scale, centre) in CASME3_FACE_ROWS:
    ws.append([subj, vid, on, apex, off, '4', 'III', emo])
    frame, m = face_frame(CASME3_SIZE, angle, scale, centre)
    placements[f'{subj}/{vid}_{on}'] = m
    for n in range(on - 1, off + 2):  # a long video: frames outside onset..offset too
      _save(os.path.join(base, 'data', 'part_A', subj, vid, 'color', f'{n}.jpg'), frame)
  os.makedirs(os.path.join(base, 'annotation'), exist_ok=True)
  wb.save(os.path.join(base, 'annotation', 'cas(me)3_part_A_ME_label_JpgIndex_v2.xlsx'))
  return base, placements


def eyes_in_stored_frame(stored_transform: np.ndarray, placement: np.ndarray) -> np.ndarray:
  """Where the astronaut's pupils land in a stored frame: (2, 2) (image-left, image-right)."""
  s = np.vstack([stored_transform, [0, 0, 1]]) @ np.vstack([placement, [0, 0, 1]])
  return np.c_[ASTRONAUT_EYES, np.ones(2)] @ s[:2].T
