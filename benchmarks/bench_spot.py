"""Spotting speed: frames/s of the training-free spotter on a synthetic 30 fps long video.

Usage: python benchmarks/bench_spot.py [--seconds=120] [--size=128] [--workers=0]

The video is :mod:`mpt_jax.spotting.planted_video` (an aligned face with noise, head drift and
planted expressions) at the stored size of the long-video datasets; rendering it is not timed.
Timed: :func:`mpt_jax.spotting.spotter.spot` over the whole video (optical flow on ``--workers``
threads, the jitted region pooling, peaks and intervals), after one warm-up call on a short video
(the compilation is not counted). Prints one JSON line with the frames/s and the time a
10-minute video takes at that rate.
"""

import argparse
import json
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top

from mpt_jax.spotting import params  # pylint: disable=g-import-not-at-top
from mpt_jax.spotting import planted_video  # pylint: disable=g-import-not-at-top
from mpt_jax.spotting import spotter  # pylint: disable=g-import-not-at-top


def cpu_name() -> str:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=120.0, help='video length at 30 fps')
  parser.add_argument('--size', type=int, default=128, help='stored face size (pixels)')
  parser.add_argument('--workers', type=int, default=0, help='optical-flow threads (0 = all)')
  args = parser.parse_args()
  n = int(args.seconds * planted_video.FPS)
  preset = params.PRESETS['casme2_longvideo']
  warm, _ = planted_video.video(120, args.size)
  spotter.spot(warm, np.arange(1, 121), preset, args.workers)
  frames, events = planted_video.video(n, args.size)
  t0 = time.perf_counter()
  res = spotter.spot(frames, np.arange(1, n + 1), preset, args.workers)
  dt = time.perf_counter() - t0
  fps = n / dt
  print(json.dumps({'frames': n, 'size': args.size, 'seconds': round(dt, 2),
                    'frames_per_s': round(fps, 1), 'ten_minutes_30fps_s': round(18000 / fps, 1),
                    'x_real_time': round(fps / 30.0, 2), 'planted': len(events),
                    'spotted': len(res.intervals),
                    'workers': args.workers or len(os.sched_getaffinity(0)), 'cpu': cpu_name(),
                    'cores': len(os.sched_getaffinity(0))}))


if __name__ == '__main__':
  main()
