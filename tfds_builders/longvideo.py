"""Shared machinery of the long-video (spotting) builders: one example per recorded video.

Each builder parses its annotation into :class:`Video` records (every path checked and every
quirk fixed or skipped listed in the :class:`tfds_builders.annotations.Report`), then the frames
are decoded, aligned with one transform per video and stored by a process pool
(:func:`mpt_jax.spotting.video_frames.process_video`), streamed to TFDS as each video is done.

Stored example (:func:`features`):

* ``frames``: the video at its working rate (about 30 fps: every ``stride``-th frame file of a
  200 fps recording), face-aligned, ``FRAME_SIZE`` px grayscale PNG;
* ``frame_numbers``: each stored frame's number in the source (the sheets' numbering, 1-based);
* ``dataset``, ``subject`` (the LOSO id), ``video``, ``fps`` (the source's), ``stride``;
* ``intervals``: every annotated expression, in source frame numbers: ``onset``, ``apex``,
  ``offset`` (closed), ``type`` (``mae`` | ``me``), ``emotion`` (coarse: negative, positive,
  surprise, others, or '' where unknown), ``emotion_detail`` (as the sheet writes it),
  ``action_units``, ``name`` (the sheet's id of the expression);
* ``negatives``: annotated intervals that are not expressions (CAS(ME)^3's eye blinks), or empty;
* ``align_method``, ``align_transform``, ``align_frame`` as the recognition datasets store them.
"""

import dataclasses
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from mpt_jax import frame_files
from mpt_jax.spotting import params
from tfds_builders import annotations
from tfds_builders import discovery
from tfds_builders import me_builder
from tfds_builders import sheets

FRAME_SIZE = 128  # stored face side (the spotter's working size)


@dataclasses.dataclass
class Expression:
  onset: int
  apex: int
  offset: int
  type: str  # 'mae' | 'me'
  emotion: str = ''
  emotion_detail: str = ''
  action_units: str = ''
  name: str = ''


@dataclasses.dataclass
class Video:
  """One recorded video, validated and ready to store."""
  dataset: str
  subject: str
  video: str
  fps: float
  frames: List[str]  # the files stored (every stride-th)
  frame_numbers: List[int]
  stride: int
  expressions: List[Expression] = dataclasses.field(default_factory=list)
  negatives: List[Tuple[int, int]] = dataclasses.field(default_factory=list)

  @property
  def key(self) -> str:
    return f'{self.dataset}/{self.subject}/{self.video}'


def frame_number(report: annotations.Report, where: str, value: Any, what: str,
                 counts: Optional[Dict[str, int]] = None) -> Optional[int]:
  """A sheet's frame number as an int: fractional values rounded half up (reported, counted in
  ``counts['fractional']`` and listed for the first few), text that is no number -> None."""
  if isinstance(value, str):
    value = value.strip()
  try:
    x = float(value)
  except (TypeError, ValueError):
    return None
  if not np.isfinite(x):
    return None
  n = int(np.floor(x + 0.5))
  if x != n:
    if counts is not None:
      counts['fractional'] = counts.get('fractional', 0) + 1
    report.add(where, f'fractional {what} frame {x:g}', f'rounded half up to {n}')
  return n


def add_video_frames(report: annotations.Report, where: str, folder: str, fps: float
                     ) -> Optional[Tuple[List[int], List[str], int]]:
  """``(frame numbers, paths, stride)`` of a video folder's frames at the working rate, or None
  (reported) when it has no frame. Frames are sorted by the number in their names (``img999`` <
  ``img1000``); gaps in the numbering are reported."""
  frames = frame_files.list_frames(folder)
  if not frames:
    report.add(where, f'folder {folder} has no image files', 'skipped')
    return None
  frames = annotations.first_of_each_number(report, where, frames)
  nums = [n for n, _ in frames]
  if nums[0] > 1:
    report.add(where, f'the first frame is {nums[0]} (frames 1..{nums[0] - 1} are missing)',
               'kept (frames are indexed by their file names)')
  missing = (nums[-1] - nums[0] + 1) - len(nums)
  if missing:
    gaps = sorted(set(range(nums[0], nums[-1] + 1)) - set(nums))
    shown = ', '.join(map(str, gaps[:8])) + (' ...' if len(gaps) > 8 else '')
    report.add(where, f'{missing} missing frame(s) in {nums[0]}..{nums[-1]}: {shown}',
               'kept the frames present (frames are indexed by their file names)')
  stride = params.working_stride(fps)
  kept = frames[::stride]
  return [n for n, _ in kept], [p for _, p in kept], stride


def add_expression(report: annotations.Report, where: str, video: 'Video', e: Expression) -> None:
  """Adds ``e`` to ``video`` if it lies within the video's frames (clipped to them if it reaches
  past an end); an interval wholly outside is skipped. Both are reported."""
  first, last = video.frame_numbers[0], video.frame_numbers[-1] + video.stride - 1
  if e.offset < first or e.onset > last:
    report.add(where, f'interval {e.onset}..{e.offset} outside the video\'s frames {first}..{last}',
               'skipped')
    return
  if e.onset < first or e.offset > last:
    lo, hi = max(e.onset, first), min(e.offset, last)
    report.add(where, f'interval {e.onset}..{e.offset} reaches past the video\'s frames '
               f'{first}..{last}', f'clipped to {lo}..{hi}')
    e = dataclasses.replace(e, onset=lo, offset=hi, apex=min(max(e.apex, lo), hi))
  video.expressions.append(e)


def finish_scan(videos: Dict[Any, 'Video'], report: annotations.Report
                ) -> Tuple[List['Video'], annotations.Report]:
  """A scan's result: every video (those without an expression reported, and kept)."""
  for v in videos.values():
    if not v.expressions:
      report.add(v.key, 'no expression annotated', 'kept (a video without expressions)')
  return list(videos.values()), report


def summary(report: annotations.Report, videos: Sequence[Video]) -> Dict[str, Any]:
  per_type = {'mae': 0, 'me': 0}
  per_emotion: Dict[str, int] = {}
  per_subject: Dict[str, Dict[str, int]] = {}
  for v in videos:
    s = per_subject.setdefault(v.subject, {'mae': 0, 'me': 0})
    for e in v.expressions:
      per_type[e.type] += 1
      s[e.type] += 1
      if e.type == 'me':
        per_emotion[e.emotion or '(none)'] = per_emotion.get(e.emotion or '(none)', 0) + 1
  return {
      'dataset': report.dataset,
      'source': report.source,
      'num_videos': len(videos),
      'num_subjects': len(per_subject),
      'num_frames_stored': sum(len(v.frames) for v in videos),
      'per_type': per_type,
      'me_per_emotion': dict(sorted(per_emotion.items())),
      'negatives': sum(len(v.negatives) for v in videos),
      'per_subject': {s: per_subject[s]
                      for s in sorted(per_subject, key=frame_files.natural_key)},
      'issues': report.issues,
  }


def format_summary(report: Dict[str, Any]) -> List[str]:
  """The lines of ``--mode=prepare``'s report that differ from the recognition datasets'."""
  t = report.get('per_type', {})
  lines = [f"{report.get('dataset')}: {report.get('num_videos')} videos, "
           f"{report.get('num_subjects')} subjects, {report.get('num_frames_stored')} frames "
           f"stored; {t.get('mae', 0)} MaE + {t.get('me', 0)} ME intervals",
           'ME per emotion: ' + ', '.join(f'{k} {v}' for k, v in
                                          report.get('me_per_emotion', {}).items())]
  if report.get('negatives'):
    lines.append(f"{report['negatives']} annotated non-expression intervals (eye blinks) kept as "
                 'negatives')
  return lines


def features(size: int = FRAME_SIZE) -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'frames': tfds.features.Sequence(tfds.features.Image(shape=(size, size, 1),
                                                           encoding_format='png')),
      'frame_numbers': tfds.features.Sequence(np.int64),
      'dataset': tfds.features.Text(),
      'subject': tfds.features.Text(),
      'video': tfds.features.Text(),
      'fps': np.float32,
      'stride': np.int32,
      'intervals': tfds.features.Sequence({
          'onset': np.int64, 'apex': np.int64, 'offset': np.int64,
          'type': tfds.features.Text(), 'emotion': tfds.features.Text(),
          'emotion_detail': tfds.features.Text(), 'action_units': tfds.features.Text(),
          'name': tfds.features.Text()}),
      'negatives': tfds.features.Sequence({'onset': np.int64, 'offset': np.int64}),
      'align_method': tfds.features.Text(),
      'align_transform': tfds.features.Tensor(shape=(2, 3), dtype=np.float64),
      'align_frame': np.int32,
  })


def example(video: Video, prepared: Dict[str, Any]) -> Dict[str, Any]:
  exprs = sorted(video.expressions, key=lambda e: (e.onset, e.offset))
  return {
      'frames': list(prepared['pngs']),
      'frame_numbers': [int(n) for n in video.frame_numbers],
      'dataset': video.dataset,
      'subject': video.subject,
      'video': video.video,
      'fps': video.fps,
      'stride': video.stride,
      'intervals': {k: [getattr(e, k) for e in exprs] for k in
                    ('onset', 'apex', 'offset', 'type', 'emotion', 'emotion_detail',
                     'action_units', 'name')},
      'negatives': {'onset': [a for a, _ in video.negatives],
                    'offset': [b for _, b in video.negatives]},
      'align_method': prepared['method'],
      'align_transform': np.asarray(prepared['transform'], np.float64),
      'align_frame': int(prepared['frame']),
  }


class LongVideoBuilder(me_builder.MEBuilder):
  """Base class: subclasses implement :meth:`_scan_videos` (validated videos and a report) and
  :meth:`_align_frames` (whether this release needs face alignment under ``align='auto'``)."""

  FRAME_SIZE = FRAME_SIZE
  RELEASE_NOTES = {'2.2.0': 'First release of the long-video builders.'}

  @property
  def classes(self) -> List[str]:
    return []

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description=self.__doc__,
                                 features=features(self.FRAME_SIZE), supervised_keys=None,
                                 metadata=tfds.core.MetadataDict())

  def _scan_videos(self, manual_dir: str) -> Tuple[List[Video], annotations.Report]:
    raise NotImplementedError

  def _released_cropped(self) -> bool:
    return False

  def _split_generators(self, dl_manager):
    from mpt_jax.spotting import video_frames  # pylint: disable=g-import-not-at-top
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    videos, report = discovery.scan_release(dl_manager.manual_dir, self.DATASET,
                                            self.EXPECTED_LAYOUT, self._scan_videos, 'video',
                                            lambda v: v.video)
    align = self._align == 'always' or (self._align == 'auto' and not self._released_cropped())
    tasks = [video_frames.VideoTask(i, tuple(v.frames), self.FRAME_SIZE, align,
                                    self._align_margin) for i, v in enumerate(videos)]
    workers = pipeline.num_workers(self._prepare_workers, sum(len(v.frames) for v in videos),
                                   len(videos))
    return {'train': self._generate_videos(videos, tasks, workers, report)}

  def _generate_videos(self, videos, tasks, workers, report):
    from mpt_jax.spotting import video_frames  # pylint: disable=g-import-not-at-top
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    stream = pipeline.stream_clips(tasks, workers, fn=video_frames.process_video)
    kept, results = [], []
    try:
      for video, res in zip(videos, stream):
        if res['bad'] and not self._skip_bad_frames:
          self._refuse_bad_frames(video, res, [r['bad'] for r in stream])
        video, res = self._keep_readable(video, res, report)
        if video is None:
          continue
        kept.append(video)
        results.append({k: v for k, v in res.items() if k != 'pngs'})
        yield video.key, example(video, res)
      if not kept:
        raise discovery.DatasetLayoutError(f'{self.DATASET}: no video has two readable frames')
      out = summary(report, kept)
      out['alignment'] = pipeline.alignment_summary(self._align, self._align_margin,
                                                    [v.key for v in kept], results, '')
      self.info.metadata['preparation_report'] = out
      self._last_report = out  # pylint: disable=attribute-defined-outside-init
    finally:
      stream.close()


def read_all_rows(path: str, sheet: Optional[str]) -> Tuple[str, List[Tuple[int, List[Any]]]]:
  """``(worksheet, [(excel row number, cells)])`` of every non-empty row (no header expected)."""
  name, table = sheets.read_table(path, sheet)
  return name, [(i + 1, list(r)) for i, r in enumerate(table)
                if any(sheets.cell_text(c) for c in r)]

