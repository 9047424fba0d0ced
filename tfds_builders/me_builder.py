"""The base of the micro-expression TFDS builders (:class:`MEBuilder`) and the stored layout.

Each builder parses its dataset's annotation into :class:`tfds_builders.annotations.Clip` records
(validating every path and frame eagerly, in ``_split_generators``), collects every quirk it fixed
or skipped in a :class:`tfds_builders.annotations.Report`, and then only reads, resizes and stores
frames in ``_generate_examples``.

Stored examples share one feature layout (:func:`features`): the frames onset..offset (naturally
sorted, resized to ``FRAME_SIZE`` x ``FRAME_SIZE`` with PIL's antialiased bilinear filter, stored as
lossless PNG inside an ``array_record`` file), the dataset, the subject (the LOSO id), the clip
name, the emotion as written, the protocol's class label, onset/apex/offset frame numbers, the apex
position within the stored frames, the action units and the frame rate. Everything lives in one
``train`` split; LOSO folds are cut by subject at training time.

Why 224 px PNG: the model runs at 224 px, so storing more would only cost disk and preparation time,
and PNG is lossless (JPEG re-encoding would add block artefacts of the size of the motions we look
for). The datasets are small: training resamples every clip to T frames and holds the whole protocol
in memory (CASME II: 255 clips x 16 x 224 x 224 x 3 in float16 is about 1.2 GB).
"""

import dataclasses
import os
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np
import tensorflow_datasets as tfds

from mpt_jax import clip_frames
from mpt_jax import errors
from mpt_jax import face_align
from mpt_jax import prepared_version
from tfds_builders import annotations
from tfds_builders import discovery

FRAME_SIZE = 224


class CorruptImageError(errors.UserError):
  """An image file could not be decoded (the message names the file)."""


def load_frame(path: str, size: int = FRAME_SIZE) -> np.ndarray:
  """Reads an image as RGB uint8 (grayscale replicated), resized to ``size`` x ``size``."""
  try:
    return clip_frames.load_resized(path, size)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for broken files
    raise CorruptImageError(f'Cannot decode image {path}: {" ".join(str(e).split())}') from e


def features(classes: Sequence[str], size: int = FRAME_SIZE,
             alignment: bool = True) -> tfds.features.FeaturesDict:
  """The feature layout shared by every builder.

  With ``alignment`` each example also stores how its frames were made from the files:
  ``align_method`` ('landmarks' | 'haar' | 'centre' (no face found) | 'none' (resized as
  released)), ``align_transform`` (the (2, 3) affine map from source pixel coordinates, pixel
  centres at integers, to stored pixel coordinates, the same for every frame) and ``align_frame``
  (the index of the stored frame the transform was estimated on, -1 if none).
  """
  feats = {
      'frames': tfds.features.Sequence(tfds.features.Image(shape=(size, size, 3),
                                                           encoding_format='png')),
      'frame_numbers': tfds.features.Sequence(np.int64),
      'dataset': tfds.features.Text(),
      'subject': tfds.features.Text(),
      'clip': tfds.features.Text(),
      'emotion': tfds.features.Text(),
      'label': tfds.features.ClassLabel(names=list(classes)),
      'onset': np.int64,
      'apex': np.int64,
      'offset': np.int64,
      'apex_index': np.int32,
      'action_units': tfds.features.Text(),
      'fps': np.float32,
  }
  if alignment:
    feats.update({
        'align_method': tfds.features.Text(),
        'align_transform': tfds.features.Tensor(shape=(2, 3), dtype=np.float64),
        'align_frame': np.int32,
    })
  return tfds.features.FeaturesDict(feats)


def example(clip: annotations.Clip, prepared: Dict[str, Any]) -> Dict[str, Any]:
  """The example dict of a clip whose frames ``prepared`` (a :func:`clip_frames.process_clip`
  result) holds as stored PNG bytes, one per frame of ``clip.frames``."""
  return {
      'frames': list(prepared['pngs']),
      'frame_numbers': [int(n) for n in clip.frame_numbers],
      'dataset': clip.dataset,
      'subject': clip.subject,
      'clip': clip.clip,
      'emotion': clip.emotion,
      'label': clip.label,
      'onset': clip.onset,
      'apex': clip.apex,
      'offset': clip.offset,
      'apex_index': clip.apex_index,
      'action_units': clip.action_units,
      'fps': clip.fps,
      'align_method': prepared['method'],
      'align_transform': np.asarray(prepared['transform'], np.float64),
      'align_frame': int(prepared['frame']),
  }


class MEBuilder(tfds.core.GeneratorBasedBuilder):
  """Base class: subclasses implement :meth:`_scan`, returning validated clips and a report.

  Preparation options (passed by ``prepare.builder_for`` from ``config.data``):

  * ``align``: 'auto' | 'always' | 'never' (see ``tfds_builders/pipeline.py``), ``align_margin``:
    the face margin. Both are part of the dataset's identity: anything but the defaults ('auto',
    ``face_align.DEFAULT_MARGIN``) is stored under its own builder-config name
    (``<config>-align_<mode>[-margin_<m>]``), so changing them prepares a new dataset instead of
    silently reusing the old one.
  * ``skip_bad_frames``: an unreadable frame is an error naming the file (default) or is skipped and
    listed in the report (a clip left with fewer than 2 frames is skipped and listed).
  * ``prepare_workers``: processes decoding and encoding clips (0 = every core).
  """

  VERSION = tfds.core.Version(prepared_version.DATASET_VERSION)
  RELEASE_NOTES = {
      '1.0.0': 'Initial release.',
      '1.1.0': 'Apex after the offset kept when its frames are on disk; emotion aliases; every '
               'dropped row reported; CASME II configs name their sheet; preparation record.',
      '2.0.0': 'Faces aligned at preparation (one similarity per clip) where the release has no '
               'face crops; each example stores its alignment method and transform.',
      '2.1.0': 'Aligned frames: the antialiasing area resize reads only the part of the frame the '
               'aligned face comes from (a different resampling grid phase: stored pixels differ '
               'from 2.0.0 by 0.6 grey levels on average); PNGs encoded with faster settings '
               '(lossless, same pixels).',
      '2.2.0': 'Aligned frames of 600 px and more (SAMM, CAS(ME)^3): the dlib face box is searched '
               'on the frame reduced to half size (landmarks still at full size), so the eyes, '
               'and with them the transform, move by up to about 1 source pixel.',
  }
  FRAME_SIZE = FRAME_SIZE
  DATASET = ''
  EXPECTED_LAYOUT = ''
  ALIGNS_FACES = True  # False for generated data (nothing to align, no alignment features)

  def __init__(self, *, align: str = 'auto', align_margin: float = face_align.DEFAULT_MARGIN,
               skip_bad_frames: bool = False, prepare_workers: int = 0, **kwargs):
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    if align not in pipeline.ALIGN_MODES:
      raise discovery.DatasetLayoutError(f'config.data.align is {align!r}; expected one of '
                                         f'{list(pipeline.ALIGN_MODES)}')
    if not 0.0 <= float(align_margin) <= 2.0:
      raise discovery.DatasetLayoutError(f'config.data.align_margin is {align_margin}; '
                                         'expected 0..2')
    self._align = align
    self._align_margin = float(align_margin)
    self._skip_bad_frames = bool(skip_bad_frames)
    self._prepare_workers = int(prepare_workers)
    suffix = self.identity_suffix(align, float(align_margin))
    if suffix and self.ALIGNS_FACES:
      config = kwargs.get('config')
      if config is None:
        config = self.BUILDER_CONFIGS[0] if self.BUILDER_CONFIGS else None
      elif isinstance(config, str):
        config = next((c for c in self.BUILDER_CONFIGS if c.name == config), None)
        if config is None:
          raise discovery.DatasetLayoutError(f'{self.DATASET}: unknown builder config '
                                             f'{kwargs["config"]!r}')
      if config is not None:
        kwargs['config'] = dataclasses.replace(config, name=config.name + suffix)
    super().__init__(**kwargs)

  @staticmethod
  def identity_suffix(align: str, margin: float) -> str:
    """What ``align`` and ``margin`` add to the builder-config name ('' for the defaults)."""
    suffix = '' if align == 'auto' else f'-align_{align}'
    if align != 'never' and margin != face_align.DEFAULT_MARGIN:
      suffix += f'-margin_{margin:g}'
    return suffix

  @property
  def classes(self) -> List[str]:
    return list(self.builder_config.classes)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.__doc__,
        features=features(self.classes, self.FRAME_SIZE, self.ALIGNS_FACES),
        supervised_keys=None,
        metadata=tfds.core.MetadataDict(),
    )

  def _scan(self, manual_dir: str) -> Tuple[List[annotations.Clip], annotations.Report]:
    raise NotImplementedError

  def _split_generators(self, dl_manager):
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    clips, report = discovery.scan_release(dl_manager.manual_dir, self.DATASET,
                                           self.EXPECTED_LAYOUT, self._scan, 'clip',
                                           lambda c: c.clip)
    keys = [c.key for c in clips]
    dup = sorted({k for k in keys if keys.count(k) > 1})
    if dup:
      raise discovery.DatasetLayoutError(f'{self.DATASET}: duplicate clips {dup[:5]}')
    # Frames are decoded, checked, aligned and encoded on all cores while TFDS writes the clips
    # already done (_generate_examples). The report is stored when the last clip is in.
    tasks = [clip_frames.ClipTask(i, tuple(c.frames), self.FRAME_SIZE,
                                  pipeline.should_align(self._align, c.dataset, c.frames[0]),
                                  self._align_margin, c.apex_index)
             for i, c in enumerate(clips)]
    workers = pipeline.num_workers(self._prepare_workers, sum(len(c.frames) for c in clips),
                                   len(clips))
    return {'train': self._generate_examples(clips, tasks, workers, report)}

  def _generate_examples(self, clips, tasks, workers, report):
    """Yields each clip's example as soon as the pool has it; then stores the report."""
    from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
    stream = pipeline.stream_clips(tasks, workers)
    kept_clips, kept_results = [], []  # the results without their PNGs (the memory is TFDS's)
    sheet_frames = {}  # the contact sheet's onset frames, per subject
    try:
      for clip, res in zip(clips, stream):
        if res['bad'] and not self._skip_bad_frames:
          # Every clip is checked first, so that the error says how many frames are unreadable.
          self._refuse_bad_frames(clip, res, [r['bad'] for r in stream])  # not their PNGs
        clip, res = self._keep_readable(clip, res, report)
        if clip is None:
          continue
        kept_clips.append(clip)
        kept_results.append({k: v for k, v in res.items() if k != 'pngs'})
        pipeline.sheet_add(sheet_frames, clip.subject, next((p for p in res['pngs'] if p), None))
        yield clip.key, example(clip, res)
      if not kept_clips:
        raise discovery.DatasetLayoutError(f'{self.DATASET}: no clip has two readable frames')
      summary = report.summary(kept_clips, self.classes)
      sheet = os.path.join(self.data_dir, pipeline.CONTACT_SHEET)
      pipeline.contact_sheet(sheet, sheet_frames)
      summary['alignment'] = pipeline.alignment_summary(
          self._align, self._align_margin, [c.key for c in kept_clips], kept_results,
          pipeline.CONTACT_SHEET if os.path.exists(sheet) else '')
      self.info.metadata['preparation_report'] = summary
      self._last_report = summary  # pylint: disable=attribute-defined-outside-init
    finally:
      stream.close()

  @staticmethod
  def _refuse_bad_frames(clip: annotations.Clip, res: Dict[str, Any],
                         rest_bad: Sequence[List[Any]]):
    """The one-line error for the first clip with unreadable frames, counting every clip's
    (``rest_bad``: the ``bad`` list of each later clip)."""
    path, msg = res['bad'][0]
    frames = len(res['bad']) + sum(len(b) for b in rest_bad)
    clips_bad = 1 + sum(1 for b in rest_bad if b)
    raise CorruptImageError(
        f'Cannot decode image {path} ({clip.key}): {msg}; {frames} unreadable frame(s) in '
        f'{clips_bad} clip(s), nothing was written. Replace them, or pass '
        '--config.data.skip_bad_frames=True to skip them and list them in the report.')

  def _keep_readable(self, clip, res, report):
    """``(clip, result)`` without its unreadable frames (each reported), or ``(None, None)`` for a
    clip left with fewer than 2 frames (reported). ``clip`` is any item with ``key``, ``frames``
    and ``frame_numbers`` (a long video too); a result's ``frame`` (the face's reference frame), if
    any, is renumbered."""
    if not res['bad']:
      return clip, res
    for path, msg in res['bad']:
      report.add(clip.key, f'unreadable frame {path}: {msg}', 'skipped the frame')
    keep = [k for k, p in enumerate(res['pngs']) if p is not None]
    if len(keep) < 2:
      report.add(clip.key, f'only {len(keep)} readable frame(s)', 'skipped')
      return None, None
    if len(keep) < len(res['pngs']):
      clip = dataclasses.replace(clip, frames=[clip.frames[k] for k in keep],
                                 frame_numbers=[clip.frame_numbers[k] for k in keep])
      res = dict(res, pngs=[res['pngs'][k] for k in keep])
      if 'frame' in res:
        res['frame'] = keep.index(res['frame']) if res['frame'] in keep else res['frame']
    return clip, res
