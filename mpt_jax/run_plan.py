"""A run's plan: the validated config, the devices, the fold layout and the step counts.

:func:`make_plan` checks everything about a config and a protocol that needs neither parameters
nor the workdir, and fixes what a LOSO run does with them (:class:`RunPlan`, immutable): which
local devices train, which folds this process trains, how many fold slots one program call holds
(:func:`resolve_folds_per_step`), where the loop over an epoch's steps runs
(:func:`resolve_epoch_loop`), whether the train step reads the motion cache
(:func:`resolve_motion_cache`), and the steps and held-out batches of the largest fold (the
shapes the programs compile for, once per run).
"""

import dataclasses
import math
import os
from typing import Any, Optional, Sequence, Tuple

import jax
import ml_collections
from absl import logging

from mpt_jax import errors
from mpt_jax import input_pipeline
from mpt_jax import partition
from mpt_jax import train as train_lib
from mpt_jax import workdir as wd
from mpt_jax.models import mpt as mpt_lib
from mpt_jax.models import vit

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


def _check_choice(key: str, value: Any, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ConfigError(f'config.{key} is {value!r}; it must be one of {", ".join(choices)}')


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
    _check_choice(key, _get(config, key), choices)
  if config.model.training_strategy == 'scratch' and config.model.pretrained_path:
    raise ConfigError(f'training_strategy scratch trains from a random init and would ignore '
                      f'config.model.pretrained_path ({config.model.pretrained_path}); unset it '
                      "(--config.model.pretrained_path='') or choose another strategy")
  cache = config.train.get('motion_cache', 'auto')
  _check_choice('train.motion_cache', cache, MOTION_CACHE_CHOICES)
  if cache == 'on' and geometric_augmentation(config):
    raise ConfigError("config.train.motion_cache is 'on' but geometric augmentation is on "
                      f'(config.data.max_rotation_deg {config.data.max_rotation_deg}, '
                      f'config.data.min_crop_scale {config.data.min_crop_scale}), which changes '
                      "the motion per draw; set config.train.motion_cache to 'auto' or 'off'")
  _check_choice('train.epoch_loop', config.train.get('epoch_loop', 'auto'), EPOCH_LOOP_CHOICES)
  if num_classes is None:
    num_classes = int(config.data.get('num_classes', 2) or 2)
  try:
    return mpt_lib.build_model(config.model, num_classes)
  except errors.UserError:
    raise
  except (ValueError, KeyError) as e:
    raise ConfigError(f'config.model is not a valid model: {e}') from e


def _vit_dims(model_config) -> Tuple[int, int, int, int, int]:
  """(hidden size, MLP size, heads, blocks, patch size) of the configured backbone."""
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


@dataclasses.dataclass(frozen=True)
class RunPlan:
  """What a LOSO run does with a config and a protocol, fixed before any parameter exists.

  Attributes:
    config: the validated config (``train.batch_size`` possibly fitted to the data, see
      :func:`make_plan`; the caller's config is never changed).
    model: the model of ``config.model`` for the protocol's classes.
    devices: the local devices that train (``config.train.num_devices`` of them, or all).
    subjects: the protocol's subjects; fold ``i`` holds out ``subjects[i]``.
    my_folds: indices into ``subjects`` of the folds this process trains (multi-host: fold ``i``
      goes to process ``i % process_count``).
    layout: the fold slots of one program call on ``devices``.
    steps_per_epoch: training steps of the largest fold's epoch (every fold's program shape).
    eval_batches: held-out batches of the largest held-out subject.
    motion_cache: whether the train step reads the motion cache.
    epoch_loop: where the loop over an epoch's steps runs (``'device'`` or ``'host'``).
  """
  config: ml_collections.ConfigDict
  model: mpt_lib.MPT
  devices: Tuple[jax.Device, ...]
  subjects: Tuple[str, ...]
  my_folds: Tuple[int, ...]
  layout: train_lib.FoldLayout
  steps_per_epoch: int
  eval_batches: int
  motion_cache: bool
  epoch_loop: str

  @property
  def strategy(self) -> str:
    """Which parameters train (``config.model.training_strategy``)."""
    return self.config.model.training_strategy

  @property
  def geometric(self) -> bool:
    """Whether the augmentation draws rotations or crops."""
    return geometric_augmentation(self.config)


def make_plan(config: ml_collections.ConfigDict, data: input_pipeline.ClipSet) -> RunPlan:
  """The plan of a LOSO run of ``config`` on ``data``.

  With ``config.train.fit_batch_to_data`` a batch larger than the smallest training fold is
  lowered to fit (on a copy of the config).

  Raises:
    ConfigError: a config value that cannot work.
    RunError: the config does not fit the data or the devices.
  """
  devices = jax.local_devices()
  if int(config.train.get('num_devices', 0)) > 0:
    if int(config.train.num_devices) > len(devices):
      raise RunError(f'train.num_devices is {config.train.num_devices} but only '
                     f'{len(devices)} local device(s) exist')
    devices = devices[:int(config.train.num_devices)]
  model = validate_config(config, len(data.classes))
  subjects = tuple(data.subject_list)
  if len(subjects) < 2:
    raise RunError(f'LOSO needs at least 2 subjects; the data has {list(subjects)}')
  # Multi-host (jax.distributed): each process trains its own folds on its own devices; the
  # programs have no cross-process collective.
  count, index = jax.process_count(), jax.process_index()
  my_folds = tuple(i for i in range(len(subjects)) if i % count == index)
  layout = train_lib.FoldLayout(
      len(devices), resolve_folds_per_step(config, max(1, len(my_folds)), devices))
  bs = int(config.train.batch_size)
  split = layout.split
  if bs % split or int(config.train.eval_batch_size) % split:
    raise RunError(f'train.batch_size ({bs}) and train.eval_batch_size '
                   f'({config.train.eval_batch_size}) must be multiples of the {split} devices '
                   'that share a fold (train.folds_per_step=1); or train several folds at once '
                   '(train.folds_per_step=0)')
  smallest = min(int((data.subjects != s).sum()) for s in subjects)
  if bs > smallest >= split and config.train.get('fit_batch_to_data', False):
    bs = smallest // split * split
    logging.warning('train.batch_size lowered from %s to %d: the smallest training fold has %d '
                    'clips (train.fit_batch_to_data)', config.train.batch_size, bs, smallest)
    config = config.copy_and_resolve_references()
    with config.unlocked():
      config.train.batch_size = bs
  if bs > smallest:
    raise RunError(f'train.batch_size {bs} is larger than the smallest training fold '
                   f'({smallest} clips); lower --config.train.batch_size')
  largest = max(int((data.subjects != s).sum()) for s in subjects)
  most_test = max(int((data.subjects == s).sum()) for s in subjects)
  return RunPlan(
      config=config, model=model, devices=tuple(devices), subjects=subjects, my_folds=my_folds,
      layout=layout, steps_per_epoch=input_pipeline.steps_per_epoch(largest, bs),
      eval_batches=input_pipeline.steps_per_epoch(most_test, int(config.train.eval_batch_size)),
      motion_cache=resolve_motion_cache(config, model, len(data), layout.folds, devices),
      epoch_loop=resolve_epoch_loop(config, devices))
