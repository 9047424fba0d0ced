"""Training state, the fold-parallel train and eval programs, and per-fold Orbax checkpoints.

A LOSO run trains one small model per held-out subject on one shared frozen backbone. The train
program updates ``F`` folds at once (``config.train.folds_per_step``): their trainable parameters
and optimizer states are stacked on a leading fold axis and ``jax.vmap``-ed, while the frozen
backbone is one argument passed once (``in_axes=None``), never stacked, copied per fold, donated
or returned. One call trains one epoch of every fold of the group, with the steps' clip indices,
augmentation parameters and validity masks stacked as arrays, no host synchronisation inside the
epoch, and the state donated. The loop over the epoch's steps is a ``lax.scan`` inside the program
(``epoch_loop='device'``: one dispatch per epoch) or a Python loop over a one-step program
(``'host'``: XLA:CPU runs the step several times slower inside a loop); see :func:`make_steps`.

A step of a fold whose mask is all zero (a fold with fewer steps this epoch, a fold that already
finished its epochs, a dummy fold that pads the last group) changes nothing: its new state is
discarded (``jnp.where`` on the fold's ``active`` flag), so neither its parameters nor its Adam
moments or counts move.

The program is ``jax.pmap``-ed over the local devices (:class:`FoldLayout`):

* ``F > 1``: each device trains its own ``F / D`` folds; no collective in the step;
* ``F = 1``: the one fold is data-parallel over the ``D`` devices, as before this change: the
  batch is split, losses are summed per device and divided by the global count of real samples,
  and the trainable gradients are summed (``psum``), so ``D`` devices give the update of one.

Shapes (steps per epoch of the largest fold, ``F``, batch) are fixed for the whole run, so the
program compiles once per run, whatever the seed, fold group or resumed epoch.

Checkpoints hold only what trains: the trainable parameters, the optimizer state and the step, one
checkpoint per fold (the fold's slice of the stacked state), so any fold restores alone. The frozen
backbone comes from the pretrained file (or the seed, for a from-scratch backbone) and is checked by
a fingerprint on restore.
"""

import dataclasses
import functools
import os
from typing import Any, Callable, Dict, Sequence, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from flax import traverse_util

from mpt_jax import augment
from mpt_jax import compiled_programs
from mpt_jax import errors
from mpt_jax import partition

AXIS = 'batch'
# Python-side traces of the programs, by name ('train_epoch', 'evaluate'): a trace precedes every
# compilation, so tests read here that the step compiles once per run.
TRACE_COUNTS: Dict[str, int] = {}


def _traced(name: str) -> None:
  TRACE_COUNTS[name] = TRACE_COUNTS.get(name, 0) + 1


@flax.struct.dataclass
class TrainState:
  """Step counter, parameter tree and optimizer state.

  For :func:`create_state` the tree is the full model (frozen leaves included); for
  :func:`trainable_state` (the training loop) it holds the trainable leaves alone.
  """
  step: jax.Array
  params: Any
  opt_state: Any


def create_state(trainable: Dict[str, Any], frozen: Dict[str, Any],
                 tx: optax.GradientTransformation) -> TrainState:
  """A fresh state of the full parameter tree from flat trainable and frozen leaves.

  ``tx`` is :func:`mpt_jax.partition.make_optimizer` of the full tree. Evaluation and prediction
  restore fold checkpoints into this structure.
  """
  params = partition.merge_params(trainable, frozen)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def state_template(config, params: Dict[str, Any]) -> TrainState:
  """A fresh full-tree state of a run's config (``params``: its initial tree): what
  :func:`mpt_jax.workdir.restore_fold` restores a fold's checkpoint into."""
  strategy = config.model.training_strategy
  trainable, frozen = partition.split_params(params, strategy)
  return create_state(trainable, frozen,
                      partition.make_optimizer(config.train, params, strategy, 1))


def trainable_state(trainable: Dict[str, Any], tx: optax.GradientTransformation) -> TrainState:
  """A fresh state of the trainable leaves alone (flat ``{'a/b': leaf}`` in, nested tree inside).

  ``tx`` is :func:`mpt_jax.partition.make_optimizer` of the trainable tree alone. Its state has
  the same leaves, in the same order, as the full tree's optimizer state (frozen leaves carry no
  optimizer state), so both kinds of state save and restore the same checkpoints.
  """
  params = traverse_util.unflatten_dict(dict(trainable), sep='/')
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))


def stack_states(states: Sequence[TrainState]) -> TrainState:
  """Host (numpy) state with a leading fold axis from per-fold states."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *states)


def fold_slice(stacked: TrainState, i: int) -> TrainState:
  """Fold ``i`` of a host state with a leading fold axis."""
  return jax.tree.map(lambda x: x[i], stacked)


@dataclasses.dataclass(frozen=True)
class FoldLayout:
  """How the ``folds`` fold slots of one program call sit on ``num_devices`` local devices.

  ``folds == 1``: the fold is data-parallel over every device (``split == num_devices``).
  Otherwise ``folds`` is a multiple of ``num_devices`` and each device holds ``folds /
  num_devices`` whole folds (``split == 1``). Per-fold arrays are ``(folds, steps, split,
  per_device, ...)`` on the host and ``(num_devices, steps, per_device_folds, per_device, ...)``
  in the program.
  """
  num_devices: int
  folds: int

  def __post_init__(self):
    if self.folds < 1 or (self.folds > 1 and self.folds % self.num_devices):
      raise ValueError(f'{self.folds} fold slots cannot be spread over {self.num_devices} devices')

  @property
  def data_parallel(self) -> bool:
    return self.folds == 1

  @property
  def split(self) -> int:
    """Devices that share one fold's batch."""
    return self.num_devices if self.data_parallel else 1

  @property
  def groups(self) -> int:
    """Device groups, one fold group each."""
    return 1 if self.data_parallel else self.num_devices

  @property
  def per_device_folds(self) -> int:
    return 1 if self.data_parallel else self.folds // self.num_devices

  def to_device(self, x: np.ndarray) -> np.ndarray:
    """``(folds, steps, split, per_device, ...)`` -> ``(devices, steps, per_device_folds, ...)``."""
    g, fd, dp = self.groups, self.per_device_folds, self.split
    rest = x.shape[3:]
    x = x.reshape((g, fd) + x.shape[1:])  # (g, fd, s, dp, per, ...)
    x = np.moveaxis(x, 3, 1)  # (g, dp, fd, s, per, ...)
    x = np.swapaxes(x, 2, 3)  # (g, dp, s, fd, per, ...)
    return x.reshape((g * dp, x.shape[2], fd) + rest)

  def from_device(self, x: np.ndarray) -> np.ndarray:
    """Inverse of :meth:`to_device`, with the split merged: ``(folds, steps, split * per, ...)``."""
    g, fd, dp = self.groups, self.per_device_folds, self.split
    s, per, rest = x.shape[1], x.shape[3], x.shape[4:]
    x = x.reshape((g, dp, s, fd, per) + rest)
    x = np.transpose(x, (0, 3, 2, 1, 4) + tuple(range(5, 5 + len(rest))))  # (g, fd, s, dp, per)
    return x.reshape((g * fd, s, dp * per) + rest)

  def metrics_from_device(self, x: np.ndarray) -> np.ndarray:
    """Per-step metrics ``(devices, steps, per_device_folds)`` -> ``(folds, steps)``."""
    if self.data_parallel:  # summed over the devices: every device holds the same values
      return x[0].T
    return np.swapaxes(x, 1, 2).reshape(self.folds, x.shape[1])

  def state_to_device(self, stacked: TrainState, devices: Sequence[jax.Device]) -> TrainState:
    """A host state ``(folds, ...)`` on ``devices`` in the program's layout.

    The arrays get exactly the placement the programs give their outputs (replicated, or split
    over the devices on a mesh named like the pmap axis), so the first call and the later ones
    share one trace.
    """
    if self.data_parallel:
      return replicate(stacked, devices)  # (1, ...), the same on every device
    stacked = jax.tree.map(
        lambda x: x.reshape((self.num_devices, self.per_device_folds) + x.shape[1:]), stacked)
    mesh = jax.sharding.Mesh(np.asarray(list(devices)), (AXIS,))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(AXIS))
    return jax.tree.map(lambda x: jax.device_put(x, split), stacked)

  def state_from_device(self, state: TrainState) -> TrainState:
    """The program's state as a host state ``(folds, ...)``."""
    state = jax.device_get(state)
    if self.data_parallel:
      return jax.tree.map(np.asarray, state)
    return jax.tree.map(lambda x: np.asarray(x).reshape((self.folds,) + x.shape[2:]), state)


def replicate(tree: Any, devices: Sequence[jax.Device]) -> Any:
  """Puts every leaf of ``tree`` on each of ``devices`` once (what the programs take with
  ``in_axes=None``: the frozen backbone, the protocol)."""
  mesh = jax.sharding.Mesh(np.asarray(list(devices)), (AXIS,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def gather(data: Dict[str, jax.Array], idx: jax.Array) -> Tuple[jax.Array, jax.Array, jax.Array]:
  """The one place where clip indices become model inputs: ``(clips float32, labels, apex)``."""
  clips = data['clips'][idx].astype(jnp.float32)
  return clips, data['labels'][idx], data['apex'][idx]


def _merge(trainable: Any, frozen: Dict[str, Any]) -> Any:
  """The full parameter tree from the nested trainable tree and the flat frozen leaves."""
  return partition.merge_params(traverse_util.flatten_dict(trainable, sep='/'), frozen)


def motion_cache_bytes(model, num_clips: int, frames: int, image_size: int, flips: int) -> int:
  """Bytes of the motion cache of ``num_clips`` clips: float32 ``(flips, N, H, W, 3)`` RGB-branch
  images plus, with motion prompts, ``(flips, N, T, H, W, 3)`` magnified motion (what
  :func:`build_motion_cache` holds, less its at most ``chunk - 1`` padding rows)."""
  per_clip = image_size * image_size * 3 * (1 + (frames if model.prompt_type == 'motion' else 0))
  return 4 * flips * num_clips * per_clip


def build_motion_cache(model, data: Dict[str, jax.Array], num_clips: int, chunk: int, flips: int,
                       devices: Sequence[jax.Device]) -> Dict[str, jax.Array]:
  """The parameter-free model inputs of every clip (:meth:`mpt_jax.models.mpt.MPT.precompute`),
  computed on the devices in one program, for the unflipped clips and, with ``flips == 2``, for
  the horizontally flipped ones (flipped by :func:`mpt_jax.augment.apply`).

  Returns:
    ``{'rgb': (flips, M, H, W, 3), 'motion': (flips, M, T, H, W, 3)}`` float32 (``motion`` only
    with motion prompts), replicated on ``devices`` like ``data``; ``M`` is ``num_clips`` rounded
    up to a multiple of ``chunk`` (the clips are processed ``chunk`` at a time; the extra rows
    repeat clip 0 and are never read). Entry ``[f, i]`` is clip ``i``, flipped when ``f == 1``.
  """
  chunks = -(-num_clips // chunk)
  idx = np.arange(chunks * chunk)
  idx[idx >= num_clips] = 0
  idx = np.tile(idx.reshape(chunks, chunk), (flips, 1)).astype(np.int32)  # (flips * chunks, chunk)
  flip = np.repeat(np.arange(flips, dtype=np.int32), chunks)  # (flips * chunks,)
  mesh = jax.sharding.Mesh(np.asarray(list(devices)), (AXIS,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

  def compute(data, idx, flip):
    _traced('motion_cache')

    def one_chunk(xs):
      i, f = xs
      clips, _, apex = gather(data, i)
      params = jnp.zeros((clips.shape[0], 5), jnp.float32).at[:, 0].set(f)  # flip only
      clips = augment.apply(clips, params, geometric=False)
      return model.apply({}, clips, apex, method=type(model).precompute)

    out = jax.lax.map(one_chunk, (idx, flip))  # (flips * chunks, chunk, ...)
    return {k: v.reshape((flips, chunks * chunk) + v.shape[2:]) for k, v in out.items()}

  program = compiled_programs.CompiledAhead(
      jax.jit(compute, out_shardings=replicated),
      compiled_programs.compiler_options(model.compute.dtype, devices))
  return program(data, jax.device_put(idx, replicated), jax.device_put(flip, replicated))


def cached_inputs(data: Dict[str, jax.Array], flip: Any, idx: jax.Array) -> Dict[str, jax.Array]:
  """The model inputs of clips ``idx`` from ``data['motion_cache']`` (:func:`build_motion_cache`):
  entry ``[flip, clip]``, flipped where ``flip`` is 1."""
  return {k: v[flip, idx] for k, v in data['motion_cache'].items()}


EPOCH_LOOPS = ('device', 'host')


def make_steps(model, tx: optax.GradientTransformation, layout: FoldLayout,
               devices: Sequence[jax.Device], geometric_augmentation: bool = False,
               gather_fn: Callable = gather, motion_cache: bool = False,
               epoch_loop: str = 'device') -> Tuple[Callable, Callable]:
  """Returns the pmapped ``(train_epoch, evaluate)`` programs of ``layout``.

  ``train_epoch(state, frozen, data, idx, aug, mask) -> (state, metrics)``: ``state`` is a
  :class:`TrainState` of the trainable tree in ``layout.state_to_device`` form (donated);
  ``frozen`` the flat frozen leaves and ``data`` the on-device protocol (both replicated,
  ``in_axes=None``); ``idx``/``mask`` ``(devices, steps, per_device_folds, per_device)`` and ``aug``
  the same with a trailing 5 (``layout.to_device``); ``metrics`` has ``loss``, ``accuracy`` and
  ``count`` per step and fold, ``(devices, steps, per_device_folds)``.

  ``evaluate(params, frozen, data, idx) -> logits (devices, batches, per_device_folds, per_device,
  classes)``: ``params`` is the trainable tree in the state's layout. Given ``data`` with a
  ``motion_cache`` entry it reads the clips' unflipped cached inputs (a program of its own) instead
  of computing them, whatever ``motion_cache`` says.

  Args:
    model: the MPT module.
    tx: the optimizer of the trainable tree alone (see :func:`trainable_state`).
    layout: how the fold slots sit on the devices.
    devices: the local devices of the programs.
    geometric_augmentation: compile the rotation/crop warp into the step.
    gather_fn: ``(data, idx) -> (clips, labels, apex)``, the step's input hook.
    motion_cache: the train program reads the model's parameter-free inputs from
      ``data['motion_cache']`` (:func:`build_motion_cache`, entry ``[flip, clip]``) instead of
      computing them from the clips; only without geometric augmentation (a rotation or crop
      changes them per draw).
    epoch_loop: where the loop over an epoch's steps (and over the evaluation batches) runs:
      ``device``, inside the program (``lax.scan`` / ``lax.map``: one dispatch per epoch);
      ``host``, in Python, one pmapped step (or batch) per call, dispatched without waiting for
      the previous one (no host synchronisation inside the epoch either). Same arguments and
      results; ``host`` exists because XLA:CPU runs the step several times slower inside a loop
      (docs/benchmarks.md).
  """
  if motion_cache and geometric_augmentation:
    raise ValueError('the motion cache cannot serve a step with geometric augmentation')
  if epoch_loop not in EPOCH_LOOPS:
    raise ValueError(f'epoch_loop must be one of {EPOCH_LOOPS}, got {epoch_loop!r}')
  dp = layout.data_parallel
  options = compiled_programs.compiler_options(model.compute.dtype, devices)

  def fold_step(state, frozen, data, idx, aug, mask):
    if motion_cache:  # the cached inputs of each clip as augmented (flipped or not)
      labels = data['labels'][idx]
      flip = augment.flipped(aug).astype(jnp.int32)
      inputs = cached_inputs(data, flip, idx)

      def forward(variables):
        return model.apply(variables, None, precomputed=inputs)
    else:
      clips, labels, apex = gather_fn(data, idx)
      clips = augment.apply(clips, aug, geometric_augmentation)

      def forward(variables):
        return model.apply(variables, clips, apex)
    count = mask.sum()
    if dp:
      count = jax.lax.psum(count, AXIS)
    denom = jnp.maximum(count, 1.0)

    def loss_fn(trainable):
      logits = forward({'params': _merge(trainable, frozen)})
      ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return (ce * mask).sum() / denom, logits

    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    correct = ((jnp.argmax(logits, -1) == labels) * mask).sum()
    if dp:
      grads, loss, correct = jax.lax.psum((grads, loss, correct), AXIS)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                     opt_state=opt_state)
    # A step without a real sample changes nothing (no parameter, moment or count update).
    active = count > 0
    new = jax.tree.map(lambda n, o: jnp.where(active, n, o), new, state)
    return new, {'loss': loss, 'accuracy': correct / denom, 'count': count}

  folds_step = jax.vmap(fold_step, in_axes=(0, None, None, 0, 0, 0))

  def fold_logits(params, frozen, data, idx):
    variables = {'params': _merge(params, frozen)}
    if 'motion_cache' in data:  # the clips' unflipped cached inputs
      return model.apply(variables, None, precomputed=cached_inputs(data, 0, idx))
    clips, _, apex = gather_fn(data, idx)
    return model.apply(variables, clips, apex)

  folds_logits = jax.vmap(fold_logits, in_axes=(0, None, None, 0))
  state_axis = None if dp else 0
  pmap_train = functools.partial(jax.pmap, axis_name=AXIS,
                                 in_axes=(state_axis, None, None, 0, 0, 0),
                                 out_axes=(state_axis, 0), devices=devices,
                                 donate_argnums=() if dp else (0,))
  pmap_eval = functools.partial(jax.pmap, axis_name=AXIS, in_axes=(state_axis, None, None, 0),
                                out_axes=0, devices=devices)

  if epoch_loop == 'device':
    def train_epoch(state, frozen, data, idx, aug, mask):
      _traced('train_epoch')

      def body(st, xs):
        return folds_step(st, frozen, data, *xs)

      return jax.lax.scan(body, state, (idx, aug, mask))

    def evaluate(params, frozen, data, idx):
      _traced('evaluate')
      return jax.lax.map(lambda i: folds_logits(params, frozen, data, i), idx)

    return (compiled_programs.CompiledAhead(pmap_train(train_epoch), options),
            compiled_programs.CompiledAhead(pmap_eval(evaluate), options))

  def one_step(state, frozen, data, idx, aug, mask):
    _traced('train_epoch')
    return folds_step(state, frozen, data, idx, aug, mask)

  def one_batch(params, frozen, data, idx):
    _traced('evaluate')
    return folds_logits(params, frozen, data, idx)

  p_step = compiled_programs.CompiledAhead(pmap_train(one_step), options)
  p_batch = compiled_programs.CompiledAhead(pmap_eval(one_batch), options)

  def host_train_epoch(state, frozen, data, idx, aug, mask):
    metrics = []
    for k in range(idx.shape[1]):  # (devices, steps, ...): one call per step
      state, m = p_step(state, frozen, data, idx[:, k], aug[:, k], mask[:, k])
      metrics.append(m)
    return state, jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs], 1), *metrics)

  def host_evaluate(params, frozen, data, idx):
    logits = [p_batch(params, frozen, data, idx[:, b]) for b in range(idx.shape[1])]
    return np.stack([np.asarray(x) for x in logits], 1)

  host_train_epoch.step_program = p_step  # one step, for benchmarks' cost analysis
  return host_train_epoch, host_evaluate


# --------------------------------------------------------------------------------- checkpoints
class CheckpointDamagedError(errors.UserError):
  """A fold checkpoint that is missing or cannot be restored (the message names it)."""


def _one_line(e: BaseException, limit: int = 200) -> str:
  text = ' '.join(str(e).split())
  return f'{type(e).__name__}: {text[:limit]}{"..." if len(text) > limit else ""}'


def _own_process_options() -> Dict[str, Any]:
  """Multi-host: a fold's checkpoint belongs to the one process that trains it (its own primary
  host, no barrier with the other processes, which save their folds at other times)."""
  if jax.process_count() == 1:
    return {}
  me = jax.process_index()
  return {'multiprocessing_options': ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}, barrier_sync_key_prefix=f'mpt_jax_process_{me}')}


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
    own = _own_process_options()
    try:
      if own and not read_only:  # Orbax leaves the folder to us when a subset of processes saves
        os.makedirs(self.directory, exist_ok=True)
      self.manager = ocp.CheckpointManager(
          self.directory,
          options=ocp.CheckpointManagerOptions(max_to_keep=1, create=not read_only and not own,
                                               cleanup_tmp_directories=not read_only,
                                               read_only=read_only,
                                               enable_async_checkpointing=False,
                                               **own))
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
