"""Training state, the data-parallel train and eval steps, and per-fold Orbax checkpoints.

One code path for 1 or N devices: the steps are ``jax.pmap``-ed over the local devices with the
state and the in-memory dataset replicated (``in_axes=None``) and the batch indices split across
devices. Losses are summed per device and divided by the global count of real (unmasked) samples,
and only the trainable gradients are all-reduced, so N devices give the same update as one device
with the same global batch. Frozen leaves get zero updates through ``optax.multi_transform`` and
their weight gradients are dead code that XLA removes.

Checkpoints hold only what trains: the trainable parameters, the optimizer state and the step. The
frozen backbone comes from the pretrained file (or the seed, for a from-scratch backbone) and is
checked by a fingerprint on restore.
"""

import os
from typing import Any, Dict, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util

from mpt_jax import augment
from mpt_jax import errors
from mpt_jax import partition

AXIS = 'batch'


@flax.struct.dataclass
class TrainState:
  """Step counter, full parameter tree (frozen leaves included, shared) and optimizer state."""
  step: jax.Array
  params: Any
  opt_state: Any


def create_state(trainable: Dict[str, Any], frozen: Dict[str, Any],
                 tx: optax.GradientTransformation) -> TrainState:
  """A fresh state from flat trainable leaves and the shared frozen leaves."""
  params = partition.merge_params(trainable, frozen)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def make_steps(model, tx: optax.GradientTransformation, labels_tree: Any, devices=None,
               eval_devices=None, geometric_augmentation: bool = False):
  """Returns pmapped ``(train_step, eval_step)``.

  ``train_step(state, data, idx, aug, mask) -> (state, metrics)`` and
  ``eval_step(params, data, idx) -> logits (devices, per_device, classes)``.

  Args:
    model: the MPT module.
    tx: the partitioned optimizer.
    labels_tree: ``trainable``/``frozen`` labels of the parameters.
    devices: devices of the training pmap (None: every device of every process).
    eval_devices: devices of the evaluation pmap. Evaluation needs no collectives, so in a
      multi-host run each process evaluates on its own local devices.
    geometric_augmentation: compile the rotation/crop warp into the step.
  """

  def gather(data, idx):
    clips = data['clips'][idx].astype(jnp.float32)
    return clips, data['labels'][idx], data['apex'][idx]

  def train_step(state, data, idx, aug, mask):
    clips, labels, apex = gather(data, idx)
    clips = augment.apply(clips, aug, geometric_augmentation)
    count = jax.lax.psum(mask.sum(), AXIS)
    denom = jnp.maximum(count, 1.0)

    def loss_fn(params):
      logits = model.apply({'params': params}, clips, apex)
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return (ce * mask).sum() / denom, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = jax.tree.map(lambda g, l: jax.lax.psum(g, AXIS) if l == partition.TRAINABLE else g,
                         grads, labels_tree)
    correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
    metrics = {'loss': jax.lax.psum(loss, AXIS),
               'accuracy': jax.lax.psum(correct, AXIS) / denom,
               'count': count}
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics

  def eval_step(params, data, idx):
    clips, _, apex = gather(data, idx)
    return model.apply({'params': params}, clips, apex)

  p_train = jax.pmap(train_step, AXIS, in_axes=(None, None, 0, 0, 0), out_axes=(None, None),
                     devices=devices)
  if eval_devices is not None and jax.process_count() > 1:
    # No cross-process pmap for evaluation: a per-process jit of the same step, vmapped.
    p_eval = jax.jit(jax.vmap(eval_step, in_axes=(None, None, 0)))
  else:
    p_eval = jax.pmap(eval_step, AXIS, in_axes=(None, None, 0), out_axes=0, devices=devices)
  return p_train, p_eval


# --------------------------------------------------------------------------------- checkpoints
class CheckpointDamagedError(errors.UserError):
  """A fold checkpoint that is missing or cannot be restored (the message names it)."""


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'


class FoldCheckpointer:
  """Orbax ``CheckpointManager`` for one fold; keeps the latest epoch only.

  Orbax writes into a temporary folder and renames it when the save is complete, so a process
  killed during a save leaves no half checkpoint behind: the previous one is restored instead, and
  the leftover temporary folder is removed when the manager is opened again. With ``read_only``
  (evaluation, prediction) nothing is created or cleaned up, and a missing folder is an error.
  """

  def __init__(self, directory: str, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    if read_only and not os.path.isdir(self.directory):
      raise CheckpointDamagedError(f'checkpoint folder {self.directory} is missing')
    try:
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=1, create=not read_only,
                                               cleanup_tmp_directories=not read_only,
                                               read_only=read_only,
                                               enable_async_checkpointing=False))
    except OSError as e:
      raise CheckpointDamagedError(f'cannot open checkpoint folder {self.directory} '
                                   f'({_one_line(e)})') from e

  def latest_epoch(self):
    return self.manager.latest_step()

  def save(self, epoch: int, state: TrainState, strategy: str) -> None:
    trainable, _ = partition.split_params(state.params, strategy)
    item = {'trainable': traverse_util.unflatten_dict(jax.device_get(trainable), sep='/'),
            'opt_state': list(jax.device_get(jax.tree.leaves(state.opt_state))),
            'step': np.asarray(jax.device_get(state.step))}
    self.manager.save(epoch, args=ocp.args.StandardSave(item))
    self.manager.wait_until_finished()

  def restore(self, template: TrainState, strategy: str, epoch=None) -> Tuple[int, TrainState]:
    """Restores into the structure of ``template`` (a fresh state of the same config)."""
    epoch = self.latest_epoch() if epoch is None else epoch
    trainable, frozen = partition.split_params(template.params, strategy)
    leaves, treedef = jax.tree.flatten(template.opt_state)
    target = {'trainable': traverse_util.unflatten_dict(
                  {k: np.asarray(jax.device_get(v)) for k, v in trainable.items()}, sep='/'),
              'opt_state': [np.asarray(jax.device_get(x)) for x in leaves],
              'step': np.asarray(0, np.int32)}
    if epoch is None:
      raise CheckpointDamagedError(f'{self.directory} holds no checkpoint')
    try:
      item = self.manager.restore(epoch, args=ocp.args.StandardRestore(target))
    except Exception as e:  # Orbax/tensorstore raise many types for missing or truncated files
      raise CheckpointDamagedError(f'checkpoint {self.directory}/{epoch} is damaged '
                                   f'({_one_line(e)})') from e
    restored = traverse_util.flatten_dict(item['trainable'], sep='/')
    if set(restored) != set(trainable):
      raise CheckpointDamagedError(f'checkpoint {self.directory}/{epoch} does not match the '
                                   f'model: {sorted(set(restored) ^ set(trainable))[:5]}')
    params = partition.merge_params({k: jnp.asarray(v) for k, v in restored.items()}, frozen)
    opt_state = jax.tree.unflatten(treedef, [jnp.asarray(x) for x in item['opt_state']])
    return epoch, TrainState(step=jnp.asarray(item['step'], jnp.int32), params=params,
                             opt_state=opt_state)

  def close(self):
    self.manager.close()
