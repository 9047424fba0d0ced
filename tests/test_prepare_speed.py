"""The preparation's fast paths keep the stored pixels: PNG settings, grayscale handling."""

import io

import cv2
import numpy as np
import pytest
import skimage.data
from PIL import Image

from mpt_jax import clip_frames


@pytest.mark.parametrize('gray', [False, True])
def test_stored_png_is_lossless(gray):
  """The faster encoder settings are lossless: PIL (an independent decoder) reads back exactly the
  RGB frame, grayscale replicated to 3 equal channels."""
  rng = np.random.default_rng(0)
  frame = cv2.resize(skimage.data.astronaut(), (224, 224), interpolation=cv2.INTER_AREA)
  frame = np.clip(frame + rng.normal(0, 2, frame.shape), 0, 255).astype(np.uint8)
  if gray:
    frame = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
  data = clip_frames.encode_png(frame)
  with Image.open(io.BytesIO(data)) as im:
    assert im.format == 'PNG' and im.mode == 'RGB'
    back = np.asarray(im)
  np.testing.assert_array_equal(back, clip_frames.to_rgb(frame))


def test_grayscale_file_is_stored_as_released(tmp_path):
  """A grayscale file resized as released: the same pixels as the RGB path, by a grayscale
  resize (PIL's filter is per channel), and a PNG of about the size zlib level 1 gives."""
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
  assert len(clip_frames.encode_png(native)) < 1.15 * plain
