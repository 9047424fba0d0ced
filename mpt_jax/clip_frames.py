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
import struct
import zlib
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from isal import isal_zlib
from PIL import Image

from mpt_jax import face_align

# How the stored PNGs are encoded. PNG is lossless whatever these are (the stored pixels never
# depend on them); they only trade encoding time for file size. The PNG is assembled here (filter
# rows with numpy, deflate with ISA-L's igzip through the ``isal`` package, three chunks): libpng
# through OpenCV spent most of its time in zlib. ``benchmarks/bench_prepare.py --stages``, ms per
# 224 px frame (kB per file), against libpng with the settings used before:
# * colour frames (CASME II-sized fixture): the Sub filter and igzip level 1, 0.31 (132.8) instead
#   of 1.64 (133.5) with the Sub filter and zlib Huffman-only coding;
# * grayscale frames (SAMM-sized fixture, stored as 3 equal channels): the Up filter and igzip
#   level 2, 0.42 (44.7) instead of 1.54 (45.6) with the Up filter and zlib level 1.
# On scikit-image's astronaut a grayscale file is 1.15x libpng's size at zlib level 1 with its
# adaptive filters (``tests/test_prepare_speed.py``): igzip's string matching finds fewer of the
# repeated channels than zlib's.
PNG_LEVEL_COLOUR = 1  # igzip level (0-3)
PNG_LEVEL_GRAY = 2
_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@dataclasses.dataclass(frozen=True)
class ClipTask:
  """What a worker needs to process one clip."""
  index: int  # position of the clip in the sorted clip list (results come back in this order)
  paths: Tuple[str, ...]  # frame files, onset first
  size: int  # stored side length
  align: bool  # align the face (True) or resize the frame as released (False)
  margin: float  # face_align margin
  apex_index: int  # apex position within ``paths``, the last frame searched for a face


def _one_line(e: Exception) -> str:
  return ' '.join(str(e).split()) or type(e).__name__


def load_resized(path: str, size: int) -> np.ndarray:
  """The as-released path: RGB uint8, PIL bilinear (antialiased) resize to ``size`` x ``size``."""
  return to_rgb(_load_resized_native(path, size))


def _load_resized_native(path: str, size: int) -> np.ndarray:
  """:func:`load_resized` before grayscale is replicated: (size, size) for a grayscale file (the
  same values as every channel of :func:`load_resized`: PIL resizes each channel alike), else
  (size, size, 3)."""
  with Image.open(path) as im:
    im.load()
    im = im.convert('L' if im.mode in ('L', '1', 'I;16', 'I', 'F') else 'RGB')
    if im.size != (size, size):
      im = im.resize((size, size), Image.BILINEAR)
    return np.asarray(im, np.uint8)


def to_rgb(frame: np.ndarray) -> np.ndarray:
  """(H, W) or (H, W, 1) grayscale replicated to (H, W, 3); RGB returned as is."""
  return face_align.to_rgb(frame)


_CV2_GRAY_JPEG = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
                  4: cv2.IMREAD_REDUCED_GRAYSCALE_4, 8: cv2.IMREAD_REDUCED_GRAYSCALE_8}


def gray_jpeg_size(data: bytes) -> Optional[Tuple[int, int]]:
  """(height, width) of a complete 8-bit baseline or progressive one-component (grayscale) JPEG,
  else None (colour, other coding, no end-of-image marker at the very end: e.g. a truncated file).

  Reads the markers up to the frame header; entropy-coded data never holds 0xFFD9 (a 0xFF there is
  always followed by 0x00 or a restart marker), so data ending in it was not cut short.
  """
  if data[:2] != b'\xff\xd8' or data[-2:] != b'\xff\xd9':
    return None
  i = 2
  while i + 4 <= len(data):
    if data[i] != 0xFF:
      return None
    m = data[i + 1]
    if m == 0xFF:  # fill byte
      i += 1
      continue
    if m in (0xC0, 0xC1, 0xC2):  # SOF0-2: Lf(2) P(1) Y(2) X(2) Nf(1)
      if i + 10 > len(data) or data[i + 4] != 8 or data[i + 9] != 1:
        return None
      h, w = int.from_bytes(data[i + 5:i + 7], 'big'), int.from_bytes(data[i + 7:i + 9], 'big')
      return (h, w) if h and w else None
    if 0xC3 <= m <= 0xCF and m not in (0xC4, 0xC8, 0xCC) or m in (0xDA, 0xD9):
      return None  # lossless/arithmetic coding, or a scan/end before any frame header
    if 0xD0 <= m <= 0xD7 or m == 0x01:
      i += 2
      continue
    i += 2 + int.from_bytes(data[i + 2:i + 4], 'big')
  return None


def _decode_gray_jpeg(path: str, reduce: int):
  """:func:`decode` of a grayscale JPEG with OpenCV (the same libjpeg-turbo decoding as PIL: equal
  pixels, also at draft reductions; 30 % less time here, PIL's marker parsing is Python), or None
  to let PIL decode it (not a complete grayscale JPEG, a reduction OpenCV lacks, an unexpected
  size). EXIF orientation is ignored, as PIL does."""
  if reduce not in _CV2_GRAY_JPEG:
    return None
  with open(path, 'rb') as f:
    data = f.read()
  hw = gray_jpeg_size(data)
  if hw is None:
    return None
  arr = cv2.imdecode(np.frombuffer(data, np.uint8),
                     _CV2_GRAY_JPEG[reduce] | cv2.IMREAD_IGNORE_ORIENTATION)
  if arr is None or arr.shape != (-(-hw[0] // reduce), -(-hw[1] // reduce)):
    return None
  return arr, reduce, hw


def decode(path: str, reduce: int = 1) -> Tuple[np.ndarray, int, Tuple[int, int]]:
  """Decodes ``path`` as grayscale (if stored so) or RGB uint8, JPEGs optionally in draft mode.

  Complete grayscale JPEGs (SAMM) are decoded by OpenCV, everything else by PIL; both give the same
  pixels (``tests/test_prepare_share.py``).

  Returns:
    ``(array, reduction, (height, width))``; ``reduction`` is 1 unless draft mode decoded the JPEG
    at 1/reduction (pixel i then covers source pixels ``[i * r, (i + 1) * r)``); height and width
    are the file's full size.
  """
  fast = _decode_gray_jpeg(path, reduce)
  return fast if fast is not None else decode_pil(path, reduce)


def decode_pil(path: str, reduce: int = 1) -> Tuple[np.ndarray, int, Tuple[int, int]]:
  """:func:`decode` by PIL alone (draft mode for the reduction)."""
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
      return decode_pil(path, 1)
    return np.asarray(im.convert(mode), np.uint8), got, (h, w)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
  return (struct.pack('>I', len(data)) + kind + data
          + struct.pack('>I', zlib.crc32(data, zlib.crc32(kind))))


def encode_png(frame: np.ndarray) -> bytes:
  """The stored PNG of a frame: (H, W) grayscale (stored as 3 equal channels) or (H, W, 3) RGB.

  Lossless: decoding gives back ``to_rgb(frame)`` exactly (an 8-bit RGB PNG; every row with PNG's
  Sub filter (colour) or Up filter (grayscale), deflated by igzip at :data:`PNG_LEVEL_COLOUR` or
  :data:`PNG_LEVEL_GRAY`).
  """
  frame = np.asarray(frame, np.uint8)
  if frame.ndim == 3 and frame.shape[2] == 1:
    frame = frame[..., 0]
  gray = frame.ndim == 2
  if not gray and (frame.ndim != 3 or frame.shape[2] < 3):
    raise ValueError(f'encode_png: expected (H, W) or (H, W, 3), got {frame.shape}')
  h, w = frame.shape[:2]
  rgb = to_rgb(frame) if gray else frame[..., :3]
  rows = np.ascontiguousarray(rgb).reshape(h, w * 3)
  raw = np.empty((h, w * 3 + 1), np.uint8)
  if gray:  # filter type Up: each byte minus the byte above it (mod 256)
    raw[:, 0] = 2
    raw[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=raw[1:, 1:])
  else:  # filter type Sub: each byte minus the byte one pixel to its left (mod 256)
    raw[:, 0] = 1
    raw[:, 1:4] = rows[:, :3]
    np.subtract(rows[:, 3:], rows[:, :-3], out=raw[:, 4:])
  idat = isal_zlib.compress(raw.tobytes(), PNG_LEVEL_GRAY if gray else PNG_LEVEL_COLOUR)
  header = struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)  # 8-bit RGB, deflate, no interlace
  return (_PNG_SIGNATURE + _png_chunk(b'IHDR', header) + _png_chunk(b'IDAT', idat)
          + _png_chunk(b'IEND', b''))


def process_clip(task: ClipTask) -> Dict:
  """Decodes, checks, aligns (or resizes) and encodes every frame of one clip.

  Returns:
    A dict: ``index``; ``pngs`` (one stored PNG, as bytes, per frame; None for an unreadable
    frame); ``bad`` (``[path, error]`` per unreadable frame); ``method`` ('landmarks' | 'haar' |
    'centre' | 'none' for as-released); ``transform`` ((2, 3) list, source pixels -> stored
    pixels, of the first readable frame for 'none'); ``frame`` (frame index the transform was
    estimated on, -1 if none); ``source_size`` ((height, width) of the first readable frame).
  """
  cv2.setNumThreads(1)  # one clip per process: the pool provides the parallelism
  n = len(task.paths)
  pngs: List[Optional[bytes]] = [None] * n
  bad: List[List[str]] = []
  out = {'index': task.index, 'pngs': pngs, 'bad': bad, 'method': 'none', 'transform': None,
         'frame': -1, 'source_size': None}

  if not task.align:
    for k, path in enumerate(task.paths):
      try:
        if out['source_size'] is None:
          with Image.open(path) as im:
            w, h = im.size
          out['source_size'] = (h, w)
          out['transform'] = face_align.resize_transform(h, w, task.size, task.size).tolist()
        pngs[k] = encode_png(_load_resized_native(path, task.size))
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
      if reduce == 1 and full.get(k) is not None:  # decoded in full for the face search already
        frame = full.pop(k)
        got, hw = 1, tuple(frame.shape[:2])
      else:
        frame, got, hw = decode(path, reduce)
    except Exception as e:  # pylint: disable=broad-except
      bad.append([path, _one_line(e)])
      continue
    if hw != out['source_size']:
      bad.append([path, f'frame is {hw[1]}x{hw[0]}, the clip\'s other frames '
                        f'{out["source_size"][1]}x{out["source_size"][0]}'])
      continue
    aligned = face_align.warp(frame, info.transform, task.size, reduced_by=got)
    pngs[k] = encode_png(aligned)
  full.clear()
  return out
