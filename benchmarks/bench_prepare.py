"""Preparation speed: frames/s on a CASME II-sized and a SAMM-sized fixture, one process vs all cores.

Usage: python -m benchmarks.bench_prepare [--clips=255] [--samm_clips=159] [--workdir=/tmp/bench_prepare]
       [--which=casme2,samm] [--stages]

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
``--stages`` instead times each step per frame in one process (decode, face search, resize or
warp, PNG encoding, each against what it replaced: libpng's settings before our own encoder, and
zlib level 1 with libpng's default filters before those).
"""

import argparse
import json
import os
import resource
import shutil
import time

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
  from tfds_builders import fake_faces as face_fixtures  # pylint: disable=g-import-not-at-top
  from tfds_builders import fake_releases as fixtures  # pylint: disable=g-import-not-at-top
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
  os.sync()  # the fixture's files on disk, so that writing them back does not slow what follows
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


def _ms(fn, items, repeats=3):
  """Best-of-``repeats`` milliseconds per item of ``fn`` over ``items``."""
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    for x in items:
      fn(x)
    best = min(best, (time.perf_counter() - t) / len(items) * 1e3)
  return round(best, 2)


def stages(which, paths, sample=60):
  """Milliseconds per frame of each step in one process: decode, resize or warp, PNG encoding
  (the settings in use vs zlib level 1 with libpng's default filters, the settings before)."""
  import cv2  # pylint: disable=g-import-not-at-top
  from mpt_jax import clip_frames  # pylint: disable=g-import-not-at-top
  from mpt_jax import face_align  # pylint: disable=g-import-not-at-top
  cv2.setNumThreads(1)
  paths = paths[::max(1, len(paths) // sample)][:sample]
  out = {'fixture': which, 'stage_ms_per_frame': {}}
  ms = out['stage_ms_per_frame']
  ms['decode'] = _ms(lambda p: clip_frames.decode(p), paths)
  if which == 'casme2':
    ms['decode_and_resize_as_released'] = _ms(
        lambda p: clip_frames._load_resized_native(p, 224), paths)  # pylint: disable=protected-access
    frames = [clip_frames._load_resized_native(p, 224) for p in paths]  # pylint: disable=protected-access
  else:
    full = [clip_frames.decode(p)[0] for p in paths]
    info = face_align.estimate_transform(lambda i: full[i], len(full), 224)
    tr = info.transform
    s = face_align.scale_of(tr)
    out['scale'] = round(s, 3)

    def whole_frame(f):  # the antialiased warp before 2.1.0: the whole frame resampled
      h, w = f.shape[:2]
      nw, nh = int(round(w * s)), int(round(h * s))
      small = cv2.resize(f, (nw, nh), interpolation=cv2.INTER_AREA)
      fx, fy = w / nw, h / nh
      a = face_align.compose(tr, np.array([[fx, 0, 0.5 * fx - 0.5], [0, fy, 0.5 * fy - 0.5]]))
      return cv2.warpAffine(small, a, (224, 224), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REPLICATE)

    grays = [face_align.to_gray(f) for f in full[::max(1, len(full) // 12)]]
    ms['face_search_half_size_first'] = _ms(face_align.landmark_eyes, grays)
    half = face_align.HALF_SIZE_SEARCH_MIN_SIDE
    face_align.HALF_SIZE_SEARCH_MIN_SIDE = 10**9  # the search before 2.2.0: full size only
    try:
      ms['face_search_full_size'] = _ms(face_align.landmark_eyes, grays)
    finally:
      face_align.HALF_SIZE_SEARCH_MIN_SIDE = half
    ms['warp_face_crop'] = _ms(lambda f: face_align.warp(f, tr, 224), full)
    ms['warp_whole_frame'] = _ms(whole_frame, full)
    diff = [np.abs(face_align.warp(f, tr, 224).astype(int) - whole_frame(f)).mean()
            for f in full[:10]]
    out['warp_mean_abs_difference_grey_levels'] = round(float(np.mean(diff)), 3)
    frames = [face_align.warp(f, tr, 224) for f in full]
  bgr = [clip_frames.to_rgb(f)[..., ::-1].copy() for f in frames]
  ms['png_now'] = _ms(clip_frames.encode_png, frames)
  gray = frames[0].ndim == 2
  before = ([cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]
            if gray else  # libpng through OpenCV, the settings of dataset versions 2.1.0-2.2.0
            [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY,
             cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY, cv2.IMWRITE_PNG_FILTER,
             cv2.IMWRITE_PNG_FILTER_SUB])
  ms['png_libpng_before'] = _ms(lambda b: cv2.imencode('.png', b, before), bgr)
  out['png_kb_libpng_before'] = round(np.mean(
      [cv2.imencode('.png', b, before)[1].size for b in bgr]) / 1e3, 1)
  ms['png_zlib1_default_filters'] = _ms(
      lambda b: cv2.imencode('.png', b, [cv2.IMWRITE_PNG_COMPRESSION, 1]), bgr)
  out['png_kb_now'] = round(np.mean([len(clip_frames.encode_png(f)) for f in frames]) / 1e3, 1)
  out['png_kb_zlib1_default_filters'] = round(np.mean(
      [cv2.imencode('.png', b, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].size for b in bgr]) / 1e3, 1)
  return out


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--clips', type=int, default=255, help='CASME II-sized fixture clips')
  parser.add_argument('--samm_clips', type=int, default=159, help='SAMM-sized fixture clips')
  parser.add_argument('--which', default='casme2,samm')
  parser.add_argument('--workdir', default='/tmp/bench_prepare')
  parser.add_argument('--stages', action='store_true',
                      help='only time the steps per frame in one process (no preparation)')
  args = parser.parse_args()
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  shutil.rmtree(args.workdir, ignore_errors=True)
  for which in args.which.split(','):
    clips = args.clips if which == 'casme2' else args.samm_clips
    if args.stages:
      manual = os.path.join(args.workdir, which)
      paths = (write_casme2 if which == 'casme2' else write_samm)(manual, clips)
      print(json.dumps(stages(which, paths)), flush=True)
      continue
    print(json.dumps(run(which, args.workdir, clips)), flush=True)


if __name__ == '__main__':
  main()
