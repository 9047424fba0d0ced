"""One clip from the files as released to stored PNGs: decode, check, align, resize, encode.

This is the unit of work of the preparation pool (``tfds_builders/pipeline.py``). It imports neither
TensorFlow nor TFDS, so spawned workers start in well under a second. Every frame is decoded
(that is the check that it is readable); an unreadable frame is reported, never silently dropped
or kept.

Two ways a frame is stored, both giving ``size`` x ``size`` RGB (grayscale replicated):

* as released (datasets that ship face crops): PIL's bilinear resize of the whole frame, exactly as
  the builders always did (:func:`load_resized`);
* aligned: one similarity transform per clip from :mod:`mpt_jax.face_align`, applied identically to
  every frame. Large JPEGs are decoded in PIL's draft mode at the reduction
  :func:`face_align.draft_factor` allows (at least one decoded pixel per output pixel); every frame
  of a clip is decoded at the same reduction, so the alignment adds no frame-to-frame difference.

The result is deterministic: it depends only on the task, never on the worker that ran it.
"""

import dataclasses
import os
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from PIL import Image

from mpt_jax import face_align

PNG_COMPRESSION = 1  # zlib level of the stored PNGs (lossless at any level; 1 is the fastest
#                       that still compresses: 2.4 ms per 224 px frame here, TFDS's default 6:
#                       8.8 ms)


@dataclasses.dataclass(frozen=True)
class ClipTask:
  """What a worker needs to process one clip."""
  index: int  # position of the clip in the sorted clip list (results come back in this order)
  paths: Tuple[str, ...]  # frame files, onset first
  size: int  # stored side length
  align: bool  # align the face (True) or resize the frame as released (False)
  margin: float  # face_align margin
  apex_index: int  # apex position within ``paths``, the last frame searched for a face
  out_dir: str  # where the PNGs go (created by the worker)


def _one_line(e: Exception) -> str:
  return ' '.join(str(e).split()) or type(e).__name__


def load_resized(path: str, size: int) -> np.ndarray:
  """The as-released path: RGB uint8, PIL bilinear (antialiased) resize to ``size`` x ``size``."""
  with Image.open(path) as im:
    im.load()
    im = im.convert('RGB')
    if im.size != (size, size):
      im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, np.uint8)


def decode(path: str, reduce: int = 1) -> Tuple[np.ndarray, int, Tuple[int, int]]:
  """Decodes ``path`` as grayscale (if stored so) or RGB uint8, JPEGs optionally in draft mode.

  Returns:
    ``(array, reduction, (height, width))``; ``reduction`` is 1 unless draft mode decoded the JPEG
    at 1/reduction (pixel i then covers source pixels ``[i * r, (i + 1) * r)``); height and width
    are the file's full size.
  """
  with Image.open(path) as im:
    w, h = im.size
    mode = 'L' if im.mode in ('L', '1', 'I;16', 'I', 'F') else 'RGB'
    got = 1
    if reduce > 1 and im.format == 'JPEG':
      im.draft(mode, (w // reduce, h // reduce))
      nw = im.size[0]
      r = int(round(w / nw)) if nw else 1
      if r > 1 and -(-w // r) == im.size[0] and -(-h // r) == im.size[1]:
        got = r
    im.load()
    if got == 1 and im.size != (w, h):  # draft gave an unexpected size: decode again, in full
      return decode(path, 1)
    return np.asarray(im.convert(mode), np.uint8), got, (h, w)


def _png(path: str, rgb: np.ndarray) -> None:
  ok, buf = cv2.imencode('.png', np.ascontiguousarray(rgb[..., ::-1]),
                         [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
  if not ok:
    raise RuntimeError(f'PNG encoding failed for {path}')
  with open(path, 'wb') as f:
    f.write(buf.tobytes())


def process_clip(task: ClipTask) -> Dict:
  """Decodes, checks, aligns (or resizes) and encodes every frame of one clip.

  Returns:
    A dict: ``index``; ``pngs`` (one stored PNG path per frame, None for an unreadable frame);
    ``bad`` (``[path, error]`` per unreadable frame); ``method`` ('landmarks' | 'haar' | 'centre' |
    'none' for as-released); ``transform`` ((2, 3) list, source pixels -> stored pixels, of the
    first readable frame for 'none'); ``frame`` (frame index the transform was estimated on, -1 if
    none); ``source_size`` ((height, width) of the first readable frame).
  """
  cv2.setNumThreads(1)  # one clip per process: the pool provides the parallelism
  os.makedirs(task.out_dir, exist_ok=True)
  n = len(task.paths)
  pngs: List[Optional[str]] = [None] * n
  bad: List[List[str]] = []
  out = {'index': task.index, 'pngs': pngs, 'bad': bad, 'method': 'none', 'transform': None,
         'frame': -1, 'source_size': None}

  def target(k):
    return os.path.join(task.out_dir, f'{k:05d}.png')

  if not task.align:
    for k, path in enumerate(task.paths):
      try:
        if out['source_size'] is None:
          with Image.open(path) as im:
            w, h = im.size
          out['source_size'] = (h, w)
          out['transform'] = face_align.resize_transform(h, w, task.size, task.size).tolist()
        _png(target(k), load_resized(path, task.size))
        pngs[k] = target(k)
      except Exception as e:  # pylint: disable=broad-except
        bad.append([path, _one_line(e)])
    return out

  full: Dict[int, Optional[np.ndarray]] = {}
  errors: Dict[int, str] = {}

  def get_full(k):
    if k not in full:
      try:
        full[k] = decode(task.paths[k])[0]
      except Exception as e:  # pylint: disable=broad-except
        full[k], errors[k] = None, _one_line(e)
    return full[k]

  info = face_align.estimate_transform(get_full, n, task.size, task.margin, task.apex_index)
  if info is None:  # no candidate frame is readable: centre crop of the first readable frame
    first = next((k for k in range(n) if get_full(k) is not None), None)
    if first is not None:
      h, w = full[first].shape[:2]
      info = face_align.AlignInfo('centre', face_align.centre_transform(h, w, task.size), -1,
                                  None, ())
  if info is not None:
    out.update(method=info.method, transform=np.asarray(info.transform).tolist(), frame=info.frame)
    ref = next(full[k].shape[:2] for k in sorted(full) if full[k] is not None)
    out['source_size'] = tuple(int(v) for v in ref)
  reduce = face_align.draft_factor(info.transform) if info is not None else 1
  for k, path in enumerate(task.paths):
    if k in errors:
      bad.append([path, errors[k]])
      continue
    try:
      frame, got, hw = decode(path, reduce)
    except Exception as e:  # pylint: disable=broad-except
      bad.append([path, _one_line(e)])
      continue
    if hw != out['source_size']:
      bad.append([path, f'frame is {hw[1]}x{hw[0]}, the clip\'s other frames '
                        f'{out["source_size"][1]}x{out["source_size"][0]}'])
      continue
    aligned = face_align.warp(frame, info.transform, task.size, reduced_by=got)
    _png(target(k), face_align.to_rgb(aligned))
    pngs[k] = target(k)
  full.clear()
  return out
