"""Dataset preparation without apache-beam: ``python main.py --mode=prepare --config=...``.

Builds the configured TFDS dataset into ``config.data.data_dir`` from ``config.data.manual_dir``
(array_record files, so reading needs no TensorFlow), shows TFDS's progress bar, and prints the
preparation report (every quirk fixed or skipped, counts per class and subject).

Every prepared dataset stores its *preparation record* (:func:`prepared_data_record`: the dataset,
builder config, version, source folder, the sheet it was read from with its SHA-256, and the
options) in its ``metadata.json``. Running prepare again:

* without ``manual_dir``: reuses the prepared data and says so, naming the folder and sheet it was
  made from;
* with the recorded ``manual_dir`` and unchanged sources: reuses it (same message);
* with another ``manual_dir``, or a changed sheet: refuses, naming the record keys that differ,
  unless ``--config.data.rebuild=True``, which prepares it again (the old copy is restored if the
  new preparation fails).
"""

import dataclasses
import json
import os
import shutil
from typing import Any, Dict, List, Optional

import tensorflow_datasets as tfds

from mpt_jax import console
from mpt_jax import errors
from tfds_builders import BUILDERS
from tfds_builders import discovery
from tfds_builders import me_builder

RECORD_KEY = 'preparation_record'  # metadata.json key of the record
STATUS_KEY = 'preparation_status'  # added to the returned report: what this run did


class PreparedDataError(errors.UserError):
  """The prepared data in data_dir was made from other sources than the ones given."""


def _base_config(cls, name: str):
  if not name:
    return cls.BUILDER_CONFIGS[0] if cls.BUILDER_CONFIGS else None
  for c in cls.BUILDER_CONFIGS:
    if c.name == name:
      return c
  raise discovery.DatasetLayoutError(f'{cls.name}: unknown builder config {name!r}; known: '
                                     f'{[c.name for c in cls.BUILDER_CONFIGS]}')


def builder_for(data_config) -> tfds.core.DatasetBuilder:
  """The TFDS builder named by ``config.data`` (name, builder config, options, data_dir).

  ``config.data.drop_slash_apex`` (where the config has it) selects the builder config's variant
  that drops the rows whose apex is ``'/'``; it is prepared under its own name
  (``<builder config>_drop_slash_apex``), so both variants can live in one data_dir.
  """
  name = data_config.name
  if name not in BUILDERS:
    raise discovery.DatasetLayoutError(f'Unknown dataset {name!r}; known: {sorted(BUILDERS)}')
  cls = BUILDERS[name]
  kwargs = {'data_dir': os.path.expanduser(data_config.data_dir), 'file_format': 'array_record'}
  base = _base_config(cls, data_config.builder_config)
  if data_config.get('drop_slash_apex', False):
    if base is None or not hasattr(base, 'drop_slash_apex'):
      raise discovery.DatasetLayoutError(f'{name}: config.data.drop_slash_apex does not apply: '
                                         'this dataset has no apex annotation to drop rows by')
    kwargs['config'] = dataclasses.replace(
        base, name=f'{base.name}_drop_slash_apex', drop_slash_apex=True,
        description=f"{base.description}; rows whose apex is '/' dropped")
  elif data_config.builder_config:
    kwargs['config'] = data_config.builder_config
  # Preparation options; align and margin select the dataset.
  if issubclass(cls, me_builder.MEBuilder):
    kwargs.update(align=data_config.get('align', 'auto'),
                  align_margin=float(data_config.get('align_margin', 0.2)),
                  skip_bad_frames=bool(data_config.get('skip_bad_frames', False)),
                  prepare_workers=int(data_config.get('prepare_workers', 0)))
  return cls(**kwargs)


def report_of(builder: tfds.core.DatasetBuilder) -> Dict[str, Any]:
  """The stored preparation report of a prepared dataset."""
  meta = builder.info.metadata
  return dict(meta.get('preparation_report', {})) if meta is not None else {}


def stored_record(builder: tfds.core.DatasetBuilder) -> Dict[str, Any]:
  """The preparation record stored with a prepared dataset ({} when it has none)."""
  meta = builder.info.metadata
  return dict(meta.get(RECORD_KEY, {})) if meta is not None else {}


def prepared_data_record(builder: tfds.core.DatasetBuilder,
                         manual_dir: Optional[str]) -> Dict[str, Any]:
  """Everything that determines the prepared data, as a flat JSON-able dict.

  Stored with the prepared dataset (``metadata.json``, key ``preparation_record``) and compared
  on every later prepare; a differing key is named. Keys: ``dataset``, ``builder_config``,
  ``version``, ``options`` (e.g. ``drop_slash_apex``), and for the datasets read from a
  ``manual_dir``: ``manual_dir`` (its real path) and each source the builder reads
  (``builder.source_files``: e.g. ``sheet`` as a path relative to manual_dir plus ``sheet_sha256``,
  ``frames`` as the frame root). Extend the record here, in this one function.
  """
  cfg = builder.builder_config
  record: Dict[str, Any] = {
      'dataset': builder.name,
      'builder_config': cfg.name if cfg is not None else '',
      'version': str(builder.version),
      'options': {'drop_slash_apex': bool(getattr(cfg, 'drop_slash_apex', False)),
                  'align': getattr(builder, '_align', None),
                  'align_margin': getattr(builder, '_align_margin', None)},
  }
  if not hasattr(builder, 'source_files'):
    return record  # generated data (synthetic_me): nothing is read from disk
  manual = discovery.check_manual_dir(manual_dir, builder.name, builder.EXPECTED_LAYOUT)
  real = os.path.realpath(manual)
  record['manual_dir'] = real
  for key, value in sorted(builder.source_files(manual).items()):
    path = str(value)
    if os.path.isabs(path) and os.path.exists(path):
      record[key] = os.path.relpath(os.path.realpath(path), real)
      if os.path.isfile(path):
        record[f'{key}_sha256'] = discovery.file_sha256(path)
    else:
      record[key] = value
  return record


def differing_keys(stored: Dict[str, Any], current: Dict[str, Any]) -> List[str]:
  """The record keys whose values differ (present in one record only counts as differing)."""
  return sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))


def _describe(record: Dict[str, Any]) -> str:
  """``'/data/CASME2 (sheet CASME2-coding-20190701.xlsx sha256:3f2a..., frames Cropped)'``."""
  if not record:
    return 'an unknown source (no preparation record: made by an older mpt_jax)'
  if 'manual_dir' not in record:
    return f"generated data ({record['dataset']}/{record['builder_config']})"
  sheets = [f"{k} {record[k]} sha256:{str(record.get(k + '_sha256', ''))[:12]}"
            for k in sorted(record) if k.endswith('sheet') or k == 'membership']
  frames = [f'{k} {record[k]}' for k in sorted(record) if k.endswith('frames')]
  details = f" ({', '.join(sheets + frames)})" if sheets or frames else ''
  return f"{record['manual_dir']}{details}"


def _mismatch_message(builder, stored, current, keys) -> str:
  shown = []
  for k in keys:
    if k.endswith('_sha256') and k[:-7] not in keys:
      shown.append(f'{k}: {current.get(k[:-7])} is not the recorded file (other content)')
    else:
      shown.append(f'{k}: recorded {stored.get(k)!r}, now {current.get(k)!r}')
  return (f'{builder.name}/{current["builder_config"]} in {builder.data_dir} was prepared from '
          f'{_describe(stored)}; the sources given differ in {"; ".join(shown)}. Reuse it by '
          'leaving out --config.data.manual_dir, prepare it again with --config.data.rebuild=True, '
          'or use another --config.data.data_dir')


def _build(builder, record: Dict[str, Any], manual_dir: Optional[str]) -> None:
  builder.info.metadata[RECORD_KEY] = record
  manual = record.get('manual_dir')
  download_config = tfds.download.DownloadConfig(manual_dir=manual or (
      os.path.expanduser(manual_dir) if manual_dir else None))
  builder.download_and_prepare(download_config=download_config)


def _rebuild(data_config, builder, record: Dict[str, Any]) -> tfds.core.DatasetBuilder:
  """Prepares again over existing data; the old copy comes back if the new preparation fails."""
  old = os.fspath(builder.data_dir)
  backup = os.path.join(os.path.dirname(old), f'.{os.path.basename(old)}.previous')
  if os.path.exists(backup):
    shutil.rmtree(backup)  # left by a rebuild that was killed after it finished
  os.rename(old, backup)
  try:
    fresh = builder_for(data_config)
    _build(fresh, record, data_config.get('manual_dir', ''))
  except BaseException:
    if os.path.exists(old):
      shutil.rmtree(old)
    os.rename(backup, old)
    raise
  shutil.rmtree(backup)
  return fresh


def _with_status(builder, status: str, record: Dict[str, Any]) -> Dict[str, Any]:
  report = report_of(builder)
  report[STATUS_KEY] = {'status': status, 'data_dir': os.fspath(builder.data_dir),
                        'record': record}
  report['data_dir'] = os.fspath(builder.data_dir)  # where the contact sheet is
  return report


def prepare(data_config) -> Dict[str, Any]:
  """Builds, reuses or (with ``rebuild``) rebuilds the dataset; returns its preparation report.

  The report carries ``preparation_status``: ``status`` (``prepared`` | ``reused`` |
  ``rebuilt``), ``data_dir`` and the preparation ``record``.

  Raises:
    PreparedDataError: the data_dir holds this dataset prepared from other sources (the message
      names the differing record keys) and ``config.data.rebuild`` is not set.
    discovery.DatasetLayoutError: the manual_dir is missing, not a folder, empty or in another
      layout.
  """
  builder = builder_for(data_config)
  manual = data_config.get('manual_dir', '')
  rebuild = bool(data_config.get('rebuild', False))
  generated = not hasattr(builder, 'source_files')
  if not builder.is_prepared():
    record = prepared_data_record(builder, manual)
    console.announce_preparation(builder, manual)  # our one line instead of TFDS's banner
    _build(builder, record, manual)
    return _with_status(builder, 'prepared', record)
  stored = stored_record(builder)
  if not manual and not generated:
    if rebuild:
      raise PreparedDataError(f'{builder.name}: --config.data.rebuild=True needs '
                              '--config.data.manual_dir, the folder to prepare it from')
    return _with_status(builder, 'reused', stored)
  try:
    current = prepared_data_record(builder, manual)
  except discovery.DatasetLayoutError as e:
    raise discovery.DatasetLayoutError(
        f'{e} The data_dir already holds {builder.name} prepared from {_describe(stored)}; leave '
        'out --config.data.manual_dir to reuse it') from e
  keys = differing_keys(stored, current)
  if not keys and not rebuild:
    return _with_status(builder, 'reused', stored)
  if keys and not rebuild:
    raise PreparedDataError(_mismatch_message(builder, stored, current, keys))
  console.announce_preparation(builder, manual)
  return _with_status(_rebuild(data_config, builder, current), 'rebuilt', current)


def format_report(report: Dict[str, Any]) -> str:
  """The report as printed by ``--mode=prepare``: what was done, counts, every issue handled."""
  lines = []
  status = report.get(STATUS_KEY)
  if status:
    made = _describe(status.get('record', {}))
    if status['status'] == 'reused':
      lines.append(f"Reusing the prepared data in {status['data_dir']} (nothing was read or "
                   f"written), made from {made}. To prepare it again: --config.data.rebuild=True "
                   '--config.data.manual_dir=...')
    else:
      lines.append(f"{status['status'].capitalize()} {status['data_dir']} from {made}.")
  if 'num_videos' in report:  # a long-video (spotting) dataset
    from tfds_builders import longvideo  # pylint: disable=g-import-not-at-top
    lines += longvideo.format_summary(report)
  else:
    lines += [f"{report.get('dataset')}: {report.get('num_clips')} clips, "
              f"{report.get('num_subjects')} subjects",
              'per class: ' + ', '.join(f'{k} {v}' for k, v in report.get('per_class', {}).items())]
  if report.get('source'):
    lines.append('source: ' + json.dumps(report['source']))
  per_subject = report.get('per_subject', {})
  if per_subject:
    lines.append('per subject: ' + ', '.join(f'{s}:{sum(c.values())}'
                                             for s, c in per_subject.items()))
  from tfds_builders import pipeline  # pylint: disable=g-import-not-at-top
  if report.get('alignment'):
    lines.append(pipeline.format_alignment(report, report.get('data_dir', '')))
  issues = report.get('issues', [])
  lines.append(f'{len(issues)} annotation/layout issue(s) handled' + (':' if issues else ''))
  lines.extend(f"  - {i['where']}: {i['problem']} -> {i['action']}" for i in issues)
  return '\n'.join(lines)
