"""The LOSO loop: leave-one-subject-out training and evaluation with a resumable record.

``train_and_evaluate(config, workdir)`` trains one model per held-out subject (per seed), evaluates
it on that subject and writes the workdir records described in :mod:`mpt_jax.workdir`, plus
``seed_<s>/fold_<subject>/events.*`` (TensorBoard scalars) and ``results.json``, ``report.md`` and
``figures/`` (see :mod:`mpt_jax.report`).

Everything a run needs is checked before the workdir is touched (config values, model, optimizer,
pretrained file, dataset, batch sizes, the protocol and the initial parameters against an earlier
run in the same workdir), so a refused run changes nothing there. The run then holds the workdir's
lock. A finished fold (``result.json`` present) is never retrained; an unfinished one resumes from
its last checkpoint (a damaged one is moved aside and the fold retrained). Data order and
augmentation depend only on (seed, fold, epoch), so a resumed run ends with exactly the metrics of
an uninterrupted one. Every fold starts from the same freshly initialised trainable parameters (same
seed); the frozen backbone is one set of arrays shared by all folds.

Folds train in groups of ``config.train.folds_per_step`` (:func:`train_group`, the programs of
:mod:`mpt_jax.train`); each fold of a group keeps its own epoch counter, records and checkpoint.
Multi-host: process ``p`` trains the folds ``i % process_count == p``; process 0 writes the shared
records.
"""

import math
import os
import platform
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from mpt_jax import console
from mpt_jax import errors
from mpt_jax import input_pipeline
from mpt_jax import metrics as metrics_lib
from mpt_jax import partition
from mpt_jax import pretrained
from mpt_jax import report as report_lib
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd
from mpt_jax.models import mpt as mpt_lib

RunError = wd.RunError


class ConfigError(errors.UserError):
  """A config value that cannot work (the message names the key)."""


# Counts that must be at least 1 (key: what it counts).
_POSITIVE = ('num_seeds', 'train.num_epochs', 'train.batch_size', 'train.eval_batch_size',
             'train.eval_every_epochs', 'train.checkpoint_every_epochs', 'model.num_frames',
             'model.image_size', 'model.num_prompts',
             'model.adapter_reduction', 'model.tokenizer_dim', 'model.tokenizer_patch')
_NON_NEGATIVE = ('train.num_devices', 'train.folds_per_step', 'train.warmup_epochs',
                 'train.weight_decay', 'train.checkpoint_min_interval_s')
_CHOICES = {'train.optimizer': ('adam', 'adamw', 'sgd'),
            'train.schedule': ('constant', 'cosine'),
            'model.training_strategy': tuple(partition.STRATEGIES)}


MOTION_CACHE_CHOICES = ('auto', 'on', 'off')
EPOCH_LOOP_CHOICES = ('auto',) + train_lib.EPOCH_LOOPS
_clock = time.monotonic  # the checkpoint cadence's clock (tests replace it)


def geometric_augmentation(config: ml_collections.ConfigDict) -> bool:
  """Whether the config draws rotations or crops (which the motion cache cannot serve)."""
  return (float(config.data.max_rotation_deg) > 0 or float(config.data.min_crop_scale) < 1.0)


def cache_flips(config: ml_collections.ConfigDict) -> int:
  """Copies of each clip in the motion cache: unflipped and, with ``config.data.hflip``, flipped."""
  return 2 if bool(config.data.hflip) else 1


def _get(config, key):
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def validate_config(config: ml_collections.ConfigDict, num_classes: Optional[int] = None):
  """Checks every config value a run uses, without touching data or workdir.

  Builds the model (unknown variant, modality, prompt or adapter type; image size vs patch size).

  Returns:
    the model (built with ``num_classes``, or ``config.data.num_classes``, or 2).

  Raises:
    ConfigError: naming the first bad key.
  """
  for key in _POSITIVE:
    try:
      value = _get(config, key)
    except KeyError:
      continue
    if int(value) < 1:
      raise ConfigError(f'config.{key} is {value}; it must be at least 1')
  for key in _NON_NEGATIVE:
    if float(_get(config, key)) < 0:
      raise ConfigError(f'config.{key} is {_get(config, key)}; it must be 0 or more')
  lr = float(config.train.learning_rate)
  if not math.isfinite(lr) or lr <= 0:
    raise ConfigError(f'config.train.learning_rate is {lr}; it must be a positive number')
  for key, choices in _CHOICES.items():
    if _get(config, key) not in choices:
      raise ConfigError(f'config.{key} is {_get(config, key)!r}; it must be one of '
                        f'{", ".join(choices)}')
  if config.model.training_strategy == 'scratch' and config.model.pretrained_path:
    raise ConfigError(f'training_strategy scratch trains from a random init and would ignore '
                      f'config.model.pretrained_path ({config.model.pretrained_path}); unset it '
                      "(--config.model.pretrained_path='') or choose another strategy")
  cache = config.train.get('motion_cache', 'auto')
  if cache not in MOTION_CACHE_CHOICES:
    raise ConfigError(f'config.train.motion_cache is {cache!r}; it must be one of '
                      f'{", ".join(MOTION_CACHE_CHOICES)}')
  if cache == 'on' and geometric_augmentation(config):
    raise ConfigError("config.train.motion_cache is 'on' but geometric augmentation is on "
                      f'(config.data.max_rotation_deg {config.data.max_rotation_deg}, '
                      f'config.data.min_crop_scale {config.data.min_crop_scale}), which changes '
                      "the motion per draw; set config.train.motion_cache to 'auto' or 'off'")
  loop = config.train.get('epoch_loop', 'auto')
  if loop not in EPOCH_LOOP_CHOICES:
    raise ConfigError(f'config.train.epoch_loop is {loop!r}; it must be one of '
                      f'{", ".join(EPOCH_LOOP_CHOICES)}')
  if num_classes is None:
    num_classes = int(config.data.get('num_classes', 2) or 2)
  try:
    return mpt_lib.build_model(config.model, num_classes)
  except errors.UserError:
    raise
  except (ValueError, KeyError) as e:
    raise ConfigError(f'config.model is not a valid model: {e}') from e


def fold_dir(workdir: str, seed: int, subject: str) -> str:
  return wd.fold_dir(workdir, seed, subject)


def _vit_dims(model_config) -> Tuple[int, int, int, int, int]:
  """(hidden size, MLP size, heads, blocks, patch size) of the configured backbone."""
  from mpt_jax.models import vit  # pylint: disable=g-import-not-at-top
  cfg = vit.vit_config(model_config.vit)
  return cfg.hidden_size, cfg.mlp_dim, cfg.num_heads, cfg.num_layers, cfg.patch_size


def fold_bytes_estimate(config: ml_collections.ConfigDict) -> int:
  """An estimate of one fold's training-step memory (bytes).

  Activations kept for the backward pass of every block (about 12 hidden-size vectors, two MLP
  vectors and the attention maps per token, float32) and the clip pipeline (frames, magnification
  pyramid and their gradients: 16 copies of the float32 batch). For ViT-B/16 at 224 px, T = 16,
  batch 16 this gives 5.2 GiB; the measured peak of one such training step on CPU is 5.7 GiB (issue
  9), most of the difference being the parameters, counted once in the budget's margin.
  """
  d, mlp, heads, layers, patch = _vit_dims(config.model)
  size, frames = int(config.model.image_size), int(config.model.num_frames)
  tokens = (size // patch) ** 2 + 1 + int(config.model.num_prompts)
  batch = int(config.train.batch_size)
  blocks = 4 * batch * layers * tokens * (12 * d + 2 * mlp + 2 * heads * tokens)
  clips = 4 * batch * frames * size * size * 3 * 16
  return blocks + clips


def memory_budget(devices: Sequence[jax.Device]) -> int:
  """Bytes the fold-parallel state may use on one device: 60 % of an accelerator's memory, or
  40 % of the host's RAM shared by the CPU devices."""
  dev = devices[0]
  if dev.platform != 'cpu':
    try:
      limit = int((dev.memory_stats() or {}).get('bytes_limit', 0))
    except Exception:  # pylint: disable=broad-except
      limit = 0
    if limit:
      return int(0.6 * limit)
  try:
    ram = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  except (ValueError, OSError, AttributeError):
    ram = 8 << 30
  return int(0.4 * ram) // len(devices)


def resolve_folds_per_step(config: ml_collections.ConfigDict, num_folds: int,
                           devices: Sequence[jax.Device]) -> int:
  """The fold slots of one program call (``config.train.folds_per_step``; 0 = auto).

  Auto: 1 (one fold after another) on CPU devices, where training every fold at once was measured
  no faster than sequential on a 2-core machine (docs/benchmarks.md, bench_loso.py): the
  cores are busy either way and the stacked program only adds masked and dummy steps. On
  accelerators (GPU, TPU), where one fold's batch leaves the device mostly idle: every fold this
  process trains for a seed, as far as :func:`fold_bytes_estimate` fits :func:`memory_budget` on
  each device; 1 when not even two folds per device fit. A value above 1 is rounded up to a
  multiple of the devices (the extra slots are dummy folds) and capped at the folds rounded up the
  same way.
  """
  n_dev = len(devices)
  want = int(config.train.get('folds_per_step', 0))
  if want == 0 and devices[0].platform == 'cpu':
    return 1
  if want == 0:
    per_device = max(1, memory_budget(devices) // max(1, fold_bytes_estimate(config)))
    want = min(num_folds, per_device * n_dev)
    if per_device < 2 and n_dev == 1:
      want = 1
  want = min(want, num_folds)
  if want <= 1:
    return 1
  return -(-want // n_dev) * n_dev


def resolve_epoch_loop(config: ml_collections.ConfigDict, devices: Sequence[jax.Device]) -> str:
  """Where the loop over an epoch's steps runs (``config.train.epoch_loop``, see
  :func:`mpt_jax.train.make_steps`). Auto: ``host`` on CPUs, where XLA ran an epoch 1.6x (ViT-B/16)
  to 4.3x (the demo) slower inside ``lax.scan`` than as one program per step
  (``benchmarks/bench_epoch_loop.py``); ``device`` on accelerators (one dispatch per epoch)."""
  value = config.train.get('epoch_loop', 'auto')
  if value != 'auto':
    return value
  return 'host' if devices[0].platform == 'cpu' else 'device'


def resolve_motion_cache(config: ml_collections.ConfigDict, model, num_clips: int,
                         folds_per_step: int, devices: Sequence[jax.Device]) -> bool:
  """Whether the train step reads the motion cache (``config.train.motion_cache``).

  ``on``: always (:func:`validate_config` refuses it with geometric augmentation); ``off``: never;
  ``auto``: without geometric augmentation, whenever the cache
  (:func:`mpt_jax.train.motion_cache_bytes`, the flipped copies included) fits
  :func:`memory_budget` beside ``folds_per_step`` folds' step memory
  (:func:`fold_bytes_estimate`), on CPUs as on accelerators. On a 2-core CPU it made the demo
  LOSO 1.67x faster and the ViT-B/16 training step a few percent faster (docs/benchmarks.md,
  bench_loso.py and bench_vs_peer.py).
  """
  value = config.train.get('motion_cache', 'auto')
  if value != 'auto':
    return value == 'on'
  if geometric_augmentation(config):
    return False
  need = train_lib.motion_cache_bytes(model, num_clips, int(config.model.num_frames),
                                      int(config.model.image_size), cache_flips(config))
  per_device_folds = max(1, folds_per_step // len(devices))
  return need + per_device_folds * fold_bytes_estimate(config) <= memory_budget(devices)


class Experiment:
  """Everything shared by the folds of a run: data on device, model, programs, frozen backbone.

  Attributes other code reads: ``config``, ``data``, ``model``, ``strategy``, ``subjects``,
  ``devices`` (local), ``num_devices``, ``layout`` (:class:`mpt_jax.train.FoldLayout`),
  ``motion_cache`` (whether the train step reads the motion cache, see :meth:`train_inputs`),
  ``seed``, ``init_fingerprint``, ``trainable0`` and ``frozen`` (flat dicts of the seed's initial leaves),
  ``tx`` (optimizer of the full tree), ``schedule``; the methods :meth:`init`,
  :meth:`fresh_state`, :meth:`fresh_fold_state`, :meth:`train_inputs`, :meth:`predict`,
  :meth:`my_folds`.
  """

  def __init__(self, config: ml_collections.ConfigDict, data: input_pipeline.ClipSet):
    self.config = config
    self.data = data
    self.devices = jax.local_devices()
    # Multi-host (jax.distributed): each process trains its own folds (see my_folds) on its own
    # devices; the programs have no cross-process collective.
    self.process_count, self.process_index = jax.process_count(), jax.process_index()
    if int(config.train.get('num_devices', 0)) > 0:
      if int(config.train.num_devices) > len(self.devices):
        raise RunError(f'train.num_devices is {config.train.num_devices} but only '
                       f'{len(self.devices)} local device(s) exist')
      self.devices = self.devices[:int(config.train.num_devices)]
    self.num_devices = len(self.devices)  # local
    self.global_devices = self.num_devices  # the devices one fold's batch is spread over, at most
    self.strategy = config.model.training_strategy
    self.model = validate_config(config, len(data.classes))
    self.subjects = data.subject_list
    if len(self.subjects) < 2:
      raise RunError(f'LOSO needs at least 2 subjects; the data has {self.subjects}')
    mine = len(self.my_folds())
    self.layout = train_lib.FoldLayout(
        self.num_devices, resolve_folds_per_step(config, max(1, mine), self.devices))
    bs = int(config.train.batch_size)
    split = self.layout.split
    if bs % split or int(config.train.eval_batch_size) % split:
      raise RunError(f'train.batch_size ({bs}) and train.eval_batch_size '
                     f'({config.train.eval_batch_size}) must be multiples of the {split} devices '
                     'that share a fold (train.folds_per_step=1); or train several folds at once '
                     '(train.folds_per_step=0)')
    smallest = min(int((data.subjects != s).sum()) for s in self.subjects)
    if bs > smallest >= split and config.train.get('fit_batch_to_data', False):
      bs = smallest // split * split
      logging.warning('train.batch_size lowered from %s to %d: the smallest training fold has %d '
                      'clips (train.fit_batch_to_data)', config.train.batch_size, bs, smallest)
      self.config = config = config.copy_and_resolve_references()
      with config.unlocked():
        config.train.batch_size = bs
    if bs > smallest:
      raise RunError(f'train.batch_size {bs} is larger than the smallest training fold '
                     f'({smallest} clips); lower --config.train.batch_size')
    largest = max(int((data.subjects != s).sum()) for s in self.subjects)
    self.steps_per_epoch_max = input_pipeline.steps_per_epoch(largest, bs)
    most_test = max(int((data.subjects == s).sum()) for s in self.subjects)
    self.eval_batches_max = input_pipeline.steps_per_epoch(most_test,
                                                           int(config.train.eval_batch_size))
    self.data_on_device = input_pipeline.device_arrays(data, self.devices)
    self.geometric = geometric_augmentation(config)
    self.motion_cache = resolve_motion_cache(config, self.model, len(data), self.layout.folds,
                                             self.devices)
    self.epoch_loop = resolve_epoch_loop(config, self.devices)
    self._motion_cache_arrays = None  # built by the first train_inputs()
    self.seed = None  # the seed of the last init()
    self.p_train = self.p_eval = None  # built by the first init(), kept for every seed
    self._single_eval = None  # a one-fold evaluate program for predict(), built when needed

  def my_folds(self) -> List[int]:
    """Indices (into ``subjects``) of the folds this process trains: fold i goes to process
    ``i % process_count``."""
    return [i for i in range(len(self.subjects)) if i % self.process_count == self.process_index]

  def init(self, seed: int) -> None:
    """Initial parameters for ``seed``: trainable init (same for every fold) and frozen leaves."""
    self.seed = seed  # pylint: disable=attribute-defined-outside-init
    try:
      params = pretrained.init_params(self.model, self.config.model, jax.random.PRNGKey(seed))
    except errors.UserError:
      raise
    except (ValueError, TypeError) as e:  # shapes the config's model values cannot produce
      raise ConfigError(f'config.model cannot be initialised: {e}') from e
    self.labels_tree = partition.param_labels(params, self.strategy)  # pylint: disable=attribute-defined-outside-init
    self.trainable0, self.frozen = partition.split_params(params, self.strategy)  # pylint: disable=attribute-defined-outside-init
    # The schedule horizon uses the largest fold so that one compiled program serves every fold.
    self.tx = partition.make_optimizer(self.config.train, params, self.strategy,  # pylint: disable=attribute-defined-outside-init
                                       self.steps_per_epoch_max)
    self.tx_trainable = partition.make_optimizer(  # pylint: disable=attribute-defined-outside-init
        self.config.train, traverse_util.unflatten_dict(dict(self.trainable0), sep='/'),
        self.strategy, self.steps_per_epoch_max)
    self.schedule = partition.make_schedule(self.config.train, self.steps_per_epoch_max)  # pylint: disable=attribute-defined-outside-init
    if self.p_train is None:  # the same programs for every seed: they compile once per run
      self.p_train, self.p_eval = train_lib.make_steps(
          self.model, self.tx_trainable, self.layout, self.devices,
          geometric_augmentation=self.geometric, motion_cache=self.motion_cache,
          epoch_loop=self.epoch_loop)
    # bfloat16 models: the backbone's product weights cast once here, not in every step.
    self.frozen_on_device = train_lib.replicate(  # pylint: disable=attribute-defined-outside-init
        mpt_lib.frozen_for_compute(self.frozen, self.model.dtype), self.devices)
    # The whole initial tree: a changed pretrained file or init is refused on resume, whatever
    # the strategy trains.
    self.init_fingerprint = partition.tree_fingerprint(params)  # pylint: disable=attribute-defined-outside-init

  def train_inputs(self) -> Dict[str, jax.Array]:
    """The ``data`` argument of ``p_train``: the on-device protocol, plus, with the motion cache,
    every clip's parameter-free model inputs (computed by the first call, then kept for the run:
    they depend on no parameter, seed or fold)."""
    if not self.motion_cache:
      return self.data_on_device
    if self._motion_cache_arrays is None:
      t = time.time()
      flips = cache_flips(self.config)
      self._motion_cache_arrays = train_lib.build_motion_cache(
          self.model, self.data_on_device, len(self.data), int(self.config.train.eval_batch_size),
          flips, self.devices)
      jax.block_until_ready(self._motion_cache_arrays)
      size = sum(v.nbytes for v in self._motion_cache_arrays.values())
      logging.info('Motion cache: %d clips x %d flip(s), %.2f GiB per device, built in %.1fs',
                   len(self.data), flips, size / 2**30, time.time() - t)
    return dict(self.data_on_device, motion_cache=self._motion_cache_arrays)

  def release_motion_cache(self) -> None:
    """Frees the motion cache (after training; a later :meth:`train_inputs` builds it again)."""
    self._motion_cache_arrays = None

  def fresh_state(self) -> train_lib.TrainState:
    """A fresh state of the full parameter tree (the template evaluation restores into)."""
    return train_lib.create_state(self.trainable0, self.frozen, self.tx)

  def fresh_fold_state(self) -> train_lib.TrainState:
    """A fresh state of the trainable leaves alone (what the training loop stacks per fold)."""
    return train_lib.trainable_state(self.trainable0, self.tx_trainable)

  def eval_arrays(self, test_sets: Sequence[np.ndarray],
                  layout: train_lib.FoldLayout) -> Tuple[np.ndarray, np.ndarray]:
    """``(idx in the device layout, mask (folds, batches * eval batch))`` of held-out sets."""
    bs = int(self.config.train.eval_batch_size)
    n = self.eval_batches_max
    idx = np.zeros((layout.folds, n, layout.split, bs // layout.split), np.int32)
    mask = np.zeros((layout.folds, n * bs), np.float32)
    for f, indices in enumerate(test_sets):
      for b, batch in enumerate(input_pipeline.epoch_batches(indices, bs, layout.split, 0, False,
                                                             shuffle=False)):
        idx[f, b] = batch.idx
        mask[f, b * bs:(b + 1) * bs] = batch.mask.reshape(-1)
    return layout.to_device(idx), mask

  def evaluate_folds(self, p_eval, layout, params, frozen, eval_idx, eval_mask) -> List[np.ndarray]:
    """Held-out logits of every fold slot (real clips only), from the motion cache while it
    exists (its unflipped entries: the clips' own inputs), else computed from the clips."""
    data = self.data_on_device if self._motion_cache_arrays is None else self.train_inputs()
    logits = np.asarray(jax.device_get(p_eval(params, frozen, data, eval_idx)))
    logits = layout.from_device(logits)  # (folds, batches, eval batch, classes)
    logits = logits.reshape(layout.folds, -1, logits.shape[-1])
    return [logits[f][eval_mask[f] > 0] for f in range(layout.folds)]

  def predict(self, params: Any, indices: np.ndarray) -> np.ndarray:
    """Logits of the clips at ``indices`` under the full parameter tree ``params`` (one fold).

    Only the trainable leaves of ``params`` are put on the devices; the frozen backbone already
    there (:meth:`init`) is used when ``params`` holds those very leaves (a state restored into
    :meth:`fresh_state` of the current seed), else ``params``' own frozen leaves are.
    """
    layout = train_lib.FoldLayout(self.num_devices, 1)
    if self.layout == layout and self.p_eval is not None:
      p_eval = self.p_eval
    else:
      if self._single_eval is None:
        _, self._single_eval = train_lib.make_steps(
            self.model, self.tx_trainable, layout, self.devices,
            geometric_augmentation=self.geometric, epoch_loop=self.epoch_loop)
      p_eval = self._single_eval
    trainable, frozen = partition.split_params(params, self.strategy)
    stacked = traverse_util.unflatten_dict(
        {k: np.asarray(jax.device_get(v))[None] for k, v in trainable.items()}, sep='/')
    if set(frozen) == set(self.frozen) and all(v is self.frozen[k] for k, v in frozen.items()):
      frozen_on_device = self.frozen_on_device
    else:
      frozen_on_device = train_lib.replicate(
          mpt_lib.frozen_for_compute(frozen, self.model.dtype), self.devices)
    idx, mask = self.eval_arrays([indices], layout)
    return self.evaluate_folds(p_eval, layout, layout.state_to_device(stacked, self.devices),
                               frozen_on_device, idx, mask)[0]


def _softmax(x: np.ndarray) -> np.ndarray:
  e = np.exp(x - x.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


class _Fold:
  """One fold of a training group: its data, records, checkpoint and epochs."""

  def __init__(self, exp: Experiment, seed: int, index: int, workdir: str, writer):
    self.index, self.subject, self.seed = index, exp.subjects[index], seed
    self.fdir = fold_dir(workdir, seed, self.subject)
    wd.makedirs(self.fdir)
    self.train_idx, self.test_idx = input_pipeline.split_for_subject(exp.data, self.subject)
    self.ckpt_dir = wd.checkpoint_dir(workdir, seed, self.subject)
    self.ckpt = train_lib.FoldCheckpointer(self.ckpt_dir)
    self.history_path = os.path.join(self.fdir, 'history.json')
    self.history: Dict[str, List[Any]] = {'epoch': [], 'train_loss': [], 'train_accuracy': [],
                                          'test_accuracy': [], 'test_predictions': [],
                                          'learning_rate': []}
    self.writer = writer
    self.logits = None  # held-out logits of the final state, once computed
    self.result = None
    self.state, self.epoch = self._restore(exp)
    self.step = int(self.state.step)

  def _restore(self, exp: Experiment) -> Tuple[train_lib.TrainState, int]:
    state = exp.fresh_fold_state()
    if self.ckpt.latest_epoch() is None:
      return state, 0
    try:
      start_epoch, state = self.ckpt.restore(state, exp.strategy)
    except train_lib.CheckpointDamagedError as e:
      # Only the latest checkpoint is kept, so there is no earlier one to fall back to: keep the
      # damaged one aside (never delete data) and retrain this fold from the start.
      self.ckpt.close()
      aside = f'{self.ckpt_dir}.damaged.{int(time.time())}'
      os.replace(self.ckpt_dir, aside)
      logging.warning('Fold %s (seed %d): %s; moved it to %s and retraining the fold from the '
                      'start', self.subject, self.seed, e, aside)
      self.ckpt = train_lib.FoldCheckpointer(self.ckpt_dir)
      return exp.fresh_fold_state(), 0
    if start_epoch and os.path.exists(self.history_path):
      history = wd.read_json(self.history_path)
      keep = [i for i, e in enumerate(history['epoch']) if e <= start_epoch]
      self.history = {k: [v[i] for i in keep] for k, v in history.items()}
    if start_epoch:
      logging.info('Fold %s: resuming after epoch %d', self.subject, start_epoch)
    return state, int(start_epoch)

  def finish(self, exp: Experiment, workdir: str) -> Dict[str, Any]:
    """Writes ``result.json`` (the final state's held-out predictions) and closes the fold."""
    self.writer.flush()
    self.writer.close()
    self.ckpt.close()
    num_epochs = int(exp.config.train.num_epochs)
    test_idx, logits, history = self.test_idx, self.logits, self.history
    self.result = {
        'subject': self.subject, 'seed': self.seed, 'fold': self.index, 'n': int(len(test_idx)),
        'clips': exp.data.names[test_idx].tolist(),
        'labels': exp.data.labels[test_idx].tolist(),
        'predictions': logits.argmax(-1).tolist(),
        'probabilities': np.round(_softmax(logits), 6).tolist(),
        'epochs': num_epochs, 'history': {k: history[k] for k in
                                          ('epoch', 'train_loss', 'train_accuracy',
                                           'test_accuracy', 'learning_rate')},
        'per_epoch_predictions': history['test_predictions'],
    }
    wd.write_json(wd.result_path(workdir, self.seed, self.subject), self.result)
    return self.result


def epoch_arrays(config: ml_collections.ConfigDict, layout: train_lib.FoldLayout, steps: int,
                 plans: Sequence[Optional[Tuple[np.ndarray, int]]]
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """One epoch's inputs of the train program for the fold slots, on the host.

  Args:
    config: the run config (batch size, flip, rotation and crop).
    layout: the fold slots.
    steps: steps of the epoch program (the largest fold's).
    plans: per slot, ``(training clip indices, epoch seed)``, or None for a slot that trains no
      step this epoch (a finished or dummy fold: every step masked).

  Returns:
    ``(idx, aug, mask)``, ``(folds, steps, split, per_device)`` (``aug`` with a trailing 5), as
    :func:`mpt_jax.input_pipeline.epoch_batches` gives them; masked places have index 0 and no
    augmentation.
  """
  bs, split = int(config.train.batch_size), layout.split
  shape = (layout.folds, steps, split, bs // split)
  idx, mask = np.zeros(shape, np.int32), np.zeros(shape, np.float32)
  aug = np.tile(np.array([0, 0, 1, 0, 0], np.float32), shape + (1,))  # identity
  for j, plan in enumerate(plans):
    if plan is None:
      continue
    train_idx, epoch_seed = plan
    for k, batch in enumerate(input_pipeline.epoch_batches(
        train_idx, bs, split, epoch_seed, bool(config.data.hflip),
        max_rotation_deg=float(config.data.max_rotation_deg),
        min_crop_scale=float(config.data.min_crop_scale))):
      idx[j, k], aug[j, k], mask[j, k] = batch.idx, batch.aug, batch.mask
  return idx, aug, mask


def train_group(exp: Experiment, seed: int, fold_indices: Sequence[int], workdir: str,
                make_writer: Callable[[int], Any],
                on_epoch: Optional[Callable[[int, Dict[str, float]], None]] = None,
                on_fold_done: Optional[Callable[[int, Dict[str, Any]], None]] = None
                ) -> Dict[int, Dict[str, Any]]:
  """Trains (or resumes) the folds ``fold_indices`` of ``seed`` together; returns their results.

  At most ``exp.layout.folds`` folds; the free slots are dummy folds that never update. Each fold
  resumes from its own checkpoint (folds may be at different epochs) and runs its own epochs: in
  call ``k`` of the epoch program, fold ``f`` trains its epoch ``start_f + 1 + k``; a fold whose
  epochs are done is inactive.

  Args:
    exp: the experiment, initialised for ``seed``.
    seed: the run seed.
    fold_indices: indices into ``exp.subjects``.
    workdir: the run directory.
    make_writer: fold index -> metric writer (TensorBoard scalars of the fold).
    on_epoch: called with (fold index, scalars) after each fold epoch.
    on_fold_done: called with (fold index, result) when a fold finished.
  """
  config, layout = exp.config, exp.layout
  if not 0 < len(fold_indices) <= layout.folds:
    raise ValueError(f'{len(fold_indices)} folds for {layout.folds} fold slots')
  num_epochs = int(config.train.num_epochs)
  every = max(1, int(config.train.eval_every_epochs))
  ck_every = max(1, int(config.train.checkpoint_every_epochs))
  ck_interval = float(config.train.get('checkpoint_min_interval_s', 0.0))
  folds = []
  try:
    for i in fold_indices:
      folds.append(_Fold(exp, seed, i, workdir, make_writer(i)))
  except BaseException:
    for f in folds:
      f.ckpt.close()
    raise
  slots = folds + [None] * (layout.folds - len(folds))
  fresh = exp.fresh_fold_state()
  host = train_lib.stack_states([f.state if f else fresh for f in slots])
  for f in folds:
    f.state = None  # the stacked state holds it now
  state = layout.state_to_device(host, exp.devices)
  eval_idx, eval_mask = exp.eval_arrays([f.test_idx if f else np.zeros(0, np.int64)
                                         for f in slots], layout)
  results = {}
  # A fold whose last epoch was saved before its result (a crash in between) predicts now.
  if any(f.epoch >= num_epochs for f in folds):
    logits = exp.evaluate_folds(exp.p_eval, layout, state.params, exp.frozen_on_device,
                                eval_idx, eval_mask)
    for j, f in enumerate(slots):
      if f is not None and f.epoch >= num_epochs:
        f.logits = logits[j]
        results[f.index] = f.finish(exp, workdir)
        if on_fold_done:
          on_fold_done(f.index, results[f.index])
  last_save = _clock()  # the group's last checkpoint save (or its start)
  try:
    while any(f is not None and f.epoch < num_epochs for f in slots):
      active = [j for j, f in enumerate(slots) if f is not None and f.epoch < num_epochs]
      idx, aug, mask = epoch_arrays(
          config, layout, exp.steps_per_epoch_max,
          [(slots[j].train_idx, input_pipeline.fold_seed(seed, slots[j].index, slots[j].epoch + 1))
           if j in active else None for j in range(layout.folds)])
      state, m = exp.p_train(state, exp.frozen_on_device, exp.train_inputs(),
                             layout.to_device(idx), layout.to_device(aug), layout.to_device(mask))
      m = {k: layout.metrics_from_device(np.asarray(v)) for k, v in jax.device_get(m).items()}
      for f in slots:
        if f is not None and f.epoch < num_epochs:
          f.epoch += 1
      evaluate = [j for j in active if slots[j].epoch % every == 0
                  or slots[j].epoch == num_epochs]
      logits = (exp.evaluate_folds(exp.p_eval, layout, state.params, exp.frozen_on_device,
                                   eval_idx, eval_mask) if evaluate else None)
      due = _clock() - last_save >= ck_interval
      save = [j for j in active if (due and slots[j].epoch % ck_every == 0)
              or slots[j].epoch == num_epochs]
      host = layout.state_from_device(state) if save else None
      # Every fold's epoch is checked before anything of the epoch is written.
      epoch_metrics = {}
      for j in active:
        f = slots[j]
        w = m['count'][j].astype(np.float64)
        real = w > 0
        train_loss = float(np.dot(m['loss'][j], w) / w.sum())
        train_acc = float(np.dot(m['accuracy'][j], w) / w.sum())
        if not np.all(np.isfinite(np.asarray(m['loss'][j][real], np.float64))):
          raise RunError(f'seed {seed} fold {f.index + 1}/{len(exp.subjects)} ({f.subject}), '
                         f'epoch {f.epoch}: the training loss became {train_loss} (not finite); '
                         'nothing of this epoch is saved and the fold has no result. Lower '
                         '--config.train.learning_rate or check the pretrained weights')
        epoch_metrics[j] = (train_loss, train_acc, int(real.sum()))
      for j in active:
        f = slots[j]
        train_loss, train_acc, real_steps = epoch_metrics[j]
        f.step += real_steps
        lr = float(exp.schedule(f.step))
        h = f.history
        h['epoch'].append(f.epoch)
        h['train_loss'].append(train_loss)
        h['train_accuracy'].append(train_acc)
        h['learning_rate'].append(lr)
        if j in evaluate:
          f.logits = logits[j]
          preds = f.logits.argmax(-1)
          h['test_accuracy'].append(float((preds == exp.data.labels[f.test_idx]).mean()))
          h['test_predictions'].append(preds.tolist())
        else:
          h['test_accuracy'].append(None)
          h['test_predictions'].append(None)
        scalars = {'train_loss': train_loss, 'train_accuracy': train_acc, 'learning_rate': lr}
        if h['test_accuracy'][-1] is not None:
          scalars['test_accuracy'] = h['test_accuracy'][-1]
        f.writer.write_scalars(f.epoch, scalars)
        if on_epoch:
          on_epoch(f.index, scalars)
        if j in save:
          wd.write_json(f.history_path, h)
          f.ckpt.save(f.epoch, train_lib.fold_slice(host, j), exp.strategy)
        logging.info('seed %d fold %d/%d (%s) epoch %d/%d: loss %.4f acc %.3f test acc %s', seed,
                     f.index + 1, len(exp.subjects), f.subject, f.epoch, num_epochs, train_loss,
                     train_acc, h['test_accuracy'][-1])
        if f.epoch == num_epochs:  # the last epoch always evaluates
          results[f.index] = f.finish(exp, workdir)
          if on_fold_done:
            on_fold_done(f.index, results[f.index])
      if due and save:
        last_save = _clock()
  finally:
    for f in folds:
      if f.result is None:
        f.ckpt.close()
        f.writer.close()
  return results


def oracle_predictions(results: List[Dict[str, Any]]) -> Tuple[List[int], List[int]]:
  """Per held-out subject, the predictions of its best test epoch (test-set peeking; labelled)."""
  labels, preds = [], []
  for r in results:
    best, best_acc = None, -1.0
    for p in r['per_epoch_predictions']:
      if p is None:
        continue
      acc = float(np.mean(np.asarray(p) == np.asarray(r['labels'])))
      if acc > best_acc:
        best, best_acc = p, acc
    labels.extend(r['labels'])
    preds.extend(best if best is not None else r['predictions'])
  return labels, preds


def summarise(config, classes, results_by_seed: Dict[int, List[Dict[str, Any]]]) -> Dict[str, Any]:
  """Overall metrics (concatenated folds) per seed, mean/std over seeds, per-fold records."""
  per_seed = {}
  for seed, results in results_by_seed.items():
    labels = [l for r in results for l in r['labels']]
    preds = [p for r in results for p in r['predictions']]
    entry = {'last_epoch': metrics_lib.compute(labels, preds, classes)}
    # Composite protocols (MEGC2019) also report each source dataset on its part of the
    # concatenated predictions.
    sources = [c.split('/', 1)[0] for r in results for c in r.get('clips', [])]
    if len(sources) == len(labels) and len(set(sources)) > 1:
      entry['last_epoch_per_dataset'] = {
          ds: metrics_lib.compute([l for l, s in zip(labels, sources) if s == ds],
                                  [p for p, s in zip(preds, sources) if s == ds], classes)
          for ds in sorted(set(sources))}
    if config.train.oracle_best_epoch:
      ol, op = oracle_predictions(results)
      entry['oracle_best_epoch'] = metrics_lib.compute(ol, op, classes)
      entry['oracle_best_epoch']['note'] = ('ORACLE: best epoch chosen per held-out subject on its '
                                            'own test accuracy (test-set peeking)')
    entry['folds'] = [{k: r[k] for k in ('subject', 'n', 'labels', 'predictions')} |
                      {'accuracy': float(np.mean(np.asarray(r['labels']) ==
                                                 np.asarray(r['predictions'])))}
                      for r in results]
    per_seed[str(seed)] = entry
  summary = {'dataset': config.data.name, 'classes': list(classes),
             'selection': 'last epoch', 'seeds': per_seed}
  keys = ('accuracy', 'uf1', 'uar', 'wf1')
  for mode in ('last_epoch', 'oracle_best_epoch'):
    vals = [e[mode] for e in per_seed.values() if mode in e]
    if vals:
      summary[f'{mode}_over_seeds'] = {k: metrics_lib.mean_std([v[k] for v in vals]) for k in keys}
  per_ds = [e['last_epoch_per_dataset'] for e in per_seed.values()
            if 'last_epoch_per_dataset' in e]
  if per_ds:
    summary['last_epoch_per_dataset_over_seeds'] = {
        ds: {k: metrics_lib.mean_std([p[ds][k] for p in per_ds]) for k in keys}
        for ds in per_ds[0]}
  return summary


def _motion_example(exp: Experiment, workdir: str, seed: int, subject: str):
  """Inputs of the report's motion figure: the first fold's final model on 3 of its clips."""
  try:
    state = wd.restore_fold(workdir, seed, subject, exp.fresh_state(), exp.strategy)
  except train_lib.CheckpointDamagedError as e:  # figures must never fail a finished run
    logging.warning('No motion figure: %s', e)
    return None
  _, test_idx = input_pipeline.split_for_subject(exp.data, subject)
  idx = test_idx[:3]
  return {'model': exp.model, 'params': state.params, 'clips': exp.data.clips[idx],
          'apex': exp.data.apex[idx], 'names': exp.data.names[idx].tolist()}


def preflight(config: ml_collections.ConfigDict, workdir: str) -> str:
  """The checks of a training run that need no data (fast); returns the resolved workdir."""
  workdir = wd.resolve(workdir)
  wd.check_usable(workdir)
  model = validate_config(config)
  wd.compare_config(config, workdir)
  pretrained.check_backbone_source(config.model)
  if config.model.pretrained_path:  # read and check the file now, before the data loads
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            jax.ShapeDtypeStruct((1,) + mpt_lib.input_shape(config.model),
                                                 jax.numpy.float32))['params']
    pretrained.load_backbone(config.model.pretrained_path, shapes, model.num_heads)
  return workdir


def run_in_sweep(config: ml_collections.ConfigDict, workdir: str, data_cache: Dict[str, Any],
                 label: str) -> Optional[float]:
  """One run of a sweep (a table's row, a study's variant and seed) in its own ``workdir``.

  A finished run (``results.json``) is skipped, an unfinished one resumes, a changed config is
  refused naming the keys. Runs with the same data settings share the clips loaded once
  (``data_cache``). Returns the seconds this call trained, or None when the run was finished.
  """
  os.makedirs(workdir, exist_ok=True)
  wd.compare_config(config, workdir)
  if os.path.exists(os.path.join(workdir, 'results.json')):
    logging.info('%s: finished, skipped', label)
    return None
  logging.info('%s: LOSO in %s', label, workdir)
  key = repr((config.data.to_json(), int(config.model.num_frames), int(config.model.image_size)))
  if key not in data_cache:
    data_cache[key] = input_pipeline.load(config)
  t0 = time.time()
  train_and_evaluate(config, workdir, data=data_cache[key])
  return time.time() - t0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       data: Optional[input_pipeline.ClipSet] = None,
                       preflight_done: bool = False) -> Dict[str, Any]:
  """Runs (or resumes) the whole LOSO experiment and writes results, report and figures.

  Args:
    config: the run's config.
    workdir: the run directory (created if needed).
    data: the protocol in memory (default: loaded from the config).
    preflight_done: the caller already ran :func:`preflight` on this config and workdir (as
      ``main.py`` does before importing TensorFlow), so it is not run twice.

  Raises:
    errors.UserError: for anything the user can fix; then nothing in ``workdir`` has changed
      (unless training itself fails, e.g. a non-finite loss, which names the fold and epoch).
  """
  # 1. Checks that read only: workdir, config values, config vs workdir, data, model, init.
  workdir = wd.resolve(workdir) if preflight_done else preflight(config, workdir)
  info = wd.read_run_info(workdir, required=False)
  data = data if data is not None else input_pipeline.load(config)
  exp = Experiment(config, data)
  protocol = wd.protocol_record(data.names, data.subjects, data.labels, data.classes)
  wd.check_protocol(info, protocol, workdir)
  first_seed = int(config.seed)
  exp.init(first_seed)
  wd.check_init_fingerprint(info, first_seed, exp.init_fingerprint, workdir)
  # 2. Writes, under the workdir's lock.
  lock = wd.Lock(workdir) if jax.process_index() == 0 else None
  if lock is not None:
    lock.acquire()
  try:
    return _run(config, workdir, data, exp, protocol)
  finally:
    if lock is not None:
      lock.release()


def _barrier(name: str) -> None:
  """Waits for every process of a multi-host run (no-op with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)


def _run(config, workdir, data, exp, protocol) -> Dict[str, Any]:
  """The LOSO loop of :func:`train_and_evaluate`, once every check passed and the lock is held.

  Multi-host: process ``p`` trains the folds ``i % process_count == p`` and writes only their
  records; process 0 alone writes the shared files (``config.json``, ``run_info.json``,
  ``results.json``, the report), the latter once every process has finished its folds.
  """
  main_process = jax.process_index() == 0
  if main_process:
    wd.save_config(config, workdir)
  logging.info('LOSO over %d subjects, %d clips, %d device(s) (%s), %d fold(s) per step, motion '
               'cache %s', len(exp.subjects), len(data), exp.num_devices,
               jax.devices()[0].platform, exp.layout.folds, 'on' if exp.motion_cache else 'off')
  results_by_seed = {}
  t_run = time.time()
  num_subjects = len(exp.subjects)
  num_epochs = int(config.train.num_epochs)
  total_folds = int(config.num_seeds) * num_subjects
  progress = console.Progress(total_folds, num_epochs, int(config.num_seeds), show=main_process)
  position = [0]  # epochs of the run done (finished folds and resumed epochs included)
  folds_done_now = [0]
  for s in range(int(config.num_seeds)):
    seed = int(config.seed) + s
    if exp.seed != seed:
      exp.init(seed)
    info = wd.read_run_info(workdir, required=False)
    wd.check_init_fingerprint(info, seed, exp.init_fingerprint, workdir)
    if main_process:
      info.setdefault('init_fingerprint', {})[str(seed)] = exp.init_fingerprint
      info.pop('backbone_fingerprint', None)  # older runs: frozen leaves only
      info.update({'devices': [str(d) for d in exp.devices], 'jax': jax.__version__,
                   'processes': jax.process_count(), 'folds_per_step': exp.layout.folds,
                   'motion_cache': exp.motion_cache, 'model_dtype': exp.model.dtype,
                   'attention': exp.model.attention,
                   'python': platform.python_version(), 'subjects': exp.subjects,
                   'num_clips': len(data), 'classes': list(data.classes), 'protocol': protocol,
                   'trainable_params': partition.count_trainable(
                       partition.merge_params(exp.trainable0, exp.frozen), exp.strategy),
                   'provenance': wd.provenance(config, info.get('provenance'))})
      wd.write_json(wd.run_info_path(workdir), info)
    logging.info('Seed %d: parameters by part %s, trainable parts %s', seed,
                 partition.count_by_part(partition.merge_params(exp.trainable0, exp.frozen)),
                 partition.trainable_parts(exp.strategy))
    pending = [i for i in exp.my_folds()
               if not os.path.exists(wd.result_path(workdir, seed, exp.subjects[i]))]
    position[0] += num_epochs * (num_subjects - len(pending))
    groups = [pending[k:k + exp.layout.folds] for k in range(0, len(pending), exp.layout.folds)]
    for group in groups:
      t_group = time.time()
      label = exp.subjects[group[0]] + (f'..{exp.subjects[group[-1]]}' if len(group) > 1 else '')

      def make_writer(i, seed=seed):
        # Each process writes the TensorBoard scalars of the folds it trains.
        return console.metric_writer(fold_dir(workdir, seed, exp.subjects[i]))

      def on_epoch(i, scalars, label=label):
        del i
        position[0] += 1
        progress.epoch(position[0] // num_epochs, position[0] % num_epochs, scalars, label)

      def on_fold_done(i, result, s=s, t_group=t_group):
        folds_done_now[0] += 1
        progress.fold_done(s * num_subjects + i, result, time.time() - t_group)
        logging.info('Fold %s done in %.0fs (accuracy %.3f); %d folds done by this process in '
                     '%.0fs', result['subject'], time.time() - t_group,
                     float(np.mean(np.asarray(result['labels']) ==
                                   np.asarray(result['predictions']))),
                     folds_done_now[0], time.time() - t_run)

      train_group(exp, seed, group, workdir, make_writer, on_epoch, on_fold_done)
    results_by_seed[seed] = None
  exp.release_motion_cache()
  progress.close()
  # Every process has written the result.json of its folds; then the shared records.
  _barrier('mpt_jax: every fold trained')
  for seed in results_by_seed:
    results_by_seed[seed] = [wd.read_json(wd.result_path(workdir, seed, subject))
                             for subject in exp.subjects]
  summary = summarise(config, data.classes, results_by_seed)
  if not main_process:
    return summary
  wd.write_json(os.path.join(workdir, 'results.json'), summary)
  run_writer = console.metric_writer(workdir)
  for seed, entry in summary['seeds'].items():
    for i, f in enumerate(entry['folds']):
      run_writer.write_scalars(i, {f'seed_{seed}/fold_accuracy': f['accuracy']})
  last = summary['last_epoch_over_seeds']
  run_writer.write_scalars(0, {f'final/{k}': v['mean'] for k, v in last.items()})
  run_writer.close()
  first_seed = sorted(results_by_seed)[0]
  if exp.seed != first_seed:
    exp.init(first_seed)
  motion = _motion_example(exp, workdir, first_seed, results_by_seed[first_seed][0]['subject'])
  report_lib.write_report(config, workdir, summary, results_by_seed, motion,
                          wd.read_run_info(workdir, required=False))
  return summary
