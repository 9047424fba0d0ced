"""The preparation's fast paths keep the stored pixels: PNG settings, grayscale handling."""

import io

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from mpt_jax import clip_frames


@pytest.mark.parametrize('gray', [False, True])
@pytest.mark.parametrize('shape', [(224, 224), (97, 223)])
def test_stored_png_is_lossless(gray, shape):
  """Our PNG encoder is lossless: PIL, OpenCV and TensorFlow (what ``tfds.load`` decodes with),
  three independent decoders, read back exactly the RGB frame, grayscale replicated to 3 equal
  channels; also at an odd size (rows of a length not a multiple of anything)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  frame = cv2.resize(skimage.data.astronaut(), shape[::-1], interpolation=cv2.INTER_AREA)
  frame = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)
  if gray:
    frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  want = clip_frames.to_rgb(frame)
  data = clip_frames.encode_png(frame)
  with Image.open(io.BytesIO(data)) as im:
    assert im.format == 'PNG' and im.mode == 'RGB'
    np.testing.assert_array_equal(np.asarray(im), want)
  np.testing.assert_array_equal(
      cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[..., ::-1], want)
  np.testing.assert_array_equal(tf.io.decode_png(data, channels=3).numpy(), want)
  assert clip_frames.encode_png(frame) == data  # deterministic


def test_grayscale_file_is_stored_as_released(tmp_path):
  """A grayscale file resized as released: the same pixels as the RGB path, by a grayscale
  resize (PIL's filter is per channel), and a PNG within 20 % of the size libpng gives at zlib
  level 1 with its adaptive filters (1.15x on this frame)."""
  rng = np.random.default_rng(1)
  g = cv2.cvtColor(skimage.data.astronaut(), cv2.COLOR_RGB2GRAY)
  g = np.clip(g + rng.normal(0, 2, g.shape), 0, 255).astype(np.uint8)
  path = str(tmp_path / 'g.jpg')
  Image.fromarray(g).save(path, quality=92)
  with Image.open(path) as im:
    ref = np.asarray(im.convert('RGB').resize((224, 224), Image.BILINEAR))
  native = clip_frames._load_resized_native(path, 224)  # pylint: disable=protected-access
  assert native.ndim == 2
  np.testing.assert_array_equal(clip_frames.to_rgb(native), ref)
  np.testing.assert_array_equal(clip_frames.load_resized(path, 224), ref)
  plain = cv2.imencode('.png', ref, [cv2.IMWRITE_PNG_COMPRESSION, 1])[1].size
  assert len(clip_frames.encode_png(native)) < 1.2 * plain
