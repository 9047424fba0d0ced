"""The realistic synthetic benchmark: real face photos warped by 1-2 px regional motions, 3 classes.

``tfds_builders/synthetic_faces.py`` (16 subjects x 3 classes x 3 clips, 64 px, 100 fps), built
offline from the face photographs that ship with scikit-image. The model and training are those of
the demo (``configs/synthetic.py``: the small ViT trained from scratch at 64 px, full MPT);
``:smoke`` is the tiny test variant (12 subjects x 3 classes x 2 clips, 32 px, 2 epochs).

  python main.py --mode=prepare --config=configs/synthetic_faces.py
  python main.py --mode=study --study=prompts --seeds=5 --config=configs/synthetic_faces.py \
      --workdir=runs/study_faces
"""

from configs import common
from configs import synthetic


def get_config(arg=None):
  config = synthetic.get_config(arg)  # the demo's model and training (or its smoke variant)
  config.data.name = 'synthetic_faces'
  smoke = 'smoke' in common.parse_arg(arg)[0]
  config.data.builder_config = 'small' if smoke else 'default'
  config.data.num_classes = 3  # negative, positive, surprise
  return config
