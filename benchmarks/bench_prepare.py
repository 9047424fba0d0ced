"""Preparation speed on a CASME II-sized fixture: 255 clips of realistic length, real JPEG sizes.

Usage: python benchmarks/bench_prepare.py [--clips=255] [--workdir=/tmp/bench_prepare]

Writes a synthetic CASME II release in the real layout (coding sheet + Cropped/subXX/EPxx/reg_imgN.jpg,
340 x 280 RGB JPEGs, clip lengths drawn around the real mean of about 67 frames at 200 fps), then
times ``python main.py --mode=prepare`` semantics (tfds_builders.prepare.prepare) for the ``all``
config and prints one JSON line (clips, frames, seconds, frames per second, dataset size on disk).
"""

import argparse
import json
import os
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np
import openpyxl
from PIL import Image


def write_fixture(root, clips, seed=0):
  rng = np.random.default_rng(seed)
  wb = openpyxl.Workbook()
  ws = wb.active
  for col, name in {1: 'Subject', 2: 'Filename', 4: 'OnsetFrame', 5: 'ApexFrame',
                    6: 'OffsetFrame', 8: 'Action Units', 9: 'Estimated Emotion'}.items():
    ws.cell(row=1, column=col, value=name)
  emotions = ['happiness', 'surprise', 'disgust', 'repression', 'others', 'fear', 'sadness']
  base = (rng.random((340, 280, 3)) * 255).astype(np.uint8)
  total = 0
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
      img = np.roll(base, k % 7, axis=1)
      Image.fromarray(img).save(os.path.join(folder, f'reg_img{onset + k}.jpg'), quality=95)
    total += n
  wb.save(os.path.join(root, 'CASME2-coding-20140508.xlsx'))
  return total


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clips', type=int, default=255)
  parser.add_argument('--workdir', default='/tmp/bench_prepare')
  args = parser.parse_args()
  shutil.rmtree(args.workdir, ignore_errors=True)
  manual = os.path.join(args.workdir, 'CASME2')
  t = time.time()
  frames = write_fixture(manual, args.clips)
  t_fixture = time.time() - t
  from tfds_builders import prepare  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  cfg = ml_collections.ConfigDict(dict(name='casme2', builder_config='all',
                                       data_dir=os.path.join(args.workdir, 'tfds'),
                                       manual_dir=manual))
  t = time.time()
  report = prepare.prepare(cfg)
  seconds = time.time() - t
  size = sum(os.path.getsize(os.path.join(r, f))
             for r, _, fs in os.walk(os.path.join(args.workdir, 'tfds')) for f in fs)
  print(json.dumps({'clips': report['num_clips'], 'frames': frames, 'prepare_seconds': round(seconds, 1),
                    'frames_per_second': round(frames / seconds, 1),
                    'dataset_mib': round(size / 2 ** 20, 1), 'fixture_seconds': round(t_fixture, 1),
                    'cpu_count': os.cpu_count()}))


if __name__ == '__main__':
  main()
