"""Preparation on all cores: clips decoded, checked, aligned and encoded while TFDS writes.

:func:`stream_clips` runs :func:`mpt_jax.clip_frames.process_clip` for every clip in a process pool
(``spawn`` workers that import only numpy, OpenCV, PIL and isal: nothing of the parent's
TensorFlow/JAX threads is inherited, and not its main script). Each worker sends back the clip's
stored PNGs as bytes; the builder's ``_generate_examples`` hands each clip to TFDS as soon as it is
ready (TFDS stores the PNG bytes as they are), so serialising and writing overlap the pool's work.
At most a few clips per worker are ahead of TFDS (:data:`CLIPS_AHEAD_PER_WORKER`), which bounds the
memory the PNGs take. Results come back in clip order, and each clip's frames depend only on the
clip, so the stored examples (every field, every PNG byte) are identical for any number of workers
(the record files are not byte-identical even between two runs with the same number: TFDS
serialises each example's feature map in a per-process order). An unreadable frame stops
the preparation before TFDS finishes: TFDS then deletes its incomplete folder, so nothing is left.
When clips are aligned, the parent builds dlib's face detector once (while the workers start) and
the workers load it from a temporary file (``face_align.share_detector``), instead of each
unpacking it from dlib.

Which clips are aligned (``config.data.align``):

* ``auto`` (default): clips from releases without face crops (SAMM, CAS(ME)^3, SMIC
  ``SMIC_all_raw``, CASME II ``CASME2_RAW_selected``) are aligned; the released crops (CASME II
  ``Cropped``, ``SMIC_all_cropped``, recognised by their ``reg_`` file names) are stored as
  released;
* ``always``: every clip is aligned (the released crops too);
* ``never``: every frame is resized as released (the old behaviour).
"""

import collections
import concurrent.futures
import contextlib
import itertools
import multiprocessing
import os
import shutil
import sys
import tempfile
import types
from typing import Any, Deque, Dict, Iterator, List, Optional, Sequence

import cv2
import numpy as np
from absl import logging

from mpt_jax import clip_frames
from mpt_jax import face_align

ALIGN_MODES = ('auto', 'always', 'never')
CONTACT_SHEET = 'contact_sheet.png'
SHEET_PER_SUBJECT = 4  # onset frames per subject on the contact sheet
SMALL_JOB_FRAMES = 64  # below this many frames in all, one process is faster than starting a pool
# Clips submitted to the pool and not yet taken by TFDS, per worker: enough that a worker never
# waits for the next clip, few enough that the PNGs held in memory stay a few clips' worth.
CLIPS_AHEAD_PER_WORKER = 2


def released_cropped(dataset: str, first_frame: str) -> bool:
  """Whether a clip's frames are a released face crop: CASME II ``Cropped`` (``reg_img*``) and
  ``SMIC_all_cropped`` (``reg_image*`` / ``reg_*``) name their registered frames ``reg_...``."""
  return dataset in ('casme2', 'smic') and os.path.basename(first_frame).lower().startswith('reg_')


def should_align(mode: str, dataset: str, first_frame: str) -> bool:
  if mode not in ALIGN_MODES:
    raise ValueError(f'align mode {mode!r}; expected one of {ALIGN_MODES}')
  if mode == 'never':
    return False
  return mode == 'always' or not released_cropped(dataset, first_frame)


def num_workers(requested: int, total_frames: int, num_clips: int) -> int:
  """``requested`` processes (0 = every core this process may use), at most one per clip."""
  if requested < 0:
    raise ValueError(f'prepare_workers must be >= 0, got {requested}')
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  n = requested or cores or 1
  if not requested and total_frames < SMALL_JOB_FRAMES:
    n = 1
  return max(1, min(n, num_clips))


@contextlib.contextmanager
def _workers_skip_main_module():
  """While pool workers are spawned, hides the parent's main script from them.

  A ``spawn`` worker first imports the parent's ``__main__`` script again (as ``__mp_main__``):
  for ``main.py`` or a benchmark that means absl, ml_collections and often TensorFlow, up to a
  second or two per worker on a busy machine, for nothing: a worker runs
  :func:`clip_frames.process_clip` and needs only that module (numpy, OpenCV, PIL, isal). Python
  sends a worker the main script's path when the worker is started (inside ``submit``), so
  ``__main__`` is an empty module for exactly that moment; nothing else runs in between.
  """
  main = sys.modules.get('__main__')
  sys.modules['__main__'] = types.ModuleType('__main__')
  try:
    yield
  finally:
    if main is not None:
      sys.modules['__main__'] = main


def stream_clips(tasks: Sequence[clip_frames.ClipTask], workers: int,
                 fn=clip_frames.process_clip) -> Iterator[Dict[str, Any]]:
  """Runs every task (in a pool when ``workers`` > 1), yielding the results in task order as they
  are ready, so the caller (TFDS writing the examples) works while the pool still runs.

  ``fn``: the unit of work (a module-level function of one task, importable by a spawned worker
  without TensorFlow): :func:`clip_frames.process_clip`, or the long-video builders'
  ``mpt_jax.spotting.video_frames.process_video``.

  The pool gets one clip per message (a clip is 10-150 frames: messages are a negligible part of
  its time) and sends back the clip's PNG bytes; at most ``CLIPS_AHEAD_PER_WORKER * workers``
  clips are submitted and not yet yielded, so the memory held is bounded whatever the dataset's
  size. Each clip's output depends only on its task, so the number of workers changes nothing that
  is stored. Closing the generator early (an error downstream) cancels what has not started.
  """
  total = len(tasks)
  step = max(1, total // 10)
  if workers <= 1:
    for i, task in enumerate(tasks, start=1):
      yield fn(task)
      if i % step == 0 or i == total:
        logging.info('Prepared %d/%d clips (1 worker)', i, total)
    return
  ctx = multiprocessing.get_context('spawn')
  shared_dir, ready, pool_kwargs = None, None, {}
  if any(t.align for t in tasks):  # the workers load the face detector the parent builds once
    try:
      shared_dir = tempfile.mkdtemp(prefix='mpt_jax_face_detector_')
    except OSError as e:  # no writable temp folder: every worker builds its own (slower, same)
      logging.warning('cannot share the face detector with the workers (%s)', e)
  if shared_dir is not None:
    shared_path = os.path.join(shared_dir, 'frontal_face_detector.svm')
    ready = ctx.Event()
    pool_kwargs = dict(initializer=face_align.use_shared_detector, initargs=(shared_path, ready))
  pool = concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                                **pool_kwargs)
  todo = iter(tasks)
  pending: Deque[concurrent.futures.Future] = collections.deque()

  def submit(n):
    for task in itertools.islice(todo, n):
      pending.append(pool.submit(fn, task))

  finished = False
  try:
    with _workers_skip_main_module():  # the workers start on the first submits
      submit(workers)
    if ready is not None:  # built while the workers start (they wait for it, at most a while)
      try:
        face_align.share_detector(shared_path)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('could not share the face detector with the workers (%s); each builds '
                        'its own', e)
      finally:
        ready.set()
    submit((CLIPS_AHEAD_PER_WORKER - 1) * workers)
    i = 0
    while pending:
      result = pending.popleft().result()
      submit(1)  # before handing the result on: the workers stay busy while TFDS writes it
      i += 1
      yield result
      if i % step == 0 or i == total:
        logging.info('Prepared %d/%d clips (%d worker(s))', i, total, workers)
    finished = True
  finally:
    # Done: the workers exit in the background. Stopped early: nothing more is started.
    pool.shutdown(wait=not finished, cancel_futures=not finished)
    if shared_dir is not None:  # every worker that needed the detector has loaded it by now
      shutil.rmtree(shared_dir, ignore_errors=True)


def process_clips(tasks: Sequence[clip_frames.ClipTask], workers: int) -> List[Dict[str, Any]]:
  """Every result of :func:`stream_clips`, in task order."""
  return list(stream_clips(tasks, workers))


def alignment_summary(mode: str, margin: float, keys: Sequence[str],
                      results: Sequence[Dict[str, Any]], contact_sheet: str) -> Dict[str, Any]:
  """The report's ``alignment`` section: counts per method, per-clip method, faces not found."""
  counts = {m: 0 for m in face_align.METHODS + ('none',)}
  per_clip, no_face = {}, []
  for key, res in zip(keys, results):
    counts[res['method']] += 1
    per_clip[key] = res['method'] if res['frame'] < 0 else f"{res['method']}@{res['frame']}"
    if res['method'] == 'centre':
      no_face.append(key)
  return {'mode': mode, 'margin': margin, 'counts': counts, 'per_clip': per_clip,
          'no_face': no_face, 'contact_sheet': contact_sheet}


def format_alignment(report: Dict[str, Any], data_dir: str = '') -> str:
  """Lines for ``prepare.format_report``: how the clips were aligned, and where no face was found.

  ``data_dir``: the prepared dataset's folder, to print the contact sheet's full path.
  """
  a = report.get('alignment')
  if not a:
    return ''
  c = a['counts']
  sheet = a.get('contact_sheet') or ''
  if sheet and data_dir:
    sheet = os.path.join(data_dir, sheet)
  lines = [f"alignment ({a['mode']}, margin {a['margin']}): {c.get('landmarks', 0)} by landmarks, "
           f"{c.get('haar', 0)} by Haar box, {c.get('centre', 0)} centre crop (no face found), "
           f"{c.get('none', 0)} as released; contact sheet: {sheet or '-'}"]
  haar = [k for k, m in a['per_clip'].items() if m.startswith('haar')]
  if haar:
    lines.append(f'aligned by the Haar box only (no landmarks, no rotation) in {len(haar)} '
                 'clip(s): ' + ', '.join(haar))
  if a['no_face']:
    lines.append(f"no face found in {len(a['no_face'])} clip(s) (centre crop): "
                 + ', '.join(a['no_face']))
  lines.append('(the method of every clip, with the frame it was found on, is in the stored '
               "report's alignment.per_clip)")
  return '\n'.join(lines)


def sheet_add(by_subject: Dict[str, List[bytes]], subject: str, onset_png: Optional[bytes],
              per_subject: int = SHEET_PER_SUBJECT) -> None:
  """Keeps ``onset_png`` for the contact sheet while ``subject`` has fewer than ``per_subject``."""
  if onset_png and len(by_subject.setdefault(subject, [])) < per_subject:
    by_subject[subject].append(onset_png)


def contact_sheet(path: str, by_subject: Dict[str, List[bytes]],
                  per_subject: int = SHEET_PER_SUBJECT, thumb: int = 96,
                  blocks_per_row: int = 4) -> None:
  """A PNG of the stored onset frames (PNG bytes, up to ``per_subject`` per subject, collected by
  :func:`sheet_add`), one labelled block per subject."""
  names = list(by_subject)
  if not names:
    return
  label_h = 16
  block_w, block_h = per_subject * thumb, thumb + label_h
  rows = -(-len(names) // blocks_per_row)
  sheet = np.full((rows * block_h, min(len(names), blocks_per_row) * block_w, 3), 255, np.uint8)
  for b, name in enumerate(names):
    y0, x0 = (b // blocks_per_row) * block_h, (b % blocks_per_row) * block_w
    cv2.putText(sheet, name, (x0 + 3, y0 + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1,
                cv2.LINE_AA)
    for j, p in enumerate(by_subject[name]):
      img = cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR)
      img = cv2.resize(img, (thumb, thumb), interpolation=cv2.INTER_AREA)
      sheet[y0 + label_h:y0 + block_h, x0 + j * thumb:x0 + (j + 1) * thumb] = img
  cv2.imwrite(path, sheet)
