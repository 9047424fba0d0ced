"""Dataset preparation without apache-beam: ``python main.py --mode=prepare --config=...``.

Builds the configured TFDS dataset into ``config.data.data_dir`` from ``config.data.manual_dir``
(array_record files, so reading needs no TensorFlow), shows TFDS's progress bar, and prints the
preparation report (every quirk fixed or skipped, counts per class and subject). Running it again
reuses the prepared data.
"""

import json
import os
from typing import Any, Dict

import tensorflow_datasets as tfds

from mpt_jax import console
from tfds_builders import BUILDERS
from tfds_builders import common


def builder_for(data_config) -> tfds.core.DatasetBuilder:
  """The TFDS builder named by ``config.data`` (name, builder config, data_dir)."""
  name = data_config.name
  if name not in BUILDERS:
    raise common.DatasetLayoutError(f'Unknown dataset {name!r}; known: {sorted(BUILDERS)}')
  cls = BUILDERS[name]
  kwargs = {'data_dir': os.path.expanduser(data_config.data_dir), 'file_format': 'array_record'}
  if data_config.builder_config:
    names = [c.name for c in cls.BUILDER_CONFIGS]
    if data_config.builder_config not in names:
      raise common.DatasetLayoutError(f'{name}: unknown builder config '
                                      f'{data_config.builder_config!r}; known: {names}')
    kwargs['config'] = data_config.builder_config
  return cls(**kwargs)


def report_of(builder: tfds.core.DatasetBuilder) -> Dict[str, Any]:
  """The stored preparation report of a prepared dataset."""
  meta = builder.info.metadata
  return dict(meta.get('preparation_report', {})) if meta is not None else {}


def format_report(report: Dict[str, Any]) -> str:
  lines = [f"{report.get('dataset')}: {report.get('num_clips')} clips, "
           f"{report.get('num_subjects')} subjects",
           'per class: ' + ', '.join(f'{k} {v}' for k, v in report.get('per_class', {}).items())]
  if report.get('source'):
    lines.append('source: ' + json.dumps(report['source']))
  per_subject = report.get('per_subject', {})
  if per_subject:
    lines.append('per subject: ' + ', '.join(f'{s}:{sum(c.values())}'
                                             for s, c in per_subject.items()))
  issues = report.get('issues', [])
  lines.append(f'{len(issues)} annotation/layout issue(s) handled:')
  lines.extend(f"  - {i['where']}: {i['problem']} -> {i['action']}" for i in issues)
  return '\n'.join(lines)


def prepare(data_config) -> Dict[str, Any]:
  """Builds (or reuses) the dataset and returns its preparation report."""
  builder = builder_for(data_config)
  manual = data_config.manual_dir
  if builder.name != 'synthetic_me' and not builder.is_prepared():
    common.check_manual_dir(manual, builder.name, builder.EXPECTED_LAYOUT)
  console.announce_preparation(builder, manual)  # our one line instead of TFDS's banner
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual) if manual else None)
  builder.download_and_prepare(download_config=download_config)
  return report_of(builder)
