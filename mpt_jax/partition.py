"""What trains: parameter parts, per-strategy labels and the partitioned optimizer (SPEC §7).

Every parameter belongs to one *part*: ``backbone`` (patch embedding, class token, position
embedding, encoder blocks, encoder norm), ``adapter``, ``prompt`` (the Gaussian tokenizer or VPT
prompts) or ``head``. A training strategy names the parts that train; :func:`param_labels` turns that
into the ``'trainable'`` / ``'frozen'`` labels that :func:`make_optimizer` feeds to
``optax.multi_transform`` (frozen leaves get ``optax.set_to_zero``, hence no optimizer state).
"""

from typing import Any, Dict, Tuple

import jax
import numpy as np
import optax
from flax import traverse_util

PARTS = ('backbone', 'adapter', 'prompt', 'head')
STRATEGIES: Dict[str, Tuple[str, ...]] = {
    'mpt': ('adapter', 'prompt', 'head'),
    'scratch': PARTS,
    'full_finetune': PARTS,
    'linear_probe': ('head',),
    'prompt_only': ('prompt', 'head'),
    'adapter_only': ('adapter', 'head'),
}
TRAINABLE, FROZEN = 'trainable', 'frozen'


def part_of(path: Tuple[str, ...]) -> str:
  """The part a parameter path (tuple of keys) belongs to."""
  if path[0] == 'head':
    return 'head'
  if path[0] in ('tokenizer', 'prompt', 'deep_prompt'):
    return 'prompt'
  if 'adapter' in path:
    return 'adapter'
  if path[0] in ('embedding', 'cls', 'Transformer'):
    return 'backbone'
  raise KeyError(f'Parameter {"/".join(path)} belongs to no known part')


def trainable_parts(strategy: str) -> Tuple[str, ...]:
  if strategy not in STRATEGIES:
    raise ValueError(f'training_strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}')
  return STRATEGIES[strategy]


def param_labels(params: Any, strategy: str) -> Any:
  """A tree like ``params`` with ``'trainable'`` or ``'frozen'`` at every leaf."""
  parts = trainable_parts(strategy)
  return traverse_util.path_aware_map(
      lambda path, _: TRAINABLE if part_of(path) in parts else FROZEN, params)


def split_params(params: Any, strategy: str) -> Tuple[Dict[str, Any], Dict[str, Any]]:
  """Splits ``params`` into flat ``{'a/b/c': leaf}`` dicts of (trainable, frozen) leaves."""
  parts = trainable_parts(strategy)
  flat = traverse_util.flatten_dict(params, sep='/')
  train = {k: v for k, v in flat.items() if part_of(tuple(k.split('/'))) in parts}
  frozen = {k: v for k, v in flat.items() if k not in train}
  return train, frozen


def merge_params(trainable: Dict[str, Any], frozen: Dict[str, Any]) -> Any:
  """Inverse of :func:`split_params`."""
  overlap = set(trainable) & set(frozen)
  if overlap:
    raise ValueError(f'Keys both trainable and frozen: {sorted(overlap)[:5]}')
  return traverse_util.unflatten_dict({**frozen, **trainable}, sep='/')


def count_by_part(params: Any) -> Dict[str, int]:
  """Number of parameters per part."""
  counts = {p: 0 for p in PARTS}
  for path, leaf in traverse_util.flatten_dict(params).items():
    counts[part_of(path)] += int(np.prod(leaf.shape))
  return counts


def count_trainable(params: Any, strategy: str) -> int:
  parts = trainable_parts(strategy)
  return sum(n for p, n in count_by_part(params).items() if p in parts)


def make_schedule(train_config, steps_per_epoch: int) -> optax.Schedule:
  """Constant (default) or linear warm-up + cosine decay over the fold's training steps."""
  lr = float(train_config.learning_rate)
  if train_config.schedule == 'constant':
    return optax.constant_schedule(lr)
  if train_config.schedule == 'cosine':
    total = max(1, int(train_config.num_epochs) * steps_per_epoch)
    warmup = min(total - 1, int(train_config.warmup_epochs) * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0), total)
  raise ValueError(f"train.schedule must be 'constant' or 'cosine', got {train_config.schedule!r}")


def make_optimizer(train_config, params: Any, strategy: str,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  """``optax.multi_transform``: the configured optimizer on trainable leaves, zero on frozen ones."""
  schedule = make_schedule(train_config, steps_per_epoch)
  name = train_config.optimizer
  if name == 'adam':
    inner = optax.adam(schedule)
  elif name == 'adamw':
    inner = optax.adamw(schedule, weight_decay=float(train_config.weight_decay))
  elif name == 'sgd':
    inner = optax.sgd(schedule, momentum=0.9)
  else:
    raise ValueError(f"train.optimizer must be 'adam', 'adamw' or 'sgd', got {name!r}")
  return optax.multi_transform({TRAINABLE: inner, FROZEN: optax.set_to_zero()},
                               param_labels(params, strategy))


def tree_fingerprint(tree: Any) -> str:
  """A short content hash of a parameter tree (used to check the frozen backbone on restore)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for path, leaf in sorted(traverse_util.flatten_dict(tree, sep='/').items()):
    arr = np.asarray(jax.device_get(leaf))
    h.update(path.encode())
    h.update(str(arr.shape).encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()[:16]
