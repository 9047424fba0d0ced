"""Preparation speed: frames/s on a CASME II-sized and a SAMM-sized fixture, one process vs all cores.

Usage: python benchmarks/bench_prepare.py [--clips=255] [--samm_clips=159] [--workdir=/tmp/bench_prepare]
       [--which=casme2,samm]

* CASME II-sized: the real layout (coding sheet + Cropped/subXX/EPxx/reg_imgN.jpg), 340 x 280 RGB
  JPEGs, clip lengths drawn around the real mean of about 67 frames; stored as released (no
  alignment, ``align=auto`` keeps CASME II's crops).
* SAMM-sized: the SAMM layout with 960 x 650 grayscale JPEGs showing a real face (scikit-image's
  astronaut, with sensor noise so that every frame differs), clip lengths around SAMM's mean of about
  70 frames; aligned (dlib landmarks) as ``align=auto`` does for SAMM.

Each fixture is prepared twice with ``tfds_builders.prepare.prepare`` (what ``main.py
--mode=prepare`` runs): ``prepare_workers=1`` and ``prepare_workers=0`` (every core). The script also
times reading every JPEG once (a full PIL decode, one process) as the floor. Prints one JSON line per
fixture. Timings are wall clock and depend on what else the machine is doing; ``*_cpu_seconds``
(this process and its pool workers, user + system) is less sensitive to other load.
"""

import argparse
import json
import os
import resource
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np
import openpyxl
from PIL import Image


def write_casme2(root, clips, seed=0):
  rng = np.random.default_rng(seed)
  wb = openpyxl.Workbook()
  ws = wb.active
  for col, name in {1: 'Subject', 2: 'Filename', 4: 'OnsetFrame', 5: 'ApexFrame',
                    6: 'OffsetFrame', 8: 'Action Units', 9: 'Estimated Emotion'}.items():
    ws.cell(row=1, column=col, value=name)
  emotions = ['happiness', 'surprise', 'disgust', 'repression', 'others', 'fear', 'sadness']
  base = (rng.random((340, 280, 3)) * 255).astype(np.uint8)
  paths = []
  for i in range(clips):
    subj = i % 26 + 1
    n = int(np.clip(rng.gamma(4.0, 67 / 4.0), 12, 141))
    onset = int(rng.integers(1, 500))
    name = f'EP{i:03d}_01'
    row = {1: subj, 2: name, 4: onset, 5: onset + n // 2, 6: onset + n - 1, 8: 4,
           9: emotions[i % len(emotions)]}
    for col, v in row.items():
      ws.cell(row=i + 2, column=col, value=v)
    folder = os.path.join(root, 'Cropped', f'sub{subj:02d}', name)
    os.makedirs(folder)
    for k in range(n):
      paths.append(os.path.join(folder, f'reg_img{onset + k}.jpg'))
      Image.fromarray(np.roll(base, k % 7, axis=1)).save(paths[-1], quality=95)
  wb.save(os.path.join(root, 'CASME2-coding-20190701.xlsx'))  # the sheet config 'all' reads
  return paths


def write_samm(root, clips, seed=0):
  from tests import face_fixtures  # pylint: disable=g-import-not-at-top
  from tests import fixtures  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  wb, ws = fixtures.samm_workbook()
  emotions = ['Anger', 'Contempt', 'Happiness', 'Surprise', 'Other']
  paths = []
  for i in range(clips):
    subj = f'{6 + i % 29:03d}'
    angle, scale = float(rng.uniform(-8, 8)), float(rng.uniform(3.0, 3.8))
    face, _ = face_fixtures.face_frame(face_fixtures.SAMM_SIZE, angle, scale,
                                       (480 + rng.integers(-40, 40), 300), gray=True)
    n = int(np.clip(rng.gamma(4.0, 70 / 4.0), 12, 150))
    onset = int(rng.integers(1000, 5000))
    name = f'{subj}_{1 + i // 29}_{i % 29 + 1}'
    row = [subj, name, 1, onset, onset + n // 2, onset + n - 1, n, 'Micro - 1/2', '4',
           emotions[i % 5], 3, '']
    for col, v in enumerate(row, start=1):
      ws.cell(row=15 + i, column=col, value=v)
    folder = os.path.join(root, subj, name)
    os.makedirs(folder, exist_ok=True)
    for k in range(n):
      frame = np.clip(face + rng.normal(0, 2, face.shape), 0, 255).astype(np.uint8)
      paths.append(os.path.join(folder, f'{subj}_{onset + k:04d}.jpg'))
      Image.fromarray(frame).save(paths[-1], quality=92)
  wb.save(os.path.join(root, 'SAMM_Micro_FACS_Codes_v2.xlsx'))
  return paths


def cpu_seconds():
  """User + system CPU time of this process and its finished children (the pool's workers)."""
  me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def read_once(paths):
  t = time.time()
  for p in paths:
    with Image.open(p) as im:
      im.load()
  return time.time() - t


def run(which, workdir, clips):
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  manual = os.path.join(workdir, which)
  t = time.time()
  paths = (write_casme2 if which == 'casme2' else write_samm)(manual, clips)
  t_fixture = time.time() - t
  out = {'fixture': which, 'clips': clips, 'frames': len(paths),
         'frame_size': Image.open(paths[0]).size, 'fixture_seconds': round(t_fixture, 1),
         'cpu_count': len(os.sched_getaffinity(0))}
  out['read_jpegs_once_seconds'] = round(read_once(paths), 1)
  for workers in (1, 0):
    data_dir = os.path.join(workdir, f'tfds_{which}_{workers}')
    cfg = ml_collections.ConfigDict(dict(
        name=which, builder_config='all' if which == 'casme2' else '5class', data_dir=data_dir,
        manual_dir=manual, align='auto', align_margin=0.2, skip_bad_frames=False,
        prepare_workers=workers))
    t, c = time.time(), cpu_seconds()
    report = prepare.prepare(cfg)
    seconds = time.time() - t
    tag = 'one_process' if workers == 1 else 'all_cores'
    out[f'{tag}_seconds'] = round(seconds, 1)
    out[f'{tag}_cpu_seconds'] = round(cpu_seconds() - c, 1)
    out[f'{tag}_frames_per_second'] = round(len(paths) / seconds, 1)
    out['alignment'] = report.get('alignment', {}).get('counts')
    shutil.rmtree(data_dir, ignore_errors=True)
  out['speedup'] = round(out['one_process_seconds'] / out['all_cores_seconds'], 2)
  out['all_cores_vs_reading_once'] = round(out['all_cores_seconds'] /
                                           max(out['read_jpegs_once_seconds'], 1e-9), 2)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clips', type=int, default=255, help='CASME II-sized fixture clips')
  parser.add_argument('--samm_clips', type=int, default=159, help='SAMM-sized fixture clips')
  parser.add_argument('--which', default='casme2,samm')
  parser.add_argument('--workdir', default='/tmp/bench_prepare')
  args = parser.parse_args()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  shutil.rmtree(args.workdir, ignore_errors=True)
  for which in args.which.split(','):
    clips = args.clips if which == 'casme2' else args.samm_clips
    print(json.dumps(run(which, args.workdir, clips)), flush=True)


if __name__ == '__main__':
  main()
