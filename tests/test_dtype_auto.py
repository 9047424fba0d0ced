"""``config.model.dtype='auto'`` and the frozen backbone cast to bfloat16 once per run."""

import re
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mpt_jax import errors
from mpt_jax import partition
from mpt_jax.models import mpt
from mpt_jax.models import vit
from tests import helpers

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx2 avx512f avx512_bf16 amx_tile
"""


def _device(platform, kind='cpu', capability=None):
  return types.SimpleNamespace(platform=platform, device_kind=kind, compute_capability=capability)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text(CPUINFO)
  flags = vit.cpu_flags(str(path))
  assert 'avx512_bf16' in flags and 'amx_tile' in flags and 'amx_bf16' not in flags
  assert vit.cpu_flags(str(tmp_path / 'missing')) == frozenset()


def test_auto_is_bfloat16_only_on_bf16_hardware_and_when_the_switch_is_on():
  cpu, h100, v100 = (_device('cpu'), _device('gpu', 'NVIDIA H100', '9.0'),
                     _device('gpu', 'Tesla V100', '7.0'))
  amx, avx512, plain = frozenset({'amx_bf16'}), frozenset({'avx512_bf16'}), frozenset({'avx2'})
  for device, flags in ((h100, None), (cpu, amx), (cpu, avx512), (_device('tpu', 'TPU v4'), None)):
    assert vit.resolve_dtype('auto', True, device, flags) == 'bfloat16', device
    assert vit.resolve_dtype('auto', False, device, flags) == 'float32', device  # switch off
  for device, flags in ((v100, None), (cpu, plain), (cpu, frozenset())):
    assert vit.resolve_dtype('auto', True, device, flags) == 'float32', device
  for name in vit.DTYPES:  # explicit choices are kept
    assert vit.resolve_dtype(name, False, cpu, plain) == name
    assert vit.resolve_dtype(name, True, h100) == name


def test_the_defaults_are_auto_with_bfloat16_allowed_and_smoke_runs_in_float32(monkeypatch):
  config = common.get_config()
  assert config.model.dtype == 'auto' and config.model.bfloat16_keeps_accuracy is True
  # On a CPU with bfloat16 instructions: the full configs compute in bfloat16, :smoke in float32.
  monkeypatch.setattr(vit, 'cpu_flags', lambda path='/proc/cpuinfo': frozenset({'avx512_bf16'}))
  full = helpers.tiny_config()
  full.model.bfloat16_keeps_accuracy = config.model.bfloat16_keeps_accuracy
  assert mpt.build_model(full.model, 3).compute.dtype == 'bfloat16'
  assert helpers.tiny_config().model.bfloat16_keeps_accuracy is False
  assert mpt.build_model(helpers.tiny_config().model, 3).compute.dtype == 'float32'
  # Without them, float32 either way.
  monkeypatch.setattr(vit, 'cpu_flags', lambda path='/proc/cpuinfo': frozenset({'avx2'}))
  assert mpt.build_model(full.model, 3).compute.dtype == 'float32'


def test_unknown_dtype_is_one_line_user_error():
  with pytest.raises(errors.UserError, match=r"config.model.dtype must be one of \('auto'"):
    mpt.build_model(helpers.tiny_config(dtype='float16').model, 3)


# ------------------------------------------------------------------ frozen weights cast once
@pytest.fixture(scope='module')
def bf16_model_and_params():
  config = helpers.tiny_config(dtype='bfloat16', prompt_type='vpt_shallow')
  model = mpt.build_model(config.model, 3)
  clips = helpers.random_clips(batch=3)  # 3: no activation shares a kernel's shape
  params = jax.jit(model.init)(jax.random.PRNGKey(0), clips)['params']
  trainable, frozen = partition.split_params(params, 'mpt')
  return model, clips, trainable, frozen


def test_frozen_for_compute_casts_the_product_weights_only(bf16_model_and_params):
  _, _, _, frozen = bf16_model_and_params
  assert mpt.frozen_for_compute(frozen, 'float32') is frozen
  cast = mpt.frozen_for_compute(frozen, 'bfloat16')
  assert set(cast) == set(frozen)
  bf16 = {k for k, v in cast.items() if v.dtype == jnp.bfloat16}
  # 2 blocks x (4 attention projections + 2 MLP layers) x (kernel, bias)
  assert len(bf16) == 2 * 6 * 2, sorted(bf16)
  assert all('MultiHeadDotProductAttention_1' in k or 'MlpBlock_3' in k for k in bf16)
  assert {k for k in cast if 'LayerNorm' in k or k.startswith('embedding') or
          'posembed' in k or k == 'cls'} <= set(cast) - bf16  # they stay float32
  for k in bf16:  # round to nearest, as the per-step cast does
    np.testing.assert_array_equal(np.asarray(cast[k], np.float32),
                                  np.asarray(jnp.asarray(frozen[k]).astype(jnp.bfloat16), np.float32))


def _step(model, clips):
  def loss(trainable, frozen):
    p = partition.merge_params(trainable, frozen)
    logits = model.apply({'params': p}, clips)
    return logits.sum(), logits
  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def _converted_shapes(model, clips, trainable, frozen):
  """Shapes that the forward pass (the logits of a step) converts from float32 to bfloat16. The
  backward pass multiplies by the forward's operands (residuals), so it casts no frozen weight
  again; the gradients' own float32 -> bfloat16 converts (of the frozen kernels' discarded
  gradients) would hide the forward's in the whole step."""
  forward = jax.jit(lambda t, f: model.apply({'params': partition.merge_params(t, f)}, clips))
  text = forward.lower(trainable, frozen).as_text()
  return set(re.findall(r'stablehlo.convert [^\n]*\(tensor<([0-9x]+)xf32>\) -> tensor<\1xbf16>',
                        text))


def test_step_reads_the_cast_weights_without_converting_them(bf16_model_and_params):
  model, clips, trainable, frozen = bf16_model_and_params
  cast = mpt.frozen_for_compute(frozen, 'bfloat16')
  kernel_shapes = {'x'.join(map(str, v.shape)) for k, v in frozen.items()
                   if k.endswith('kernel') and cast[k].dtype == jnp.bfloat16}
  assert len(kernel_shapes) == 4  # (32, 2, 16) q/k/v, (2, 16, 32) out, (32, 64), (64, 32) MLP
  per_step = _converted_shapes(model, clips, trainable, frozen)
  once = _converted_shapes(model, clips, trainable, cast)
  assert kernel_shapes <= per_step  # float32 weights: the step converts each kernel itself
  assert not kernel_shapes & once, kernel_shapes & once  # cast weights: no kernel converted
  # ... and the training step computes the same bits.
  step = _step(model, clips)
  (_, a), ga = step(trainable, frozen)
  (_, b), gb = step(trainable, cast)
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_runner_hands_the_step_cast_weights(bf16_model_and_params):
  """``SeedParams.frozen_on_device`` (the step's frozen argument) holds the bfloat16 weights."""
  from mpt_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  from mpt_jax import fold_programs  # pylint: disable=g-import-not-at-top
  from mpt_jax import run_plan  # pylint: disable=g-import-not-at-top
  config = helpers.tiny_config(dtype='bfloat16', prompt_type='vpt_shallow')
  subjects = np.repeat(np.array(['s1', 's2', 's3']), 4)
  data = input_pipeline.ClipSet(
      np.zeros((12, 8, 32, 32, 3), np.float16), np.arange(12, dtype=np.int32) % 3,
      np.full(12, 3, np.int32), subjects, np.array([f'c{i}' for i in range(12)]),
      ('a', 'b', 'c'))
  init = fold_programs.init_seed(run_plan.make_plan(config, data), 0)
  dtypes = {k: v.dtype for k, v in init.frozen_on_device.items()}
  want = {k: v.dtype for k, v in mpt.frozen_for_compute(init.frozen, 'bfloat16').items()}
  assert dtypes == want and jnp.bfloat16 in dtypes.values()
  assert all(v.dtype == jnp.float32 for v in init.frozen.values())  # the host copy: float32
