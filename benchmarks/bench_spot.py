"""Spotting speed: frames/s of the training-free spotter on a synthetic 30 fps long video.

Usage: python -m benchmarks.bench_spot [--seconds=120] [--size=128] [--workers=0]
       [--method=flow|learned] [--flow_features=1]

The video is :mod:`mpt_jax.spotting.planted_video` (an aligned face with noise, head drift and
planted expressions) at the stored size of the long-video datasets; rendering it is not timed.
Timed: :func:`mpt_jax.spotting.spotter.spot` over the whole video (optical flow on ``--workers``
threads, the jitted region pooling, peaks and intervals), after one warm-up call on a short video
(the compilation is not counted). Prints one JSON line with the frames/s and the time a
10-minute video takes at that rate.

``--method=learned``: the learned spotter (:mod:`mpt_jax.spotting.learned`) instead. Its classifier
is first trained on two other short planted videos (not timed, as a LOSO fold's model would be
ready); timed: the per-frame features of the whole video (the jitted magnified-motion energy in
fixed-size chunks, and the flow scores unless ``--flow_features=0``), the classifier's
probabilities and the peaks -> intervals step.
"""

import argparse
import json
import os
import platform
import time

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


def learned_runner(args, preset):
  """The learned spotter with a classifier trained on two other planted videos (not timed)."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from configs import casme2_longvideo  # pylint: disable=g-import-not-at-top
  from mpt_jax.spotting import learned  # pylint: disable=g-import-not-at-top
  config = casme2_longvideo.get_config()
  config.spot.learned.flow_features = bool(args.flow_features)
  lc = config.spot.learned
  xs, ys = [], []
  for seed in (11, 12):
    f, ev = planted_video.video(600, args.size, seed=seed)
    xs.append(learned.context_stack(learned.frame_features(f, preset, config, args.workers),
                                    int(lc.context), int(lc.context_step)))
    ys.append(learned.frame_labels(np.arange(1, 601), planted_video.ground_truth(ev)))
  model = learned.fit_classifier(np.concatenate(xs), np.concatenate(ys), config)
  fixed = dataclasses.replace(preset, threshold='absolute', p=0.5)

  def run(frames):
    x = learned.context_stack(learned.frame_features(frames, preset, config, args.workers),
                              int(lc.context), int(lc.context_step))
    return learned.scores_to_result(model.probabilities(x), np.arange(1, len(frames) + 1), fixed)
  return run


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--seconds', type=float, default=120.0, help='video length at 30 fps')
  parser.add_argument('--size', type=int, default=128, help='stored face size (pixels)')
  parser.add_argument('--workers', type=int, default=0, help='optical-flow threads (0 = all)')
  parser.add_argument('--method', default='flow', choices=('flow', 'learned'),
                      help='the training-free (flow) or the learned spotter')
  parser.add_argument('--flow_features', type=int, default=1,
                      help='learned: also feed the flow scores (1) or the energy alone (0)')
  args = parser.parse_args()
  n = int(args.seconds * planted_video.FPS)
  preset = params.PRESETS['casme2_longvideo']
  if args.method == 'learned':
    run = learned_runner(args, preset)
  else:
    run = lambda f: spotter.spot(f, np.arange(1, len(f) + 1), preset, args.workers)  # pylint: disable=unnecessary-lambda-assignment
  warm, _ = planted_video.video(120, args.size)
  run(warm)
  frames, events = planted_video.video(n, args.size)
  t0 = time.perf_counter()
  res = run(frames)
  dt = time.perf_counter() - t0
  fps = n / dt
  print(json.dumps({'method': args.method,
                    'flow_features': bool(args.flow_features) if args.method == 'learned' else None,
                    'frames': n, 'size': args.size, 'seconds': round(dt, 2),
                    'frames_per_s': round(fps, 1), 'ten_minutes_30fps_s': round(18000 / fps, 1),
                    'x_real_time': round(fps / 30.0, 2), 'planted': len(events),
                    'spotted': len(res.intervals),
                    'workers': args.workers or len(os.sched_getaffinity(0)), 'cpu': cpu_name(),
                    'cores': len(os.sched_getaffinity(0))}))


if __name__ == '__main__':
  main()
