"""What the folds of a run share: the protocol on device, a seed's initial parameters, the programs.

* :class:`DeviceData`: the protocol's clips on the plan's devices and, with the motion cache, every
  clip's parameter-free model inputs (built once, on first use, for the whole run).
* :func:`init_seed` -> :class:`SeedParams`: a seed's initial parameters, the same trainable leaves
  for every fold and one set of frozen leaves on the devices, shared by all folds.
* :func:`make_programs` -> :class:`Programs`: the optimizer of the trainable leaves, its learning
  rate schedule and the fold-parallel train and evaluate programs of :mod:`mpt_jax.train`, built
  once per run (the same for every seed: they compile once).
* :func:`evaluate_folds` and :func:`predict`: held-out logits of fold slots, or of one fold's full
  parameter tree (evaluation from checkpoints).
"""

import dataclasses
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np
import optax
from absl import logging
from flax import traverse_util

from mpt_jax import errors
from mpt_jax import input_pipeline
from mpt_jax import partition
from mpt_jax import pretrained
from mpt_jax import run_plan
from mpt_jax import train as train_lib
from mpt_jax.models import mpt as mpt_lib


class DeviceData:
  """The protocol on the plan's devices, and the motion cache while it exists."""

  def __init__(self, plan: run_plan.RunPlan, data: input_pipeline.ClipSet):
    self.plan = plan
    self.data = data
    self.on_device = input_pipeline.device_arrays(data, plan.devices)
    self._cache = None  # built by the first train_inputs() with the motion cache

  def train_inputs(self) -> Dict[str, jax.Array]:
    """The ``data`` argument of the train program: the on-device protocol, plus, with the motion
    cache, every clip's parameter-free model inputs (computed by the first call, then kept until
    :meth:`release_motion_cache`: they depend on no parameter, seed or fold)."""
    if not self.plan.motion_cache:
      return self.on_device
    if self._cache is None:
      t = time.time()
      flips = run_plan.cache_flips(self.plan.config)
      self._cache = train_lib.build_motion_cache(
          self.plan.model, self.on_device, len(self.data),
          int(self.plan.config.train.eval_batch_size), flips, self.plan.devices)
      jax.block_until_ready(self._cache)
      size = sum(v.nbytes for v in self._cache.values())
      logging.info('Motion cache: %d clips x %d flip(s), %.2f GiB per device, built in %.1fs',
                   len(self.data), flips, size / 2**30, time.time() - t)
    return dict(self.on_device, motion_cache=self._cache)

  def eval_inputs(self) -> Dict[str, jax.Array]:
    """The ``data`` argument of the evaluate program: the motion cache while it exists (its
    unflipped entries are the clips' own inputs), else the clips."""
    if self._cache is None:
      return self.on_device
    return dict(self.on_device, motion_cache=self._cache)

  def release_motion_cache(self) -> None:
    """Frees the motion cache (after training; a later :meth:`train_inputs` builds it again)."""
    self._cache = None


@dataclasses.dataclass(frozen=True)
class SeedParams:
  """A seed's initial parameters.

  Attributes:
    seed: the seed.
    trainable: flat ``{'a/b': leaf}`` trainable leaves (every fold of the seed starts from them).
    frozen: flat frozen leaves (host copy, as initialised or loaded).
    frozen_on_device: ``frozen`` as the steps read them (bfloat16 models: the backbone's product
      weights cast once), replicated on the plan's devices.
    fingerprint: content hash of the whole initial tree (a changed pretrained file or init is
      refused on resume, whatever the strategy trains).
  """
  seed: int
  trainable: Dict[str, Any]
  frozen: Dict[str, Any]
  frozen_on_device: Dict[str, jax.Array]
  fingerprint: str

  @property
  def params(self) -> Any:
    """The full initial parameter tree."""
    return partition.merge_params(self.trainable, self.frozen)


def init_seed(plan: run_plan.RunPlan, seed: int) -> SeedParams:
  """Initial parameters for ``seed``: trainable init (same for every fold) and frozen leaves."""
  try:
    params = pretrained.init_params(plan.model, plan.config.model, jax.random.PRNGKey(seed))
  except errors.UserError:
    raise
  except (ValueError, TypeError) as e:  # shapes the config's model values cannot produce
    raise run_plan.ConfigError(f'config.model cannot be initialised: {e}') from e
  trainable, frozen = partition.split_params(params, plan.strategy)
  return SeedParams(
      seed=seed, trainable=trainable, frozen=frozen,
      frozen_on_device=train_lib.replicate(
          mpt_lib.frozen_for_compute(frozen, plan.model.compute.dtype), plan.devices),
      fingerprint=partition.tree_fingerprint(params))


@dataclasses.dataclass(frozen=True)
class Programs:
  """The optimizer of the trainable leaves, its schedule and the programs of one fold layout.

  Attributes:
    tx: the optimizer of the trainable tree alone (:func:`mpt_jax.train.trainable_state`).
    schedule: the learning rate by step.
    layout: the fold slots of the programs.
    train: ``train_epoch`` of :func:`mpt_jax.train.make_steps`.
    evaluate: ``evaluate`` of :func:`mpt_jax.train.make_steps`.
  """
  tx: optax.GradientTransformation
  schedule: Callable[[int], Any]
  layout: train_lib.FoldLayout
  train: Callable[..., Any]
  evaluate: Callable[..., Any]

  def fresh_fold_state(self, init: SeedParams) -> train_lib.TrainState:
    """A fresh state of the trainable leaves alone (what the training loop stacks per fold)."""
    return train_lib.trainable_state(init.trainable, self.tx)


def make_programs(plan: run_plan.RunPlan, init: SeedParams,
                  layout: Optional[train_lib.FoldLayout] = None) -> Programs:
  """The programs of ``layout`` (default: the plan's); ``init`` gives the trainable tree's
  structure (the same for every seed). The schedule's horizon uses the largest fold so that one
  compiled program serves every fold."""
  layout = layout or plan.layout
  trainable = traverse_util.unflatten_dict(dict(init.trainable), sep='/')
  tx = partition.make_optimizer(plan.config.train, trainable, plan.strategy,
                                plan.steps_per_epoch)
  train, evaluate = train_lib.make_steps(
      plan.model, tx, layout, plan.devices, geometric_augmentation=plan.geometric,
      motion_cache=plan.motion_cache, epoch_loop=plan.epoch_loop)
  return Programs(tx=tx, schedule=partition.make_schedule(plan.config.train, plan.steps_per_epoch),
                  layout=layout, train=train, evaluate=evaluate)


def eval_arrays(plan: run_plan.RunPlan, test_sets: Sequence[np.ndarray],
                layout: train_lib.FoldLayout) -> Tuple[np.ndarray, np.ndarray]:
  """``(idx in the device layout, mask (folds, batches * eval batch))`` of held-out sets."""
  bs = int(plan.config.train.eval_batch_size)
  n = plan.eval_batches
  idx = np.zeros((layout.folds, n, layout.split, bs // layout.split), np.int32)
  mask = np.zeros((layout.folds, n * bs), np.float32)
  for f, indices in enumerate(test_sets):
    for b, batch in enumerate(input_pipeline.epoch_batches(indices, bs, layout.split, 0, False,
                                                           shuffle=False)):
      idx[f, b] = batch.idx
      mask[f, b * bs:(b + 1) * bs] = batch.mask.reshape(-1)
  return layout.to_device(idx), mask


def evaluate_folds(data: DeviceData, programs: Programs, params, frozen, eval_idx,
                   eval_mask) -> List[np.ndarray]:
  """Held-out logits of every fold slot of ``programs.layout`` (real clips only), from the motion
  cache while it exists, else computed from the clips."""
  layout = programs.layout
  logits = np.asarray(jax.device_get(programs.evaluate(params, frozen, data.eval_inputs(),
                                                       eval_idx)))
  logits = layout.from_device(logits)  # (folds, batches, eval batch, classes)
  logits = logits.reshape(layout.folds, -1, logits.shape[-1])
  return [logits[f][eval_mask[f] > 0] for f in range(layout.folds)]


def one_fold_layout(plan: run_plan.RunPlan) -> train_lib.FoldLayout:
  """One fold slot, data-parallel over the plan's devices (the programs :func:`predict` needs)."""
  return train_lib.FoldLayout(len(plan.devices), 1)


def predict(data: DeviceData, programs: Programs, init: SeedParams, params: Any,
            indices: np.ndarray) -> np.ndarray:
  """Logits of the clips at ``indices`` under the full parameter tree ``params`` (one fold).

  ``programs`` hold one fold slot (:func:`one_fold_layout`). Only the trainable leaves of
  ``params`` are put on the devices; the frozen backbone already there (``init``) is used when
  ``params`` holds those very leaves (a state restored into
  :func:`mpt_jax.train.state_template` of ``init.params``), else ``params``' own frozen leaves are.
  """
  plan = data.plan
  if programs.layout.folds != 1:
    raise ValueError(f'predict needs programs of one fold slot, not {programs.layout.folds}')
  trainable, frozen = partition.split_params(params, plan.strategy)
  stacked = traverse_util.unflatten_dict(
      {k: np.asarray(jax.device_get(v))[None] for k, v in trainable.items()}, sep='/')
  if set(frozen) == set(init.frozen) and all(v is init.frozen[k] for k, v in frozen.items()):
    frozen_on_device = init.frozen_on_device
  else:
    frozen_on_device = train_lib.replicate(
        mpt_lib.frozen_for_compute(frozen, plan.model.compute.dtype), plan.devices)
  layout = programs.layout
  idx, mask = eval_arrays(plan, [indices], layout)
  return evaluate_folds(data, programs, layout.state_to_device(stacked, plan.devices),
                        frozen_on_device, idx, mask)[0]
