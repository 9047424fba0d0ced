"""One long video from the files as released to stored grayscale PNGs (the long-video builders'
unit of work in the preparation pool; imports neither TensorFlow nor JAX).

The face is aligned with one similarity transform for the whole video (:mod:`mpt_jax.face_align`,
searched on the first frames and then the middle one), or, for a release that is face-cropped
already, each frame is resized as released. Frames are stored as 8-bit grayscale PNG (lossless):
the spotter works on intensities, and a long video has thousands of frames. Every frame is decoded
(the check that it is readable) one at a time, so the memory held is the video's PNGs, never its
decoded frames.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np

from mpt_jax import clip_frames
from mpt_jax import face_align

PNG_COMPRESSION = 1  # OpenCV's zlib level (lossless whatever it is; speed against size)


@dataclasses.dataclass(frozen=True)
class VideoTask:
  """What a worker needs to store one long video."""
  index: int  # position in the sorted video list (results come back in this order)
  paths: Tuple[str, ...]  # the frame files to store, in order
  size: int  # stored side length
  align: bool  # align the face (True) or resize each frame as released (False)
  margin: float  # face_align margin


def _one_line(e: Exception) -> str:
  return ' '.join(str(e).split()) or type(e).__name__


def to_gray(frame: np.ndarray) -> np.ndarray:
  frame = np.asarray(frame)
  if frame.ndim == 3 and frame.shape[2] == 1:
    return frame[..., 0]
  return frame if frame.ndim == 2 else cv2.cvtColor(frame[..., :3], cv2.COLOR_RGB2GRAY)


def encode_gray_png(frame: np.ndarray) -> bytes:
  ok, buf = cv2.imencode('.png', np.ascontiguousarray(frame, np.uint8),
                         [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
  if not ok:
    raise ValueError('PNG encoding failed')
  return buf.tobytes()


def process_video(task: VideoTask) -> Dict:
  """Decodes, checks, aligns (or resizes) and encodes every frame of one video.

  Returns:
    A dict like :func:`mpt_jax.clip_frames.process_clip`'s: ``index``, ``pngs`` (bytes or None
    per frame), ``bad`` (``[path, error]`` per unreadable frame), ``method``, ``transform``,
    ``frame`` and ``source_size``.
  """
  cv2.setNumThreads(1)
  n = len(task.paths)
  pngs: List[Optional[bytes]] = [None] * n
  bad: List[List[str]] = []
  out = {'index': task.index, 'pngs': pngs, 'bad': bad, 'method': 'none', 'transform': None,
         'frame': -1, 'source_size': None}
  cache: Dict[int, Optional[np.ndarray]] = {}
  errors: Dict[int, str] = {}

  def get_full(k):
    if k not in cache:
      try:
        cache[k] = clip_frames.decode(task.paths[k])[0]
      except Exception as e:  # pylint: disable=broad-except
        cache[k], errors[k] = None, _one_line(e)
    return cache[k]

  info = None
  if task.align:
    info = face_align.estimate_transform(get_full, n, task.size, task.margin, n // 2)
  first = next((k for k in range(n) if get_full(k) is not None), None)
  if first is None:
    bad.extend([p, errors.get(k, 'unreadable')] for k, p in enumerate(task.paths))
    return out
  h, w = cache[first].shape[:2]
  out['source_size'] = (int(h), int(w))
  if info is None:
    transform = face_align.resize_transform(h, w, task.size, task.size)
  else:
    transform = np.asarray(info.transform)
    out.update(method=info.method, frame=int(info.frame))
  out['transform'] = np.asarray(transform).tolist()
  for k, path in enumerate(task.paths):
    frame = cache.pop(k, None) if k in cache else get_full(k)
    cache.pop(k, None)
    if frame is None:
      bad.append([path, errors.get(k, 'unreadable')])
      continue
    if frame.shape[:2] != (h, w):
      bad.append([path, f'frame is {frame.shape[1]}x{frame.shape[0]}, the video\'s other frames '
                        f'{w}x{h}'])
      continue
    gray = to_gray(frame)
    if info is None:
      stored = cv2.resize(gray, (task.size, task.size), interpolation=cv2.INTER_AREA)
    else:
      stored = to_gray(face_align.warp(gray, transform, task.size))
    pngs[k] = encode_gray_png(stored)
  return out
