"""The common MPT configuration; every dataset config starts from :func:`get_config`.

Every field is commented. Dataset configs (``configs/casme2.py`` ...) set ``config.data`` and may take
an argument such as ``:smoke`` (tiny ViT, few subjects, few steps) for tests and quick checks.
"""

import os

import ml_collections


def get_model_config() -> ml_collections.ConfigDict:
  """The model part of the config (docs/method.md §2-7 defaults)."""
  m = ml_collections.ConfigDict()
  m.vit = 'B_16'  # Backbone variant: 'B_16' | 'B_32' (Table IX) | 'S_16' | 'Ti_16' | 'tiny'.
  m.pretrained_path = ''  # Local ViT checkpoint (.npz or .safetensors); required unless
  #                         training_strategy is 'scratch' or allow_random_backbone is set.
  m.allow_random_backbone = False  # Accept a random (untrained) backbone, e.g. for smoke tests.
  m.image_size = 224  # Frame side length fed to the model (frames are resized to it).
  m.num_frames = 16  # T: frames after temporal resampling.
  m.input_modality = 'dynamic_image'  # RGB branch: dynamic_image | apex | apex_minus_onset | mesti.
  m.input_norm = 'minus_one_one'  # Backbone normalisation: minus_one_one (in21k ViT) | imagenet.
  # The architecture follows the training strategy (paper Table VI). prompt_type and adapter_type
  # left empty ('') take what training_strategy implies (mpt: motion + group; prompt_only:
  # motion, no adapters; adapter_only: group, no prompts; linear_probe, full_finetune, scratch: the
  # plain ViT). A non-empty value is "explicit": it is kept if the strategy allows it and refused,
  # naming both keys, if it contradicts it (e.g. linear_probe with prompt_type=motion). The one
  # function that applies this is mpt_jax.partition.resolve_architecture (called by build_model).
  m.prompt_type = ''  # Prompts (Table VII): '' (strategy's) | motion | vpt_shallow | vpt_deep | none.
  m.num_prompts = 5  # K: motion prompt tokens (Fig. 5).
  m.adapter_type = ''  # Adapters (Table VIII): '' (strategy's) | group | shared | none.
  m.adapter_reduction = 8  # r: adapter bottleneck is hidden_size / r (Table XI).
  m.tokenizer_dim = 64  # C: channels of the tokenizer's per-frame conv.
  m.tokenizer_patch = 16  # Kernel size and stride of the tokenizer's per-frame conv.
  m.tokenizer_init = 'middle'  # Start of the Gaussian centres and widths (docs/method.md §4):
  #                              middle (zero biases: all K at the clip's middle, width ~1.19
  #                              frames; chosen by the study) | spread (centres (T-1)(k-0.5)/K,
  #                              width T/(2K)) | spread_narrow | middle_half | spread_full (T/K).
  m.tokenizer_grid = 1  # Where a frame's conv features are averaged (docs/method.md §4): 1 = over
  #                       the whole frame (the paper's mean_xy) | g > 1 = over each cell of a
  #                       g x g grid, so the prompts know where the motion is (a comparison).
  m.training_strategy = 'mpt'  # What trains, and the architecture (Table VI): mpt | scratch |
  #                              full_finetune | linear_probe | prompt_only | adapter_only.
  m.dtype = 'auto'  # Compute dtype of the backbone, adapters and tokenizer: auto | float32 |
  #                  bfloat16 (bfloat16 products, float32 accumulation; parameters, optimizer,
  #                  dynamic image, magnification, logits and loss stay float32; the frozen
  #                  backbone's product weights are cast to bfloat16 once per run). auto:
  #                  bfloat16 where the hardware multiplies it (NVIDIA GPUs from Ampere on, TPUs,
  #                  CPUs with AMX-BF16 or AVX512-BF16) and bfloat16_keeps_accuracy is True,
  #                  float32 otherwise.
  m.cls_only_last_block = True  # The last encoder block computes the class token alone (the head
  #                                reads nothing else): exact, ~7 % fewer flops. False runs it on
  #                                every token (profile counts the paper's full architecture).
  m.remat = False  # Recompute every encoder block in the backward pass: less memory, about one
  #                  more forward of time (for strategies that train the whole backbone).
  m.bfloat16_keeps_accuracy = True  # Whether dtype 'auto' may choose bfloat16. True: over 5
  #                                   seeds bfloat16 kept the demo's and synthetic_faces' LOSO
  #                                   accuracy within seed noise (docs/method.md §10). False: auto
  #                                   is float32 everywhere.
  m.attention = 'auto'  # Attention kernel of every block: auto | lean | xla | cudnn. lean: the
  #                      memory-lean softmax attention (keeps no attention matrix for the backward
  #                      pass; the CPU form); xla: jax.nn.dot_product_attention (XLA's fused form);
  #                      cudnn: its cuDNN flash attention (NVIDIA GPUs, dtype bfloat16 only); auto:
  #                      lean on CPUs, cudnn on Ampere-or-later NVIDIA GPUs with bfloat16, xla on
  #                      other accelerators. Same results within float rounding.
  m.magnification = ml_collections.ConfigDict()
  m.magnification.alpha = 20.0  # Amplification factor alpha (Table X).
  m.magnification.lambda_c = 16.0  # EVM cut-off wavelength in pixels (at image_size).
  m.magnification.low_hz = 0.4  # Band-pass low cut-off (Hz).
  m.magnification.high_hz = 4.0  # Band-pass high cut-off (Hz).
  m.magnification.fs = 30.0  # Sampling rate assumed for the resampled clip (docs/method.md §3).
  m.magnification.order = 1  # Butterworth order.
  m.magnification.levels = 0  # Pyramid levels incl. residual; 0 = as deep as the image allows.
  m.magnification.amplification = 'evm'  # evm (per-level schedule) | uniform (comparison only).
  m.magnification.color_space = 'rgb'  # rgb (per channel) | yiq.
  m.magnification.chroma_attenuation = 1.0  # Factor on I/Q motion when color_space is yiq.
  m.magnification.pyr_up_border = 'cv2'  # Pyramid up-sampling border: cv2 (cv2.pyrUp's) | reflect
  #                                         (the form before the border fix; comparison only).
  return m


def get_config() -> ml_collections.ConfigDict:
  """The full default config (paper settings: Adam 3e-4, batch 16, alpha 20, r 8, K 5, T 16, 224 px)."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seed of parameter init, data order and augmentation (same for every fold).
  config.num_seeds = 1  # Repeat the whole LOSO run with seeds seed..seed+num_seeds-1.
  config.model = get_model_config()

  config.data = ml_collections.ConfigDict()
  config.data.name = 'synthetic'  # TFDS dataset name (registered by tfds_builders).
  config.data.builder_config = ''  # TFDS builder config (class protocol), '' = the default.
  # Where prepared TFDS datasets live: $TFDS_DATA_DIR when set (as TFDS itself does), else
  # ~/tensorflow_datasets.
  config.data.data_dir = os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  config.data.manual_dir = ''  # The dataset folder as unpacked (used by --mode=prepare).
  config.data.rebuild = False  # --mode=prepare: prepare again over data made from other sources.
  config.data.drop_slash_apex = False  # Drop the rows whose apex is '/' (else: midpoint apex);
  #                                      CASME II, SAMM, CAS(ME)^3 only.
  config.data.align = 'auto'  # Face alignment at preparation: auto (align releases without
  #                             face crops: SAMM, CAS(ME)^3, SMIC raw, CASME II RAW_selected; keep
  #                             CASME II Cropped and SMIC_all_cropped as released) | always | never.
  #                             A value other than auto is prepared as its own dataset.
  config.data.align_margin = 0.2  # Face box fraction added on every side of an aligned face;
  #                                 changing it also prepares a new dataset.
  config.data.skip_bad_frames = False  # Unreadable frame at preparation: False = stop with an error
  #                                      naming the file (nothing written); True = skip the frame
  #                                      (or a clip left with < 2 frames) and list it in the report.
  config.data.prepare_workers = 0  # Processes decoding/aligning/encoding at preparation; 0 = all
  #                                  cores (the output is identical for any number).
  config.data.cache_resampled = True  # Keep the resampled protocol (T frames at image_size,
  #                                     float16) next to the prepared dataset, so later runs start
  #                                     in seconds; keyed by everything that determines it.
  config.data.subjects = ()  # Restrict LOSO to these subjects (empty = every subject).
  config.data.hflip = True  # Training augmentation: random horizontal flip of the whole clip.
  config.data.max_rotation_deg = 0.0  # Option: random rotation in +-N degrees (same for all frames).
  config.data.min_crop_scale = 1.0  # Option: random crop of this area fraction or more, resized
  #                                   back (same for all frames); 1.0 = off.

  config.train = ml_collections.ConfigDict()
  config.train.optimizer = 'adam'  # adam | adamw | sgd.
  config.train.learning_rate = 3e-4  # Peak learning rate.
  config.train.weight_decay = 0.0  # Weight decay (adamw only).
  config.train.schedule = 'constant'  # constant | cosine (with linear warm-up).
  config.train.warmup_epochs = 0  # Warm-up length for the cosine schedule.
  config.train.batch_size = 16  # Global batch size (split across devices).
  config.train.fit_batch_to_data = False  # A batch larger than the smallest training fold: False =
  #                                         refuse; True = lower it to fit (the :smoke configs,
  #                                         which run on whatever subjects a dataset has).
  config.train.num_devices = 0  # Local devices to use (per process); 0 = all of them.
  # Folds trained together by one compiled program (their trainable parameters and optimizer
  # states stacked, the frozen backbone shared): 1 = one fold after another, each data-parallel
  # over the devices; N > 1 = N folds at once, spread over the devices (rounded up to a multiple of
  # them); 0 = auto: 1 on CPUs (all folds at once was measured no faster there, docs/benchmarks.md); on
  # GPUs/TPUs every fold of a seed (of this process) at once, as far as a generous estimate of one
  # fold's step memory fits 60 % of the accelerator's memory. Larger F means larger, more
  # efficient kernels and fewer program calls per fold; the results are those of 1 (within float
  # rounding).
  config.train.folds_per_step = 0
  # Motion cache: the dynamic image and the magnified motion depend on no trainable parameter, so
  # they can be computed once per clip and flip (on the devices, when training starts) and the
  # training step fed from that cache instead of recomputing them every step. 'on' | 'off' |
  # 'auto' (on without rotation/crop augmentation when the cache fits the memory budget beside
  # the fold-parallel state: 60 % of an accelerator's memory, 40 % of the RAM on CPUs).
  # It costs float32 (clips x flips x (T + 1) x H x W x 3) on every device: 4.7 GiB for CASME II
  # (249 clips, flips on, T = 16, 224 px). 'on' with rotation or crop is refused. Same results.
  config.train.motion_cache = 'auto'
  # Where the loop over an epoch's steps runs: 'device' (inside one program per epoch, lax.scan:
  # one dispatch per epoch), 'host' (one program per step, dispatched from Python without
  # waiting) or 'auto' (host on CPUs, where XLA ran an epoch 1.6x (ViT-B/16) to 4.3x (the demo)
  # slower inside a loop; device on GPUs/TPUs). The same results within float rounding.
  config.train.epoch_loop = 'auto'
  config.train.num_epochs = 20  # Epochs per fold.
  # Deterministic XLA ops on GPUs (--xla_gpu_deterministic_ops, set by main.py before JAX starts),
  # so that a resumed run repeats an uninterrupted one there too; a little slower. CPUs are
  # deterministic anyway.
  config.train.deterministic = True
  config.train.eval_every_epochs = 1  # Evaluate the held-out subject every N epochs (for curves).
  config.train.oracle_best_epoch = False  # Also report the best epoch per held-out subject
  #                                         (test-set peeking; always labelled "oracle").
  config.train.checkpoint_every_epochs = 1  # Save a resumable Orbax checkpoint every N epochs.
  # ...but only once the fold group's last save is at least this many seconds old (0: at every
  # such epoch). A fold's last epoch always saves. A crash loses at most about this much training;
  # the resumed metrics are the same either way. A save costs 0.3-0.5 s per fold (ViT-B/16's
  # trainable leaves and Adam moments), which on a GPU outweighs an epoch of every fold.
  config.train.checkpoint_min_interval_s = 60.0
  config.train.eval_batch_size = 16  # Batch size of evaluation and prediction.
  return config


def apply_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The ``:smoke`` variant: tiny ViT trained from scratch, small frames, few subjects and steps."""
  config.model.vit = 'tiny'
  config.model.pretrained_path = ''
  config.model.allow_random_backbone = True  # Smoke runs test the code, not the accuracy.
  config.model.image_size = 32
  config.model.num_frames = 8
  config.model.tokenizer_dim = 8
  config.model.tokenizer_patch = 8
  config.model.magnification.lambda_c = 4.0  # Scaled with the 7x smaller frames.
  config.train.batch_size = 4
  config.train.fit_batch_to_data = True  # Fixture or few-clip subjects: fit the batch to them.
  config.train.eval_batch_size = 4
  config.train.num_epochs = 2
  # float32 on every machine (auto with the switch off), so that a smoke run gives the same
  # numbers on a CPU with bfloat16 instructions, a GPU or a CPU without.
  config.model.bfloat16_keeps_accuracy = False
  return config


def parse_arg(arg):
  """Splits a ``get_config`` argument such as ``smoke`` or ``smoke,alpha=10`` into (flags, dict)."""
  flags, values = set(), {}
  for part in (arg or '').split(','):
    part = part.strip()
    if not part:
      continue
    if '=' in part:
      key, value = part.split('=', 1)
      values[key.strip()] = value.strip()
    else:
      flags.add(part)
  return flags, values


def dataset_config(name: str, num_classes: int, builder_config: str, arg=None,
                   smoke_subjects=()) -> ml_collections.ConfigDict:
  """A dataset config on top of :func:`get_config`; ``arg`` may be ``smoke``."""
  config = get_config()
  config.data.name = name
  config.data.builder_config = builder_config
  config.data.num_classes = num_classes  # Classes of the protocol (checked against the dataset).
  flags, values = parse_arg(arg)
  unknown = flags - {'smoke'}
  if unknown or values:
    raise ValueError(f'Unknown config argument(s) {sorted(unknown) + sorted(values)}; '
                     'this config takes only "smoke".')
  if 'smoke' in flags:
    apply_smoke(config)
    config.data.subjects = tuple(smoke_subjects)
  return config


def spotting_config(name: str, builder_config: str = '') -> ml_collections.ConfigDict:
  """A long-video (spotting) dataset config: data preparation and the training-free spotter.

  ``config.spot`` starts from the dataset's preset (``mpt_jax/spotting/params.py``: lags from
  MTSN's published settings, lengths from the MEGC2020 baseline's filter).
  """
  from mpt_jax.spotting import params  # pylint: disable=g-import-not-at-top
  preset = params.PRESETS[name]
  config = ml_collections.ConfigDict()
  config.seed = 0  # Unused by the training-free spotter (kept for the tools that read it).
  config.data = ml_collections.ConfigDict()
  config.data.name = name  # TFDS dataset name (registered by tfds_builders).
  config.data.builder_config = builder_config  # TFDS builder config, '' = the default.
  # Where prepared TFDS datasets live: $TFDS_DATA_DIR when set, else ~/tensorflow_datasets.
  config.data.data_dir = os.environ.get('TFDS_DATA_DIR') or '~/tensorflow_datasets'
  config.data.manual_dir = ''  # The dataset folder as unpacked (used by --mode=prepare).
  config.data.rebuild = False  # --mode=prepare: prepare again over data made from other sources.
  config.data.align = 'auto'  # Face alignment at preparation, one transform per video: auto (align
  #                             unless the release is face-cropped) | always | never.
  config.data.align_margin = 0.2  # Face box fraction added on every side of an aligned face.
  config.data.skip_bad_frames = False  # Unreadable frame: False = stop naming the file; True =
  #                                      skip it and list it in the report.
  config.data.prepare_workers = 0  # Processes decoding/aligning/encoding videos; 0 = all cores.
  config.data.subjects = ()  # Spot only in these subjects' videos (empty = every subject).
  config.spot = ml_collections.ConfigDict()
  config.spot.k_me = preset.k_me  # Micro lag in working-rate (~30 fps) frames: flow t-k -> t.
  config.spot.k_mae = preset.k_mae  # Macro lag in working-rate frames.
  config.spot.p = preset.p  # Threshold T = mean + p (max - mean) of each video's score.
  # Thresholds to choose p from per held-out subject, on the other subjects' videos only (LOSO);
  # empty = the fixed p above.
  config.spot.p_grid = ()
  config.spot.me_min = preset.me_min  # Shortest ME in source frames (shorter: dropped).
  config.spot.me_max = preset.me_max  # Longest ME in source frames (longer: MaE).
  config.spot.valley_ratio = preset.valley_ratio  # Interval edge: valley + ratio (peak - valley).
  config.spot.workers = 0  # Optical-flow threads; 0 = every core.
  config.spot.timelines = 3  # report.md: timelines of this many worst and best videos.
  config.spot.method = 'flow'  # flow (training-free optical-flow spotter) | learned (a classifier
  #                              on the magnified motion energy, trained LOSO; settings below).
  config.spot.learned = ml_collections.ConfigDict()  # The learned spotter (method 'learned').
  # The model's Eulerian magnifier (config.model.magnification's fields and defaults), run on the
  # aligned grayscale long-video frames at the working rate (~30 fps).
  config.spot.learned.magnification = get_model_config().magnification
  config.spot.learned.magnification.fs = params.WORKING_FPS  # The frames' rate (working rate).
  # EVM cut-off wavelength in pixels of the stored faces: the model's 16 at 224 px, scaled to the
  # 128 px faces the long-video datasets store.
  config.spot.learned.magnification.lambda_c = 9.0
  config.spot.learned.flow_features = True  # Also feed the flow spotter's micro/macro scores
  #                                           (the flow spotter's cost again; False: the
  #                                           magnified energy alone, ~50x faster, weaker on MEs).
  config.spot.learned.context = 24  # Frames on each side of a frame fed with it to the classifier.
  config.spot.learned.context_step = 3  # Every how many of those frames is fed.
  config.spot.learned.steps = 300  # Adam steps (full batch) per LOSO fold.
  config.spot.learned.learning_rate = 0.05  # Adam learning rate.
  config.spot.learned.l2 = 1e-2  # L2 penalty on the classifier's weights.
  # Thresholds p (T = mean + p (max - mean) of a video's probability curve); each held-out
  # subject's p is the best on the other subjects' videos (its own never seen).
  config.spot.learned.p_grid = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
  config.spot.learned.chunk = 64  # Frames per call of the jitted magnified-energy program.
  return config
