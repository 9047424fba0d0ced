"""TFDS builders for micro-expression datasets; importing this package registers all of them.

Registered names: ``casme2``, ``samm``, ``smic``, ``megc2019_composite``, ``casme3``, the built-in
``synthetic_me`` and ``synthetic_faces``, and the long-video (spotting) datasets
``casme2_longvideo``, ``samm_longvideo`` and ``casme3_longvideo``. Prepare them with ``python
main.py --mode=prepare --config=...`` (no apache-beam).
"""

from tfds_builders.casme2 import Casme2
from tfds_builders.casme2_longvideo import Casme2Longvideo
from tfds_builders.casme3 import Casme3
from tfds_builders.casme3_longvideo import Casme3Longvideo
from tfds_builders.megc2019_composite import Megc2019Composite
from tfds_builders.samm import Samm
from tfds_builders.samm_longvideo import SammLongvideo
from tfds_builders.smic import Smic
from tfds_builders.synthetic import SyntheticMe
from tfds_builders.synthetic_faces import SyntheticFaces

BUILDERS = {b.name: b for b in (Casme2, Samm, Smic, Megc2019Composite, Casme3, SyntheticMe,
                                 SyntheticFaces, Casme2Longvideo, SammLongvideo, Casme3Longvideo)}
