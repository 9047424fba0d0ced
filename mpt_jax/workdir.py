"""The records of a run directory, shared by training (``loso``), ``evaluate`` and ``predict``.

A workdir holds::

  config.json             the run's config (a different config is refused, naming the keys)
  run_info.json           fingerprints of the protocol and of the initial parameters, devices...
  lock                    while a run writes: the process id of that run (see :class:`Lock`)
  seed_<s>/fold_<subject>/checkpoints/   Orbax checkpoints (trainable parameters + optimizer)
  seed_<s>/fold_<subject>/result.json    the fold's predictions (written once the fold is done)

Everything here only reads until :class:`Lock` is taken: a refused run changes nothing in the
workdir. Every user-caused problem raises a subclass of :class:`mpt_jax.errors.UserError` with a
one-line message.
"""

import errno
import fcntl
import json
import os
import socket
from typing import Any, Dict, List, Optional, Sequence

import ml_collections
from absl import logging

from mpt_jax import errors

# Keys that may change between runs in one workdir without changing the results (moved files,
# logging, speed). Everything else must equal the config the workdir was created with.
# (train.log_every_steps no longer exists; workdirs made before still record it.)
RESUMABLE_KEYS = ('data.data_dir', 'data.manual_dir', 'data.rebuild', 'model.pretrained_path',
                  'train.log_every_steps', 'train.folds_per_step', 'train.deterministic',
                  'train.motion_cache', 'train.checkpoint_min_interval_s',
                  'train.epoch_loop')
# Config keys added after runs were recorded, with the value the code had before the key existed:
# a saved config without the key is read as holding that value.
ADDED_KEYS = {'model.tokenizer_grid': 1}
LOCK_NAME = 'lock'


class RunError(errors.UserError):
  """A run that cannot start or continue (the message says why)."""


class WorkdirError(RunError):
  """A workdir that cannot be used: a file, not writable, not a run, another run's."""


class LockedError(WorkdirError):
  """The workdir is in use by another running process."""


def resolve(path: str) -> str:
  """Absolute path with ``~`` expanded (every path flag goes through this)."""
  return os.path.abspath(os.path.expanduser(path))


# ----------------------------------------------------------------------------------- JSON I/O
def write_json(path: str, obj: Any) -> None:
  """Atomic JSON write (temporary file + rename), so a crash never leaves a half file.

  Raises:
    WorkdirError: when the folder cannot be written (read-only, full disk...).
  """
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      json.dump(obj, f, indent=1, sort_keys=False)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    raise WorkdirError(f'Cannot write {path}: {e.strerror or e}') from e


def read_json(path: str) -> Any:
  """Reads a JSON record; a damaged one is a :class:`RunError` naming the file."""
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise RunError(f'{path} is damaged (not valid JSON: {e}); restore it or use a new '
                   '--workdir') from e
  except OSError as e:
    raise RunError(f'Cannot read {path}: {e.strerror or e}') from e


def makedirs(path: str) -> None:
  """``os.makedirs`` with a one-line error (read-only file system, a file in the way)."""
  try:
    os.makedirs(path, exist_ok=True)
  except OSError as e:
    raise WorkdirError(f'Cannot create the folder {path}: {e.strerror or e}') from e


# ------------------------------------------------------------------------------------- layout
def fold_dir(workdir: str, seed: int, subject: str) -> str:
  return os.path.join(workdir, f'seed_{seed}', f'fold_{subject}')


def checkpoint_dir(workdir: str, seed: int, subject: str) -> str:
  return os.path.join(fold_dir(workdir, seed, subject), 'checkpoints')


def result_path(workdir: str, seed: int, subject: str) -> str:
  return os.path.join(fold_dir(workdir, seed, subject), 'result.json')


def finished_subjects(workdir: str, seed: int, subjects: List[str]) -> List[str]:
  """The subjects whose fold finished training (``result.json`` written)."""
  return [s for s in subjects if os.path.isfile(result_path(workdir, seed, s))]


def restore_fold(workdir: str, seed: int, subject: str, template: Any, strategy: str,
                 final_epoch: Optional[int] = None) -> Any:
  """A fold's trained state, read (never written) from its checkpoint into ``template``.

  Args:
    workdir, seed, subject: which fold.
    template: a ``train.TrainState`` of the run's structure (its values are replaced).
    strategy: the run's training strategy (which leaves the checkpoint holds).
    final_epoch: when given, the checkpoint must be of that epoch (a finished fold's last one).

  Raises:
    train.CheckpointDamagedError: the checkpoint is missing, unreadable or of another epoch.
  """
  # Imported here: this module is read before main.py sets JAX up, and train imports JAX.
  from mpt_jax import train  # pylint: disable=g-import-not-at-top
  ckpt = train.FoldCheckpointer(checkpoint_dir(workdir, seed, subject), read_only=True)
  try:
    if final_epoch is not None:
      epoch = ckpt.latest_epoch()
      if epoch != final_epoch:
        raise train.CheckpointDamagedError(f'its last checkpoint is epoch {epoch}, not '
                                           f'{final_epoch}')
    _, state = ckpt.restore(template, strategy)
  finally:
    ckpt.close()
  return state


def check_usable(workdir: str) -> None:
  """Refuses a workdir that is a file or lies under a file (nothing is created)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} is a file, not a folder; choose a folder')
  parent = os.path.dirname(workdir)
  while parent and not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if parent and not os.path.isdir(parent):
    raise WorkdirError(f'--workdir {workdir} lies under {parent}, which is a file')


# ------------------------------------------------------------------------------------- config
def _flat(d: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
  out = {}
  for k, v in d.items():
    key = f'{prefix}{k}'
    if isinstance(v, dict):
      out.update(_flat(v, key + '.'))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def config_path(workdir: str) -> str:
  return os.path.join(workdir, 'config.json')


def compare_config(config: ml_collections.ConfigDict, workdir: str) -> bool:
  """Refuses a config that differs from the workdir's (naming the keys); writes nothing.

  Returns:
    whether the workdir already holds a config.
  """
  path = config_path(workdir)
  if not os.path.exists(path):
    return False
  diff, saved, now = _differences(read_json(path), config)
  if diff:
    details = '; '.join(f'{k}: workdir {saved.get(k)!r} vs now {now.get(k)!r}' for k in diff[:8])
    if len(diff) > 8:
      details += f'; and {len(diff) - 8} more: {", ".join(diff[8:])}'
    raise RunError(f'{workdir} was created with a different config ({details}). Use another '
                   '--workdir or the original config.')
  return True


def _differences(recorded: Dict[str, Any], config: ml_collections.ConfigDict,
                 keys: Optional[Sequence[str]] = None):
  """The keys (of ``keys``, default all) outside :data:`RESUMABLE_KEYS` where ``config`` differs
  from the ``recorded`` config dict, sorted, and both flattened (the record with
  :data:`ADDED_KEYS` filled in)."""
  saved = {**ADDED_KEYS, **_flat(recorded)}
  now = _flat(json.loads(config.to_json()))
  keys = set(saved) | set(now) if keys is None else keys
  return (sorted(k for k in keys if saved.get(k) != now.get(k) and k not in RESUMABLE_KEYS),
          saved, now)


def save_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes ``config.json`` unless the workdir has one (which :func:`compare_config` checks)."""
  if not compare_config(config, workdir):
    write_json(config_path(workdir), json.loads(config.to_json()))


def load_run_config(workdir: str, given: Optional[ml_collections.ConfigDict] = None,
                    overridden: Optional[Sequence[str]] = None) -> ml_collections.ConfigDict:
  """The config of the run in ``workdir`` (for eval and predict).

  Args:
    workdir: the run directory.
    given: a config from the caller or the command line, or None.
    overridden: which keys of ``given`` replace the run's recorded values (the command line's
      ``--config.<key>=`` flags); every other value of ``given`` is ignored, so a config file's
      values (its ``data_dir``, its ``pretrained_path``, its model) never replace the run's. A
      named key outside :data:`RESUMABLE_KEYS` must hold the recorded value. None: ``given`` is
      used as it is (a caller's own, complete config), and it must equal the run's config except
      in :data:`RESUMABLE_KEYS` (e.g. a moved ``model.pretrained_path``).

  Raises:
    RunError: when the workdir holds no run or ``given`` differs where it may not.
  """
  if not os.path.isdir(workdir):
    raise WorkdirError(f'--workdir {workdir} does not exist; train first with python main.py '
                       f'--config=... --workdir={workdir}')
  if not os.path.exists(config_path(workdir)):
    raise WorkdirError(f'{workdir} holds no run (no config.json); train first with python main.py '
                       f'--config=... --workdir={workdir}')
  recorded = ml_collections.ConfigDict(read_json(config_path(workdir)))
  if given is None:
    return recorded
  if overridden is None:
    compare_config(given, workdir)
    return given
  # Only the named keys come from ``given``; a non-resumable one must hold the recorded value.
  differ, saved, now = _differences(recorded.to_dict(), given, overridden)
  if differ:
    details = '; '.join(f'{k}: workdir {saved.get(k)!r} vs command line {now.get(k)!r}'
                        for k in differ)
    raise RunError(f'{workdir} was trained with other values ({details}); eval and predict take '
                   f'only {", ".join(RESUMABLE_KEYS)} from the command line')
  for key in overridden:
    *parents, leaf = key.split('.')
    source, target = given, recorded
    for p in parents:
      source, target = source[p], target[p]
    target[leaf] = source[leaf]
  return recorded


# ----------------------------------------------------------------------------------- run info
def run_info_path(workdir: str) -> str:
  return os.path.join(workdir, 'run_info.json')


def read_run_info(workdir: str, required: bool = True) -> Dict[str, Any]:
  """``run_info.json``; missing is an error for eval/predict (``required``), ``{}`` otherwise."""
  path = run_info_path(workdir)
  if not os.path.exists(path):
    if required:
      raise WorkdirError(f'{path} is missing: the run in {workdir} never started training (or the '
                         'file was deleted); run the training command again to resume it')
    return {}
  return read_json(path)


def results_path(workdir: str) -> str:
  return os.path.join(workdir, 'results.json')


def read_results(workdir: str) -> Dict[str, Any]:
  """``results.json`` of a finished run: metrics per seed and mean/std over seeds."""
  path = results_path(workdir)
  if not os.path.exists(path):
    raise WorkdirError(f'{path}: missing; is the run finished? (python main.py --config=... '
                       f'--workdir={workdir})')
  return read_json(path)


def finished_results(workdir: str, seed: int, subjects: List[str]) -> List[Dict[str, Any]]:
  """The ``result.json`` of each finished fold of ``seed``, in the order of ``subjects``."""
  return [read_json(result_path(workdir, seed, s))
          for s in finished_subjects(workdir, seed, subjects)]


def _git_commit() -> str:
  """The mpt_jax checkout's commit (``+dirty`` with uncommitted changes), or ``unknown``."""
  import subprocess  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short=12', 'HEAD'], cwd=here, check=True,
                            capture_output=True, text=True, timeout=10).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=here,
                           check=True, capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return commit + ('+dirty' if dirty else '')


def file_sha256(path: str, cache: Optional[Dict[str, Any]] = None) -> str:
  """SHA-256 of a file (hex), reused from ``cache`` while the file's size and mtime are unchanged."""
  import hashlib  # pylint: disable=g-import-not-at-top
  st = os.stat(path)
  stamp = [os.path.abspath(path), st.st_size, st.st_mtime_ns]
  if cache and cache.get('stamp') == stamp:
    return cache['sha256']
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()


def provenance(config: ml_collections.ConfigDict, previous: Optional[Dict[str, Any]] = None,
               now: Optional[str] = None) -> Dict[str, Any]:
  """What produced a run, for ``run_info.json`` and the top of ``report.md``.

  Dataset and builder config, backbone and its weights file with its SHA-256, epochs, seeds, the
  mpt_jax commit and the date (UTC). ``previous`` (the record of an earlier start) keeps the
  file's hash while the file is unchanged.
  """
  import datetime  # pylint: disable=g-import-not-at-top
  m = config.model
  path = str(m.pretrained_path or '')
  weights: Dict[str, Any] = {'path': path or None}
  if path and os.path.isfile(os.path.expanduser(path)):
    full = os.path.expanduser(path)
    st = os.stat(full)
    weights['stamp'] = [os.path.abspath(full), st.st_size, st.st_mtime_ns]
    weights['sha256'] = file_sha256(full, (previous or {}).get('weights'))
  return {
      'dataset': str(config.data.name), 'builder_config': str(config.data.builder_config),
      'backbone': str(m.vit), 'training_strategy': str(m.training_strategy), 'weights': weights,
      'epochs': int(config.train.num_epochs),
      'seeds': list(range(int(config.seed), int(config.seed) + int(config.num_seeds))),
      'commit': _git_commit(),
      'date': now or datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
  }


def protocol_record(names, subjects, labels, classes) -> Dict[str, Any]:
  """What identifies a protocol: its classes and every clip's subject and label."""
  classes = list(classes)
  return {'classes': classes,
          'clips': {str(n): [str(s), classes[int(l)]] for n, s, l in zip(names, subjects, labels)}}


def check_protocol(info: Dict[str, Any], record: Dict[str, Any], workdir: str) -> None:
  """Refuses data that differs from the protocol the workdir was trained on, naming what differs."""
  saved = info.get('protocol')
  if saved is None:
    return
  problems = []
  if list(saved['classes']) != list(record['classes']):
    problems.append(f"classes {saved['classes']} vs now {record['classes']}")
  old, new = saved['clips'], record['clips']
  differ = [f'{n} (only in the workdir)' for n in sorted(set(old) - set(new))]
  differ += [f'{n} (only in the data now)' for n in sorted(set(new) - set(old))]
  for n in sorted(set(old) & set(new)):
    if list(old[n]) != list(new[n]):
      differ.append(f'{n} (subject/label {"/".join(old[n])} -> {"/".join(new[n])})')
  if differ:
    problems.append(f'{len(differ)} clips differ: {", ".join(differ[:5])}'
                    f'{" ..." if len(differ) > 5 else ""}')
  if problems:
    raise RunError(f'The prepared data differs from the protocol {workdir} was trained on: '
                   f'{"; ".join(problems)}. Use the same prepared data (data.data_dir, '
                   'builder_config) or another --workdir.')


def check_init_fingerprint(info: Dict[str, Any], seed: int, fingerprint: str, workdir: str) -> None:
  """Refuses initial parameters (pretrained file, init) that differ from the trained run's."""
  saved = info.get('init_fingerprint', {}).get(str(seed))
  if saved is not None and saved != fingerprint:
    raise RunError(f'The initial parameters of seed {seed} differ from the ones {workdir} was '
                   f'trained with (fingerprint {fingerprint} vs {saved}): check '
                   'config.model.pretrained_path (the same file is needed)')


# ------------------------------------------------------------------------------------- lock
class Lock:
  """An exclusive lock on a workdir, held while a run writes into it.

  ``fcntl.flock`` on ``<workdir>/lock``, which holds the owner's process id and host. The kernel
  drops the lock when its process dies (even by ``kill -9``), so a lock file left by a dead process
  is recognised as stale and taken over. The file is removed on release. (flock is per host: two
  machines sharing a network folder are not protected.)
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.fd = None

  def acquire(self) -> 'Lock':
    makedirs(self.workdir)
    while True:
      try:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        raise WorkdirError(f'Cannot write into {self.workdir}: {e.strerror or e}') from e
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        owner = os.read(fd, 200).decode(errors='replace').split()
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
          raise WorkdirError(f'Cannot lock {self.path}: {e.strerror or e}') from e
        pid = owner[0] if owner else 'unknown'
        host = f' on {owner[1]}' if len(owner) > 1 else ''
        raise LockedError(f'{self.workdir} is in use by another run (process {pid}{host}, lock '
                          f'file {self.path}); wait for it to finish or stop it') from e
      try:  # the holder may have released and removed the file between our open and flock
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if not same:
        os.close(fd)
        continue
      previous = os.read(fd, 200).decode(errors='replace').split()
      if previous:
        logging.warning('%s: taking over the stale lock of process %s (no longer running)',
                        self.workdir, previous[0])
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, f'{os.getpid()} {socket.gethostname()}\n'.encode())
      self.fd = fd
      return self

  def release(self) -> None:
    if self.fd is None:
      return
    try:
      os.unlink(self.path)
    except OSError:
      pass
    os.close(self.fd)
    self.fd = None

  def __enter__(self) -> 'Lock':
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def get_config(arg: str) -> ml_collections.ConfigDict:
  """``--config=mpt_jax/workdir.py:<workdir>``: the config a run was trained with, as a config file.

  ``main.py`` uses this for ``--mode=eval`` and ``--mode=predict`` without ``--config``, so that
  ``--config.<key>=<value>`` overrides (e.g. a moved ``model.pretrained_path``) apply to the run's
  own config.
  """
  return ml_collections.ConfigDict(read_json(config_path(resolve(arg))))
