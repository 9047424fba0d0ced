"""The built-in synthetic micro-expression dataset (5 CASME II-style classes): what a new user runs first.

Needs no download and no pretrained weights. ``make demo`` prepares it (8 subjects x 5 classes x 4
clips, 64 px) and runs the full LOSO with a small ViT (``small_demo``: 4 blocks, width 64, patch 8)
trained from scratch at 64 px on CPU, with the complete MPT pipeline (dynamic image, magnification,
Gaussian motion prompts, group adapters). ``configs/synthetic.py:smoke`` is the tiny variant of the
end-to-end tests (3 subjects x 5 classes x 2 clips, 32 px, 2 epochs).
"""

from configs import common


def get_config(arg=None):
  config = common.dataset_config('synthetic_me', 5, 'default', arg)
  if 'smoke' in common.parse_arg(arg)[0]:
    config.data.builder_config = 'small'  # 3 subjects x 5 classes x 2 clips
    return config
  config.model.vit = 'small_demo'  # Small ViT for CPU (see mpt_jax/models/vit.py).
  config.model.training_strategy = 'scratch'  # No pretrained weights exist offline.
  config.model.prompt_type = 'motion'  # The full MPT model, trained from scratch (explicit: the
  config.model.adapter_type = 'group'  # 'scratch' strategy alone implies the plain ViT).
  config.model.image_size = 64  # The synthetic frames are stored at 64 px.
  config.model.tokenizer_patch = 8  # Tokenizer conv matches the 8 px patches.
  config.model.tokenizer_dim = 32  # Smaller tokenizer for the small ViT.
  config.model.magnification.lambda_c = 16.0 * 64 / 224  # lambda_c scaled to the frame size.
  config.train.num_epochs = 30
  return config
