"""Where a run's training scalars go: TensorBoard event files, with fallbacks.

:func:`create_writer` is clu's default writer without its console echo; without clu (or the
TensorFlow it writes through) the same scalars go to TensorBoard event files written by the
``tensorboard`` package alone, and without that package to ``metrics.jsonl``. Every writer has
``write_scalars(step, scalars)``, ``flush()`` and ``close()``.
"""

import json
import os
import time
from typing import Any, Mapping

from absl import logging


def create_writer(logdir: str, just_logging: bool = False):
  """clu's default writer without its console echo: TensorBoard event files in ``logdir`` only.

  ``clu.metric_writers.create_default_writer`` pairs the TensorBoard ``SummaryWriter`` with a
  ``LoggingWriter`` that repeats every scalar as an INFO log line; the training loop already logs
  its epochs (INFO, shown with ``--verbosity=0``), so the echo is left out. ``just_logging`` (the
  non-first processes of a multi-host run) keeps clu's logging-only writer.

  Without clu (or the TensorFlow it writes through), e.g. on a GPU image that has JAX but no
  TensorFlow, the same scalars go to TensorBoard event files written by the ``tensorboard`` package
  alone (:class:`_TensorBoardWriter`), and without that package to ``metrics.jsonl`` in ``logdir``
  (:class:`_JsonLinesWriter`); training itself needs neither.
  """
  try:
    from clu import metric_writers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return _fallback_writer(logdir, just_logging, e)
  if just_logging:
    return metric_writers.create_default_writer(None, just_logging=True)
  return metric_writers.AsyncMultiWriter([metric_writers.SummaryWriter(logdir)])


_FALLBACK_NOTED = set()  # fallback kinds already announced (one warning per process)


def _fallback_writer(logdir: str, just_logging: bool, why: ImportError):
  if just_logging:
    return _LoggingWriter()
  try:
    writer = _TensorBoardWriter(logdir)
    kind = 'TensorBoard event files through the tensorboard package'
  except ImportError:
    writer = _JsonLinesWriter(logdir)
    kind = f'{_JsonLinesWriter.FILENAME} (JSON lines) in each run and fold folder'
  if kind not in _FALLBACK_NOTED:
    _FALLBACK_NOTED.add(kind)
    logging.warning('clu is not importable (%s); training scalars go to %s', why, kind)
  return writer


class _LoggingWriter:
  """Scalars as INFO log lines only (the ``just_logging`` writer without clu)."""

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(v):.6g}' for k, v in scalars.items()))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class _TensorBoardWriter:
  """TensorBoard scalar events written by the ``tensorboard`` package (no TensorFlow needed)."""

  def __init__(self, logdir: str):
    # pylint: disable=g-import-not-at-top
    from tensorboard.compat.proto import event_pb2
    from tensorboard.compat.proto import summary_pb2
    from tensorboard.summary.writer import event_file_writer
    self._event_pb2, self._summary_pb2 = event_pb2, summary_pb2
    self._writer = event_file_writer.EventFileWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    values = [self._summary_pb2.Summary.Value(tag=k, simple_value=float(v))
              for k, v in scalars.items()]
    self._writer.add_event(self._event_pb2.Event(
        wall_time=time.time(), step=int(step), summary=self._summary_pb2.Summary(value=values)))

  def flush(self) -> None:
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()


class _JsonLinesWriter:
  """Scalars appended to ``<logdir>/metrics.jsonl``, one ``{"step": .., name: value}`` per call."""

  FILENAME = 'metrics.jsonl'

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    self.path = os.path.join(logdir, self.FILENAME)
    self._file = open(self.path, 'a', encoding='utf-8')  # pylint: disable=consider-using-with

  def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
    record = {'step': int(step), **{k: float(v) for k, v in scalars.items()}}
    self._file.write(json.dumps(record) + '\n')

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()
