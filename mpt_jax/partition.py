"""What trains: parameter parts, per-strategy labels, the partitioned optimizer (docs/method.md §7).

Every parameter belongs to one *part*: ``backbone`` (patch embedding, class token, position
embedding, encoder blocks, encoder norm), ``adapter``, ``prompt`` (the Gaussian tokenizer or VPT
prompts) or ``head``. A training strategy names the parts that train; :func:`param_labels` turns that
into the ``'trainable'`` / ``'frozen'`` labels that :func:`make_optimizer` feeds to
``optax.multi_transform`` (frozen leaves get ``optax.set_to_zero``, hence no optimizer state).

A strategy also defines the architecture it names (paper Table VI), through
:func:`resolve_architecture`: ``config.model.prompt_type`` and ``adapter_type`` left empty (``''``,
the default) take the strategy's value from :data:`STRATEGY_ARCHITECTURE`; a value set explicitly is
kept if the strategy allows it and refused with :class:`StrategyError` if it contradicts it (a
linear probe with motion prompts would feed tokens from a frozen, random tokenizer into every block).

Strategy, Table VI row, implied (prompt_type, adapter_type), explicit values refused:

* ``mpt``: MPT; (motion, group); none (it trains whatever prompts and adapters the model has, so
  Tables VII-XI vary them under this strategy);
* ``scratch``: w/o pretraining; (none, none), the plain ViT; none (everything trains, so the MPT
  model from scratch, as in the synthetic demo, is an explicit choice, not a contradiction);
* ``full_finetune``: full fine-tuning; (none, none); none (everything trains);
* ``linear_probe``: partial fine-tuning; (none, none); any prompt or adapter;
* ``prompt_only``: motion prompt; (motion, none); any adapter, and prompt_type ``none``;
* ``adapter_only``: group adapter; (none, group); any prompt, and adapter_type ``none``.
"""

from typing import Any, Dict, Tuple

import jax
import numpy as np
import optax
from flax import traverse_util

from mpt_jax import errors

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

PROMPT_TYPES = ('motion', 'vpt_shallow', 'vpt_deep', 'none')
ADAPTER_TYPES = ('group', 'shared', 'none')
# The (prompt_type, adapter_type) a strategy implies when the config leaves them empty.
STRATEGY_ARCHITECTURE: Dict[str, Tuple[str, str]] = {
    'mpt': ('motion', 'group'),
    'scratch': ('none', 'none'),  # Table VI "w/o pretraining": the plain ViT from random init.
    'full_finetune': ('none', 'none'),  # Table VI "full fine-tuning": the plain pretrained ViT.
    'linear_probe': ('none', 'none'),  # Table VI "partial fine-tuning": the head alone.
    'prompt_only': ('motion', 'none'),  # Table VI "motion prompt": tokenizer + head.
    'adapter_only': ('none', 'group'),  # Table VI "group adapter": adapters + head.
}


class StrategyError(errors.UserError):
  """A model config whose prompt/adapter settings contradict its training strategy."""


def _refusal(strategy: str, key: str, value: str) -> str:
  implied = dict(zip(('prompt_type', 'adapter_type'), STRATEGY_ARCHITECTURE[strategy]))
  return (f'config.model.{key}={value!r} contradicts config.model.training_strategy={strategy!r}, '
          f'which implies {key}={implied[key]!r}: leave config.model.{key} empty (\'\') or choose '
          'another training_strategy')


def resolve_architecture(model_config) -> Tuple[str, str]:
  """The ``(prompt_type, adapter_type)`` a model config describes, its strategy applied.

  Empty (``''``) fields take the strategy's implied value (:data:`STRATEGY_ARCHITECTURE`); explicit
  ones are checked against it.

  Raises:
    StrategyError: an unknown strategy, prompt or adapter type, or an explicit value that contradicts
      the strategy (one line naming the keys).
  """
  strategy = model_config.training_strategy
  if strategy not in STRATEGY_ARCHITECTURE:
    raise StrategyError(f'config.model.training_strategy must be one of '
                        f'{sorted(STRATEGY_ARCHITECTURE)}, got {strategy!r}')
  prompt = model_config.get('prompt_type', '') or ''
  adapter = model_config.get('adapter_type', '') or ''
  if prompt and prompt not in PROMPT_TYPES:
    raise StrategyError(f'config.model.prompt_type must be one of {PROMPT_TYPES} or empty, '
                        f'got {prompt!r}')
  if adapter and adapter not in ADAPTER_TYPES:
    raise StrategyError(f'config.model.adapter_type must be one of {ADAPTER_TYPES} or empty, '
                        f'got {adapter!r}')
  implied_prompt, implied_adapter = STRATEGY_ARCHITECTURE[strategy]
  if strategy == 'linear_probe':
    bad = [(k, v) for k, v in (('prompt_type', prompt), ('adapter_type', adapter))
           if v not in ('', 'none')]
  elif strategy == 'prompt_only':
    bad = [(k, v) for k, v, ok in (('prompt_type', prompt, prompt != 'none'),
                                   ('adapter_type', adapter, adapter in ('', 'none'))) if not ok]
  elif strategy == 'adapter_only':
    bad = [(k, v) for k, v, ok in (('prompt_type', prompt, prompt in ('', 'none')),
                                   ('adapter_type', adapter, adapter != 'none')) if not ok]
  else:  # mpt trains every prompt and adapter it has; scratch and full_finetune train everything.
    bad = []
  if bad:
    raise StrategyError('; '.join(_refusal(strategy, k, v) for k, v in bad))
  return prompt or implied_prompt, adapter or implied_adapter


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
  """The parts a training strategy trains."""
  if strategy not in STRATEGIES:
    raise StrategyError(f'training_strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}')
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
