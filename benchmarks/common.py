"""What the benchmark scripts share: the config with its overrides, the runner's own training and
evaluation programs, timing, child processes with a time limit, the profile table, JSON output.

Run the scripts as modules from the repository root (``python -m benchmarks.bench_model``), so
``mpt_jax`` and ``configs`` import without path changes.

* :func:`load_config`: ``configs/x.py[:arg]`` plus ``key.path=value`` overrides, parsed by
  ml_collections' own ``--config.key.path=value`` flag mechanism (what ``main.py`` takes).
* :class:`RunnerPrograms`: the runner's plan (:mod:`mpt_jax.run_plan`) on in-memory random
  clips, with its compiled programs (:func:`mpt_jax.fold_programs.make_programs`: compile options,
  epoch loop, motion cache, fold layout and frozen-weight casting as in a LOSO run); a benchmark
  times ``train_epoch`` and ``evaluate``, never a copy of the step.
* :func:`time_calls`: first call (compilation), warm-up, timed repeats.
* :func:`run_child`: one measurement in a fresh Python process with a time limit, its result a JSON
  file; :func:`emit`: the one JSON line a script prints.
* :func:`profile_table`: the top operations of a ``jax.profiler`` trace by time.
"""

import collections
import glob
import gzip
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class BenchError(Exception):
  """A benchmark argument or environment that cannot work (one line, exit code 2)."""


# ------------------------------------------------------------------------------ hidden modules
def hide_modules(names: Sequence[str]) -> None:
  """Makes ``import name`` (and ``importlib.util.find_spec``) fail as if ``names`` were absent."""
  names = tuple(n for n in names if n)
  if not names:
    return

  class _Hidden:
    """Wraps one meta path finder; finds nothing under the hidden top-level names."""

    def __init__(self, finder):
      self._finder = finder

    def find_spec(self, name, path=None, target=None):
      if name.split('.')[0] in names:
        return None
      find = getattr(self._finder, 'find_spec', None)
      return find(name, path, target) if find else None

    def __getattr__(self, attr):
      return getattr(self._finder, attr)

  sys.meta_path[:] = [f if isinstance(f, _Hidden) else _Hidden(f) for f in sys.meta_path]
  for mod in list(sys.modules):
    if mod.split('.')[0] in names:
      del sys.modules[mod]


# --------------------------------------------------------------------------------- the config
def load_config(spec: str, overrides: Sequence[str] = ()):
  """``path/to/config.py[:arg]`` with ``key.path=value`` overrides, read by ml_collections' config
  flag exactly as ``main.py --config=spec --config.key.path=value`` reads them (typed like the
  config's value; an unknown key, a bad value or a missing file is a :class:`BenchError`)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  path, colon, arg = spec.partition(':')
  full = path if os.path.isabs(path) else os.path.join(ROOT, path)
  if not os.path.isfile(full):
    raise BenchError(f'--config: no config file {path}')
  for item in overrides:
    if '=' not in item:
      raise BenchError(f'--set {item!r}: expected key=value, e.g. train.num_epochs=3')
  argv = ['bench', f'--config={full}{colon}{arg}'] + [f'--config.{item}' for item in overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'the config', flag_values=values,
                                  lock_config=True, sys_argv=argv)
  try:
    values(argv)
  except (AttributeError, KeyError) as e:  # an override of a key the config does not have
    key = str(e).strip('"\'')
    item = next((i for i in overrides if i.split('=', 1)[0].split('.')[-1] == key), None)
    if item is None:
      raise BenchError(f'--set: config has no key {key!r}') from e
    raise BenchError(f'--set {item!r}: config has no key {item.split("=", 1)[0]!r}') from e
  except flags.Error as e:
    raise BenchError(' '.join(str(e).split())) from e
  return values.config


# ----------------------------------------------------------------------------------- timing
def time_calls(call: Callable[[], Any], repeats: int = 3, warmup: int = 1,
               min_time_s: float = 0.0, max_repeats: int = 1000) -> Dict[str, Any]:
  """Times ``call()`` (which must block until its result exists): the first call (compiles),
  ``warmup`` more, then ``repeats`` timed calls, more while their sum is under ``min_time_s``
  (at most ``max_repeats``). Returns ``first_s``, ``times_s``, ``median_s``, ``min_s``."""
  t = time.perf_counter()
  call()
  first = time.perf_counter() - t
  for _ in range(warmup):
    call()
  times: List[float] = []
  while len(times) < repeats or (sum(times) < min_time_s and len(times) < max_repeats):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
  return {'first_s': round(first, 3), 'times_s': [round(x, 5) for x in times],
          'median_s': statistics.median(times), 'min_s': min(times)}


# ------------------------------------------------------------------------- the runner's programs
def random_clipset(num_subjects: int, num_clips: int, frames: int, size: int, num_classes: int,
                   seed: int = 0):
  """An in-memory ``ClipSet`` of uniform-noise clips (float16 in [0, 1]): subjects round-robin,
  classes cyclic. Its import needs no TensorFlow or TFDS."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  if num_subjects < 2 or num_clips < num_subjects:
    raise BenchError(f'{num_subjects} subjects and {num_clips} clips: LOSO needs at least 2 '
                     'subjects and a clip per subject')
  rng = np.random.default_rng(seed)
  clips = np.empty((num_clips, frames, size, size, 3), np.float16)
  for i in range(num_clips):  # one clip at a time: no float64 copy of the whole protocol
    clips[i] = rng.random((frames, size, size, 3), np.float32)
  idx = np.arange(num_clips)
  subjects = np.asarray([f's{i % num_subjects + 1:02d}' for i in idx])
  labels = ((idx // num_subjects) % num_classes).astype(np.int32)
  names = np.asarray([f'bench/{s}/clip{i:04d}' for s, i in zip(subjects, idx)])
  classes = tuple(f'class{c}' for c in range(num_classes))
  return input_pipeline.ClipSet(clips, labels, np.full(num_clips, (frames - 1) // 2, np.int32),
                                subjects, names, classes)


class RunnerPrograms:
  """The runner's training and evaluation programs of ``config`` with ``folds`` fold slots, each
  epoch ``steps`` steps of ``config.train.batch_size`` clips per fold, on random clips.

  Everything is built as a LOSO run builds it (:func:`mpt_jax.run_plan.make_plan`,
  :func:`mpt_jax.fold_programs.init_seed` and :func:`mpt_jax.fold_programs.make_programs`: the model
  from ``config.model``, the frozen backbone on the devices, ``train.make_steps``); the fold-stacked
  state, the epoch's index arrays (:func:`mpt_jax.fold_groups.epoch_arrays`) and the calls are the
  runner's (:func:`mpt_jax.fold_groups.train_group`). :meth:`train_epoch` runs one epoch of every
  fold slot and blocks until it is done; :meth:`evaluate` runs the held-out evaluation program
  over every slot's held-out clips.
  """

  def __init__(self, config, folds: int = 1, steps: int = 2, eval_clips_per_fold: int = 0):
    import numpy as np  # pylint: disable=g-import-not-at-top
    from mpt_jax import fold_groups  # pylint: disable=g-import-not-at-top
    from mpt_jax import fold_programs  # pylint: disable=g-import-not-at-top
    from mpt_jax import run_plan  # pylint: disable=g-import-not-at-top
    from mpt_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    self.config = config = config.copy_and_resolve_references()
    batch = int(config.train.batch_size)
    subjects = max(2, folds)
    # Every training fold (the subjects - 1 others' clips) fills ``steps`` batches, the last one
    # at least partly (the runner's steps per epoch); the held-out subject has
    # eval_clips_per_fold clips or more.
    per_subject = max(steps * batch // (subjects - 1), eval_clips_per_fold, 1)
    config.train.folds_per_step = folds
    data = random_clipset(subjects, subjects * per_subject, int(config.model.num_frames),
                          int(config.model.image_size), int(config.data.get('num_classes', 5) or 5))
    config.data.num_classes = len(data.classes)
    config.data.subjects = ()
    self.plan = plan = run_plan.make_plan(config, data)
    self.init = init = fold_programs.init_seed(plan, int(config.seed))
    self.data = fold_programs.DeviceData(plan, data)
    self.programs = fold_programs.make_programs(plan, init)
    self.layout = layout = plan.layout
    self.steps = plan.steps_per_epoch
    self.model = plan.model
    self.clips_per_epoch = sum(int((data.subjects != s).sum())
                               for s in plan.subjects[:layout.folds])
    state = layout.state_to_device(
        train_lib.stack_states([self.programs.fresh_fold_state(init)] * layout.folds),
        plan.devices)
    self._state = [state]
    plans = [(np.flatnonzero(data.subjects != s), 1) for s in plan.subjects[:layout.folds]]
    plans += [None] * (layout.folds - len(plans))
    idx, aug, mask = fold_groups.epoch_arrays(config, layout, self.steps, plans)
    self._epoch_args = [layout.to_device(x) for x in (idx, aug, mask)]
    self._eval = fold_programs.eval_arrays(plan, [np.flatnonzero(data.subjects == s)
                                                  for s in plan.subjects[:layout.folds]], layout)

  def train_epoch(self):
    """One epoch of the runner's train program; returns its metrics (on the host)."""
    import jax  # pylint: disable=g-import-not-at-top
    state, metrics = self.programs.train(self._state[0], self.init.frozen_on_device,
                                         self.data.train_inputs(), *self._epoch_args)
    self._state[0] = state
    return jax.device_get(metrics)

  def evaluate(self):
    """The runner's held-out evaluation of every fold slot; returns the logits per slot."""
    from mpt_jax import fold_programs  # pylint: disable=g-import-not-at-top
    return fold_programs.evaluate_folds(self.data, self.programs, self._state[0].params,
                                        self.init.frozen_on_device, *self._eval)

  def step_flops(self) -> Optional[float]:
    """XLA's flop count of one training step of every fold slot (the runner's one-step program,
    as lowered, before any backend optimisation: XLA:GPU's count of the compiled program leaves
    out the products it hands to cuBLAS)."""
    from mpt_jax import train as train_lib  # pylint: disable=g-import-not-at-top
    plan = self.plan
    train_step, _ = train_lib.make_steps(
        plan.model, self.programs.tx, self.layout, plan.devices,
        geometric_augmentation=plan.geometric, motion_cache=plan.motion_cache, epoch_loop='host')
    args = (self._state[0], self.init.frozen_on_device, self.data.train_inputs()) + tuple(
        x[:, 0] for x in self._epoch_args)
    cost = train_step.step_program.lower(*args).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    if not cost or 'flops' not in cost:
      return None
    return float(cost['flops']) * len(plan.devices)  # pmapped: the count is per device

  def describe(self) -> Dict[str, Any]:
    plan = self.plan
    return {'folds': self.layout.folds, 'steps_per_epoch': self.steps,
            'batch_per_fold': int(self.config.train.batch_size), 'dtype': plan.model.compute.dtype,
            'attention': plan.model.compute.attention, 'motion_cache': plan.motion_cache,
            'epoch_loop': plan.epoch_loop}


def device_label() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  d = jax.devices()[0]
  return f'{d.platform}:{d.device_kind}'


def device_peak_mib() -> Optional[float]:
  """The first device's peak allocation (MiB) where the backend reports one (GPUs), else None."""
  import jax  # pylint: disable=g-import-not-at-top
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except
    return None
  if not stats or 'peak_bytes_in_use' not in stats:
    return None
  return round(stats['peak_bytes_in_use'] / 2**20, 1)


# ------------------------------------------------------------------------------------ profiles
def trace_events(trace_dir: str) -> List[Dict[str, Any]]:
  """The events of the newest ``perfetto_trace.json.gz`` that ``jax.profiler.trace(trace_dir,
  create_perfetto_trace=True)`` wrote."""
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', 'perfetto_trace.json.gz'),
                           recursive=True), key=os.path.getmtime)
  if not paths:
    raise BenchError(f'no perfetto_trace.json.gz under {trace_dir}')
  with gzip.open(paths[-1], 'rt') as f:
    data = json.load(f)
  return data['traceEvents'] if isinstance(data, dict) else data


def op_events(events: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The complete events (``ph`` X) of the operations a program ran: on a GPU trace the events of
  the device processes (``/device:GPU:N``: the kernels), on a CPU-only trace the host events that
  carry an ``hlo_op`` (XLA:CPU's thunks)."""
  names = {e.get('pid'): e.get('args', {}).get('name', '') for e in events
           if e.get('ph') == 'M' and e.get('name') == 'process_name'}
  devices = {pid for pid, name in names.items()
             if name.startswith('/device:') and not name.startswith('/device:CPU')}
  out = []
  for e in events:
    if e.get('ph') != 'X' or 'dur' not in e or str(e.get('name', '')).startswith('end: '):
      continue
    if devices:
      if e.get('pid') in devices:
        out.append(e)
    elif 'hlo_op' in e.get('args', {}):
      out.append(e)
  return out


def profile_table(events: Sequence[Dict[str, Any]], top: int = 15) -> Dict[str, Any]:
  """The ``top`` operations by total time: rows ``{name, hlo_op, calls, ms, share}`` (``share`` of
  the time of every operation in the trace), and that total in ``total_ms``."""
  ops = op_events(events)
  total = collections.defaultdict(float)
  calls = collections.Counter()
  hlo = {}
  for e in ops:
    name = str(e['name'])
    total[name] += float(e['dur']) / 1000.0  # microseconds -> ms
    calls[name] += 1
    hlo.setdefault(name, e.get('args', {}).get('hlo_op', ''))
  all_ms = sum(total.values())
  rows = [{'name': n, 'hlo_op': hlo[n], 'calls': calls[n], 'ms': round(ms, 3),
           'share': round(ms / all_ms, 4) if all_ms else 0.0}
          for n, ms in sorted(total.items(), key=lambda kv: -kv[1])[:top]]
  return {'total_ms': round(all_ms, 3), 'ops': len(ops), 'rows': rows}


def markdown_table(table: Dict[str, Any]) -> str:
  """A :func:`profile_table` as a markdown table (name, ms, share)."""
  lines = ['| kernel / op | ms | share |', '|---|---:|---:|']
  for r in table['rows']:
    name = r['name'] if len(r['name']) <= 80 else r['name'][:77] + '...'
    lines.append(f"| `{name}` | {r['ms']:.3f} | {100 * r['share']:.1f} % |")
  lines.append(f"| all {table['ops']} ops | {table['total_ms']:.3f} | 100 % |")
  return '\n'.join(lines)


def profile(call: Callable[[], Any], trace_dir: str, top: int = 15) -> Dict[str, Any]:
  """Runs ``call()`` under ``jax.profiler`` and returns :func:`profile_table` of its trace."""
  import jax  # pylint: disable=g-import-not-at-top
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    call()
  return profile_table(trace_events(trace_dir), top)


# ---------------------------------------------------------------------------- child processes
def run_child(argv: Sequence[str], timeout: Optional[float] = None,
              env: Optional[Dict[str, str]] = None,
              out_path: Optional[str] = None) -> Dict[str, Any]:
  """Runs ``argv + ['--_out=FILE']`` from the repository root in a fresh process with a time
  limit. Without ``out_path``: FILE is temporary and the JSON object the child wrote there
  (:func:`write_result`) is returned. With ``out_path`` (a child that writes what it measured as
  it goes, e.g. JSON lines, read by the caller even after a timeout): ``{}``. On a timeout, a crash
  or no result: ``{'error': one line}``."""
  with tempfile.TemporaryDirectory(prefix='bench_') as tmp:
    out = out_path or os.path.join(tmp, 'result.json')
    try:
      proc = subprocess.run(list(argv) + [f'--_out={out}'], cwd=ROOT, capture_output=True,
                            text=True, timeout=timeout, check=False,
                            env=None if env is None else {**os.environ, **env})
    except subprocess.TimeoutExpired:
      return {'error': f'stopped at its {timeout:.0f} s limit'}
    tail = [l for l in (proc.stderr or '').strip().splitlines() if l.strip()][-1:]
    failed = {'error': f'exited with code {proc.returncode}: {tail[0] if tail else "(no output)"}'}
    if out_path is not None:
      return failed if proc.returncode else {}
    if os.path.exists(out):
      with open(out) as f:
        return json.load(f)
    return failed


def write_result(path: str, result: Dict[str, Any]) -> None:
  """The child's side of :func:`run_child`."""
  with open(path, 'w') as f:
    json.dump(result, f)


def module_argv(module: str, *args: str) -> List[str]:
  """``python -m benchmarks.<module> args...`` with this interpreter."""
  return [sys.executable, '-m', f'benchmarks.{module}'] + list(args)


def emit(line: Dict[str, Any]) -> None:
  """Prints the script's one JSON line."""
  print(json.dumps(line), flush=True)
