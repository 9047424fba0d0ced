"""``--mode=spot``: spot expressions over a prepared long-video dataset, or in one video.

* ``spot_dataset(config, workdir)``: the training-free spotter over every video of the configured
  long-video dataset (``configs/casme2_longvideo.py``, ``configs/samm_longvideo.py``). Nothing is
  trained or tuned: the spotter's settings are the config's (``config.spot``, from the literature),
  so no subject's videos influence another's predictions. With ``config.spot.method='learned'``,
  the learned spotter (:mod:`mpt_jax.spotting.learned`) instead, trained leave-one-subject-out.
  Writes into ``workdir``:
  ``spots.csv`` (MEGC submission format: ``subject,video,onset,offset,type,emotion``, source frame
  numbers as the sheets count them, type ``me``/``mae``, emotion empty unless recognised),
  ``spots.json`` (with
  apex and score), ``metrics.json`` and ``report.md`` (the MEGC metric: TP/FP/FN pooled over the
  dataset, MaE/ME/overall precision, recall and F1; per-video counts; timelines of the worst and
  best videos under ``timelines/``). With a trained recognition run (``--recognise``), each
  spotted ME is classified by the fold model that never saw its subject and STRS is reported.
* ``spot_input(workdir, input, ...)``: spots in a video file or frame folder, then classifies each
  ME interval with a trained recognition run (:class:`mpt_jax.predict.Recogniser`: every finished
  fold, averaged). Writes ``spots.csv``, ``spots.json`` and ``timeline.png`` into ``output``.
"""

import csv
import dataclasses
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from absl import logging

from mpt_jax import errors
from mpt_jax import face_align
from mpt_jax import frame_files
from mpt_jax import workdir as wd
from mpt_jax.spotting import metrics
from mpt_jax.spotting import params as params_lib

SPOT_SIZE = 128  # the face size the spotter works at (as the long-video datasets store it)
# Published results for context in report.md (F1 MaE / ME / overall): the MEGC2020 baseline's
# README, the MEGC2021 table as MTSN's README reproduces it, MEAN's README.
BASELINES = {
    'casme2_longvideo': [('MDMD (MEGC2020 baseline, training-free)', '0.1196 / 0.0082 / 0.0376'),
                         ('OF-FD (MEGC2021 winner, training-free)', '0.3782 / 0.1965 / 0.3436'),
                         ('MEAN (STR, ME only): spotting F1 0.1214, STRS 0.0809', '')],
    'samm_longvideo': [('MDMD (MEGC2020 baseline, training-free)', '0.0629 / 0.0364 / 0.0445'),
                       ('OF-FD (MEGC2021 winner, training-free)', '0.4149 / 0.2162 / 0.3638'),
                       ('MEAN (STR, ME only): spotting F1 0.0949, STRS 0.0499', '')],
}


METHODS = ('flow', 'learned')  # config.spot.method: the training-free or the learned spotter


class SpotError(errors.UserError):
  """A spotting input or option the user can fix (the message says how)."""


def spotter_params(config) -> params_lib.SpotterParams:
  s = config.spot
  return params_lib.SpotterParams(k_me=int(s.k_me), k_mae=int(s.k_mae), p=float(s.p),
                                  me_min=int(s.me_min), me_max=int(s.me_max),
                                  valley_ratio=float(s.valley_ratio))


def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w', newline='') as f:
      w = csv.writer(f)
      w.writerow(header)
      w.writerows(rows)
    os.replace(tmp, path)
  except OSError as e:
    raise wd.WorkdirError(f'Cannot write {path}: {e.strerror or e}') from e


def read_submission(path: str) -> Dict[Tuple[str, str], List[metrics.Interval]]:
  """A ``spots.csv`` (MEGC submission format) back as ``{(subject, video): intervals}``."""
  out: Dict[Tuple[str, str], List[metrics.Interval]] = {}
  with open(path, newline='') as f:
    for i, row in enumerate(csv.DictReader(f), start=2):
      try:
        iv = metrics.Interval(int(row['onset']), int(row['offset']), row['type'].strip().lower(),
                              emotion=row.get('emotion') or '')
      except (KeyError, ValueError, TypeError) as e:
        raise SpotError(f'{path} row {i}: {e}; expected subject,video,onset,offset,type,emotion')
      out.setdefault((row['subject'], row['video']), []).append(iv)
  return out


def timeline_png(path: str, title: str, frame_numbers: np.ndarray, result, truth=(),
                 labels: Optional[Dict[int, str]] = None) -> None:
  """The motion score (micro and macro lag), the thresholds, the true and spotted intervals."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(12, 3.2), dpi=100)
  x = np.asarray(frame_numbers)
  ax.plot(x, result.score_me, lw=0.8, color='tab:blue', label='micro-lag score')
  ax.plot(x, result.score_mae, lw=0.8, color='tab:orange', alpha=0.7, label='macro-lag score')
  ax.axhline(result.threshold_me, color='tab:blue', ls='--', lw=0.7, label='micro threshold')
  ax.axhline(result.threshold_mae, color='tab:orange', ls='--', lw=0.7, label='macro threshold')
  top = max(float(np.max(result.score_me, initial=0)), float(np.max(result.score_mae, initial=0)),
            1e-6)
  colours = {'me': 'tab:red', 'mae': 'tab:green'}
  for iv in truth:
    ax.axvspan(iv.onset, iv.offset, ymin=0.9, ymax=1.0, color=colours[iv.type], alpha=0.6)
  for k, iv in enumerate(result.intervals):
    ax.axvspan(iv.onset, iv.offset, ymin=0.0, ymax=0.08, color=colours[iv.type], alpha=0.6)
    if labels and k in labels:
      ax.text((iv.onset + iv.offset) / 2, top * 1.02, labels[k], ha='center', va='bottom',
              fontsize=7)
  ax.set_ylim(0, top * 1.15)
  ax.set_xlabel('frame (source numbering)')
  ax.set_title(title + ('  (top band: annotated, bottom band: spotted; red ME, green MaE)'
                        if truth else '  (band: spotted; red ME, green MaE)'), fontsize=9)
  ax.legend(loc='center right', fontsize=7, ncol=2)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


# ------------------------------------------------------------------------------- dataset mode
def coarse_class(name: str) -> str:
  """A recogniser's class as MEGC's STR classes: negative, positive, surprise (else others)."""
  return metrics.coarse_emotion(name) or 'others'


def recognise_intervals(recogniser, video, intervals: Sequence[metrics.Interval]
                        ) -> Tuple[List[metrics.Interval], List[str]]:
  """Each ME interval with ``emotion`` set to the recogniser's class (coarse), classified by the
  fold model trained without the video's subject (every finished fold when the run never saw the
  subject); returns ``(intervals, folds used)``."""
  import cv2  # pylint: disable=g-import-not-at-top
  mes = [k for k, iv in enumerate(intervals) if iv.type == 'me']
  if not mes:
    return list(intervals), []
  folds = [video.subject] if video.subject in recogniser.subjects else list(recogniser.finished)
  size = recogniser.stored_size
  clips = []
  for k in mes:
    iv = intervals[k]
    idx = np.nonzero((video.frame_numbers >= iv.onset) & (video.frame_numbers <= iv.offset))[0]
    frames = [face_align.to_rgb(cv2.resize(video.frames[i], (size, size),
                                           interpolation=cv2.INTER_LINEAR)) for i in idx]
    clips.append(recogniser.preprocess(frames)[0])
  mean, _ = recogniser.probabilities(np.stack(clips), folds)
  out = list(intervals)
  for k, p in zip(mes, mean):
    name = recogniser.classes[int(np.argmax(p))]
    out[k] = dataclasses.replace(out[k], emotion=coarse_class(name))
  return out, folds


def choose_p_loso(signals, truth, subject_of, params, grid: Sequence[float]) -> Dict[str, float]:
  """``{subject: p}``: for each subject, the threshold of ``grid`` with the best overall F1 (MEGC
  counts pooled) over the *other* subjects' videos (ties: the smaller p). The held-out subject's
  own videos never influence its threshold."""
  from mpt_jax.spotting import spotter  # pylint: disable=g-import-not-at-top
  subjects = sorted(set(subject_of.values()))
  if len(subjects) < 2:
    raise SpotError('config.spot.p_grid chooses the threshold on the other subjects\' videos: '
                    f'it needs at least 2 subjects, the data has {subjects}')
  out = {}
  for held_out in subjects:
    train = [k for k in signals if subject_of[k] != held_out]
    out[held_out] = spotter.choose_p({k: signals[k] for k in train}, truth, params, grid)
  return out


def spot_dataset(config, workdir: str, recognise: str = '', recogniser=None) -> str:
  """Spots every video of the configured long-video dataset; returns the report's summary text.

  ``recognise``: a trained recognition run; each spotted ME is then classified (the STR task) by
  the fold model that never saw the video's subject, and STRS is reported (3 classes).
  """
  from mpt_jax.spotting import dataset  # pylint: disable=g-import-not-at-top
  from mpt_jax.spotting import spotter  # pylint: disable=g-import-not-at-top
  if 'spot' not in config:
    raise SpotError(f'config for {config.data.name!r} has no "spot" section: --mode=spot takes a '
                    'long-video config, e.g. --config=configs/casme2_longvideo.py')
  if recognise and recogniser is None:
    from mpt_jax import predict  # pylint: disable=g-import-not-at-top
    recogniser = predict.Recogniser(recognise)
  method = str(config.spot.get('method', 'flow'))
  if method not in METHODS:
    raise SpotError(f'config.spot.method must be one of {METHODS}, got {method!r}')
  params = spotter_params(config)
  workdir = wd.resolve(workdir)
  os.makedirs(os.path.join(workdir, 'timelines'), exist_ok=True)
  truth, signals, subject_of, folds_used = {}, {}, {}, {}
  features, numbers = {}, {}  # the learned spotter's per-frame features, frame numbers
  t0 = time.perf_counter()
  frames_done = 0
  for video in dataset.iter_videos(config, tuple(config.data.subjects)):
    truth[video.key], subject_of[video.key] = video.intervals, video.subject
    frames_done += len(video.frame_numbers)
    if method == 'learned':
      from mpt_jax.spotting import learned  # pylint: disable=g-import-not-at-top
      features[video.key] = learned.frame_features(video.frames, params, config,
                                                   int(config.spot.workers))
      numbers[video.key] = video.frame_numbers
      logging.info('%s/%s: %d frames, %d annotated', video.subject, video.video,
                   len(video.frame_numbers), len(video.intervals))
      continue
    res = spotter.spot(video.frames, video.frame_numbers, params, int(config.spot.workers))
    signals[video.key] = res
    logging.info('%s/%s: %d frames, %d annotated, %d spotted', video.subject, video.video,
                 len(video.frame_numbers), len(video.intervals), len(res.intervals))
  if not truth:
    raise SpotError(f'{config.data.name}: no video to spot in')
  grid = tuple(float(p) for p in config.spot.get('p_grid', ()))
  chosen_p = {}
  if method == 'learned':  # one classifier and threshold per held-out subject, on the others
    signals, chosen_p = learned.spot_loso(features, numbers, truth, subject_of, params, config)
    params = dataclasses.replace(params, threshold='absolute')  # as spot_loso thresholds
  elif grid:  # the threshold of each subject's videos chosen on the other subjects' videos
    chosen_p = choose_p_loso(signals, truth, subject_of, params, grid)
    for key, res in signals.items():
      signals[key] = spotter.intervals_from_scores(
          res.score_me, res.score_mae, res.frame_numbers,
          dataclasses.replace(params, p=chosen_p[subject_of[key]]))
  preds = {key: res.intervals for key, res in signals.items()}
  if recogniser is not None:  # a second pass over the frames: the spotted MEs classified
    for video in dataset.iter_videos(config, tuple(config.data.subjects)):
      preds[video.key], folds_used[video.subject] = recognise_intervals(recogniser, video,
                                                                        preds[video.key])
  seconds = time.perf_counter() - t0
  per_video = []
  for (subject, name), res in signals.items():
    c = metrics.spotting_counts({0: truth[(subject, name)]}, {0: res.intervals})['overall']
    per_video.append({'subject': subject, 'video': name,
                      'frames': int(len(res.frame_numbers)), 'truth': len(truth[(subject, name)]),
                      'spotted': len(res.intervals), 'tp': c.tp, 'fp': c.fp, 'fn': c.fn,
                      'f1': c.f1})
  counts = metrics.spotting_counts(truth, preds)
  rows = [(s, v, iv.onset, iv.offset, iv.type, iv.emotion) for (s, v), ivs in sorted(preds.items())
          for iv in ivs]
  write_csv(os.path.join(workdir, 'spots.csv'),
            ('subject', 'video', 'onset', 'offset', 'type', 'emotion'), rows)
  wd.write_json(os.path.join(workdir, 'spots.json'), [
      {'subject': s, 'video': v, 'onset': iv.onset, 'apex': iv.apex, 'offset': iv.offset,
       'type': iv.type, 'score': round(iv.score, 4), 'emotion': iv.emotion}
      for (s, v), ivs in sorted(preds.items()) for iv in ivs])
  summary = {'dataset': config.data.name, 'method': method, 'videos': len(per_video),
             'frames': frames_done,
             'seconds': round(seconds, 2), 'spotter': dataclasses.asdict(params),
             'p_per_subject': chosen_p,
             'metrics': {k: v.as_dict() for k, v in counts.items()}, 'per_video': per_video}
  if recogniser is not None:
    summary['str'] = metrics.strs(truth, preds)
    summary['str']['recogniser'] = {'run': recogniser.workdir, 'classes': recogniser.classes,
                                    'folds_per_subject': folds_used}
  wd.write_json(os.path.join(workdir, 'metrics.json'), summary)
  ranked = sorted([p for p in per_video if p['truth']], key=lambda p: (p['f1'], p['tp']))
  n = max(0, int(config.spot.get('timelines', 3)))
  chosen = ranked[:n] + [p for p in ranked[::-1][:n] if p not in ranked[:n]]
  pngs = []
  for p in chosen:
    key = (p['subject'], p['video'])
    name = f"timelines/{p['subject']}_{p['video']}.png"
    timeline_png(os.path.join(workdir, name), f"{p['subject']}/{p['video']} F1 {p['f1']:.2f}",
                 signals[key].frame_numbers, signals[key], truth[key])
    pngs.append((p, name))
  report = _report_md(config, params, counts, per_video, pngs, seconds, frames_done,
                      summary.get('str'))
  with open(os.path.join(workdir, 'report.md'), 'w') as f:
    f.write(report)
  strs_line = ''
  if 'str' in summary:
    r = summary['str']
    strs_line = (f"\nSTRS {r['strs']:.4f} = ME spotting F1 {r['spotting']['f1']:.4f} x analysis "
                 f"F1 {r['analysis']['f1']:.4f} ({r['analysis']['pairs']} spotted MEs with a "
                 '3-class truth)')
  return (metrics.format_table(counts) + strs_line + f'\n\n{len(per_video)} videos, '
          f'{frames_done} frames in {seconds:.1f} s. Results: '
          f'{os.path.join(workdir, "report.md")}, {os.path.join(workdir, "spots.csv")}')


def _report_md(config, params, counts, per_video, pngs, seconds, frames, str_result=None) -> str:
  grid = tuple(config.spot.get('p_grid', ()))
  how = ('each subject\'s threshold p chosen from ' + str(list(grid)) + ' on the other subjects\' '
         'videos (never its own)' if grid else 'nothing trained or tuned on these videos')
  what = (f'Training-free optical-flow spotter ({how}; settings from the literature): '
          f'{dataclasses.asdict(params)}.')
  if config.spot.get('method', 'flow') == 'learned':
    lc = config.spot.learned
    what = ('Learned spotter: per frame, the energy of the magnified motion (the model\'s '
            'Eulerian magnifier) in each face region' + (' and the optical-flow spotter\'s scores'
                                                          if lc.flow_features else '') +
            '; a logistic regression (outside / inside an ME / inside a MaE) trained for each '
            'held-out subject on the other subjects\' videos, its probability threshold p chosen '
            f'from {list(lc.p_grid)} on those videos only (never the held-out subject\'s); peaks '
            f'and intervals as the training-free spotter: {dataclasses.asdict(params)}.')
  lines = [f'# Spotting: {config.data.name}', '', what, '',
           '## MEGC metric (IoU >= 0.5, counts pooled over the dataset)', '',
           metrics.format_table(counts), '',
           f'{len(per_video)} videos, {frames} stored frames, {seconds:.1f} s '
           f'({frames / max(seconds, 1e-9):.1f} frames/s).', '']
  if str_result:
    a = str_result['analysis']
    lines += ['## Spot, then recognise (STRS)', '',
              f"Recogniser: {str_result['recogniser']['run']} (classes "
              f"{str_result['recogniser']['classes']}, mapped to negative / positive / surprise); "
              'each video\'s MEs are classified by the fold model trained without its subject, or '
              'by every fold where the run never saw the subject (folds used: '
              f"{str_result['recogniser']['folds_per_subject']}).",
              '', f"STRS = {str_result['strs']:.4f} = ME spotting F1 "
              f"{str_result['spotting']['f1']:.4f} x analysis F1 {a['f1']:.4f} (P̄ "
              f"{a['precision']:.4f}, R̄ {a['recall']:.4f}, UF1 {a['uf1']:.4f}, UAR "
              f"{a['uar']:.4f}; {a['pairs']} spotted MEs with a 3-class truth)", '']
  base = BASELINES.get(config.data.name)
  if base:
    lines += ['Published, for comparison (F1 MaE / ME / overall):', '']
    lines += [f'- {name}' + (f': {f1}' if f1 else '') for name, f1 in base]
    lines.append('')
  lines += ['## Per video', '', '| subject | video | frames | annotated | spotted | TP | FP | FN | '
            'F1 |', '|---|---|---|---|---|---|---|---|---|']
  lines += [f"| {p['subject']} | {p['video']} | {p['frames']} | {p['truth']} | {p['spotted']} | "
            f"{p['tp']} | {p['fp']} | {p['fn']} | {p['f1']:.3f} |" for p in per_video]
  if pngs:
    lines += ['', '## Timelines (worst and best videos)', '']
    lines += [f"![{p['subject']}/{p['video']}]({name})" for p, name in pngs]
  return '\n'.join(lines) + '\n'


# --------------------------------------------------------------------------------- input mode
def _frame_source(path: str, fps: Optional[float]):
  """``(numbers, reader, fps)``: the frame numbers and a generator of (number, RGB frame)."""
  import cv2  # pylint: disable=g-import-not-at-top
  from mpt_jax import predict  # pylint: disable=g-import-not-at-top
  path = wd.resolve(path)
  if os.path.isdir(path):
    files = frame_files.list_frames(path)
    if not files:
      raise SpotError(f'{path}: no image files with a frame number in their name')
    if not fps:
      raise SpotError(f'{path} is a folder of frames: give its frame rate with --fps')

    def read_folder(wanted=None):
      for n, p in files:
        if wanted is None or n in wanted:
          frame = cv2.imread(p, cv2.IMREAD_COLOR)
          if frame is None:
            raise SpotError(f'Cannot decode image {p}')
          yield n, frame[..., ::-1]
    return [n for n, _ in files], read_folder, float(fps)
  if not os.path.isfile(path):
    raise SpotError(f'{path}: no such file or folder')
  cap = cv2.VideoCapture(path)
  rate = float(cap.get(cv2.CAP_PROP_FPS) or 0) if cap.isOpened() else 0.0
  cap.release()
  rate = float(fps or rate)
  if rate <= 0:
    raise SpotError(f'{path}: the video does not say its frame rate; give it with --fps')

  def read_video(wanted=None):
    cap = cv2.VideoCapture(path)
    k = 0
    try:
      while True:
        ok, frame = cap.read()
        if not ok:
          break
        k += 1
        if wanted is None or k in wanted:
          yield k, frame[..., ::-1]
    finally:
      cap.release()
  count = predict.count_frames(path)
  if count <= 0:
    count = sum(1 for _ in read_video())
  if count <= 0:
    raise SpotError(f'{path}: no frame could be read; give a video file or a folder of frames')
  return list(range(1, count + 1)), read_video, rate


def _scaled(transform: np.ndarray, size_from: int, size_to: int) -> np.ndarray:
  """The transform onto a ``size_to`` square from one onto a ``size_from`` square."""
  k = size_to / size_from
  return face_align.compose(np.array([[k, 0.0, 0.5 * k - 0.5], [0.0, k, 0.5 * k - 0.5]]),
                            transform)


def spot_input(workdir: str, path: str, output: str = '', fps: Optional[float] = None,
               recogniser=None) -> str:
  """Spots in one video (file or frame folder) and classifies its MEs with the run in workdir."""
  from mpt_jax import predict  # pylint: disable=g-import-not-at-top
  from mpt_jax.spotting import spotter  # pylint: disable=g-import-not-at-top
  from mpt_jax.spotting import video_frames  # pylint: disable=g-import-not-at-top
  recogniser = recogniser or predict.Recogniser(workdir)
  numbers, read, rate = _frame_source(path, fps)
  stride = params_lib.working_stride(rate)
  keep = set(numbers[::stride])
  params = params_lib.params_for('', rate)
  # Pass 1: the working-rate frames, aligned with one transform (from the first frames).
  first: List[np.ndarray] = []
  for _, frame in read(set(numbers[:face_align.NEXT_FRAMES + 1])):
    first.append(frame)
  info = face_align.estimate_transform(lambda i: first[i], len(first), SPOT_SIZE)
  if info.method == 'centre':
    logging.warning('No face found in the first frames of %s: the centred square is used', path)
  kept_numbers, gray = [], []
  for n, frame in read(keep):
    kept_numbers.append(n)
    gray.append(video_frames.to_gray(face_align.warp(frame, info.transform, SPOT_SIZE)))
  if len(gray) < 2 * params.k_me + 1:
    raise SpotError(f'{path}: {len(gray)} frames at the working rate; spotting needs at least '
                    f'{2 * params.k_me + 1} (use --mode=predict for a single short clip)')
  result = spotter.spot(np.stack(gray), kept_numbers, params)
  # Pass 2: the frames of each ME interval at the run's stored size, classified.
  mes = [k for k, iv in enumerate(result.intervals) if iv.type == 'me']
  wanted = {n for k in mes for n in numbers
            if result.intervals[k].onset <= n <= result.intervals[k].offset}
  stored = _scaled(info.transform, SPOT_SIZE, recogniser.stored_size)
  frames_by_number = {n: face_align.to_rgb(face_align.warp(f, stored, recogniser.stored_size))
                      for n, f in read(wanted)}
  probs = {}
  if mes:
    clips = np.stack([recogniser.preprocess(
        [frames_by_number[n] for n in sorted(frames_by_number)
         if result.intervals[k].onset <= n <= result.intervals[k].offset])[0] for k in mes])
    mean, _ = recogniser.probabilities(clips)
    probs = dict(zip(mes, mean))
  classes = recogniser.classes
  output = wd.resolve(output or os.path.splitext(wd.resolve(path))[0] + '_spots')
  os.makedirs(output, exist_ok=True)
  records, rows = [], []
  for k, iv in enumerate(result.intervals):
    p = probs.get(k)
    rec = {'onset': iv.onset, 'apex': iv.apex, 'offset': iv.offset, 'type': iv.type,
           'score': round(iv.score, 4),
           'prediction': classes[int(np.argmax(p))] if p is not None else '',
           'probabilities': ({c: round(float(v), 6) for c, v in zip(classes, p)}
                             if p is not None else {})}
    records.append(rec)
    rows.append([iv.onset, iv.apex, iv.offset, iv.type, rec['score'], rec['prediction']] +
                [rec['probabilities'].get(c, '') for c in classes])
  write_csv(os.path.join(output, 'spots.csv'),
            ['onset', 'apex', 'offset', 'type', 'score', 'prediction']
            + [f'p_{c}' for c in classes],
            rows)
  wd.write_json(os.path.join(output, 'spots.json'), {
      'input': path, 'fps': rate, 'stride': stride, 'face': f'{info.method}@{info.frame}',
      'frames': len(numbers), 'spotter': dataclasses.asdict(params), 'run': recogniser.workdir,
      'folds': len(recogniser.finished), 'intervals': records})
  labels = {k: records[k]['prediction'] for k in mes}
  timeline_png(os.path.join(output, 'timeline.png'), os.path.basename(path), result.frame_numbers,
               result, labels=labels)
  lines = [f'{path}: {len(numbers)} frames at {rate:g} fps, {len(result.intervals)} intervals '
           f'({len(mes)} ME, classified by {len(recogniser.finished)} folds)']
  lines += [f"  {r['type']:3s} {r['onset']}-{r['offset']} (apex {r['apex']}) score {r['score']}"
            + (f" -> {r['prediction']}" if r['prediction'] else '') for r in records]
  lines.append(f'Results: {output}/spots.csv, spots.json, timeline.png')
  return '\n'.join(lines)
