"""Reading a prepared long-video dataset one video at a time (bounded memory).

``iter_videos(config)`` yields :class:`LongVideo` records with the frames decoded to (n, S, S)
uint8 grayscale and the ground truth as :class:`mpt_jax.spotting.metrics.Interval` lists.
"""

import dataclasses
import os
from typing import Iterator, List, Sequence, Tuple

import cv2
import numpy as np

from mpt_jax import datasets
from mpt_jax import input_pipeline
from mpt_jax.spotting import metrics


@dataclasses.dataclass
class LongVideo:
  dataset: str
  subject: str
  video: str
  fps: float  # the source's frame rate
  stride: int  # every stride-th source frame is stored
  frame_numbers: np.ndarray  # (n,) source frame numbers of the stored frames
  frames: np.ndarray  # (n, S, S) uint8, face-aligned grayscale
  intervals: List[metrics.Interval]  # the annotated expressions (closed, source frame numbers)
  negatives: List[Tuple[int, int]]  # annotated non-expressions (eye blinks), if any

  @property
  def key(self) -> Tuple[str, str]:
    return (self.subject, self.video)


def _text(v) -> str:
  return v.decode('utf-8') if isinstance(v, bytes) else str(v)


def decode_gray(data: bytes) -> np.ndarray:
  img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_GRAYSCALE)
  if img is None:
    raise input_pipeline.DataError('A stored frame of the prepared long-video dataset cannot be '
                                   'decoded; prepare it again (--config.data.rebuild=True)')
  return img


def open_source(config):
  """``(builder, data source)`` of the configured, prepared dataset (frames left encoded)."""
  builder = datasets.builder_for(config.data)
  if not builder.is_prepared():
    raise input_pipeline.DataError(
        f'Dataset {builder.name} is not prepared in {os.path.expanduser(config.data.data_dir)}. '
        'Prepare it first: python main.py --mode=prepare --config=<this config> '
        '--config.data.manual_dir=/path/to/the/unpacked/dataset')
  decoders = {'frames': input_pipeline._raw_frames_decoder()}  # pylint: disable=protected-access
  return builder, builder.as_data_source(split='train', decoders=decoders)


def iter_videos(config, subjects: Sequence[str] = ()) -> Iterator[LongVideo]:
  """Every video of the prepared dataset (only ``subjects``' when given), decoded one at a time."""
  _, source = open_source(config)
  wanted = set(subjects)
  seen = set()
  for i in range(len(source)):
    ex = source[i]
    subject = _text(ex['subject'])
    seen.add(subject)
    if wanted and subject not in wanted:
      continue
    iv = ex['intervals']
    intervals = [metrics.Interval(int(on), int(off), _text(t), apex=int(ap), emotion=_text(em))
                 for on, ap, off, t, em in zip(iv['onset'], iv['apex'], iv['offset'], iv['type'],
                                               iv['emotion'])]
    neg = ex['negatives']
    yield LongVideo(_text(ex['dataset']), subject, _text(ex['video']), float(ex['fps']),
                    int(ex['stride']), np.asarray(ex['frame_numbers'], np.int64),
                    np.stack([decode_gray(f) for f in ex['frames']]), intervals,
                    [(int(a), int(b)) for a, b in zip(neg['onset'], neg['offset'])])
  missing = sorted(wanted - seen)
  if missing:
    raise input_pipeline.DataError(f'config.data.subjects names subjects not in the dataset: '
                                   f'{missing}')
