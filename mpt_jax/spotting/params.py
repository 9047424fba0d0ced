"""The training-free spotter's settings per dataset (no heavy imports: the configs read them).

Lags are in working-rate frames (about 30 fps), lengths in source frames.
"""

import dataclasses

WORKING_FPS = 30.0


@dataclasses.dataclass(frozen=True)
class SpotterParams:
  """Per-dataset settings (lags in working-rate frames, lengths in source frames)."""
  k_me: int = 6  # micro lag: about half the mean ME length (CAS(ME)^2: 6 at 30 fps)
  k_mae: int = 18  # macro lag (CAS(ME)^2: 18 at 30 fps)
  p: float = 0.55  # threshold T = mean + p (max - mean) of each video's score (SoftNet/MEAN)
  me_min: int = 7  # shortest ME, source frames (shorter intervals are dropped)
  me_max: int = 16  # longest ME, source frames (longer intervals are MaE)
  valley_ratio: float = 0.33  # interval edge: valley + ratio (peak - valley) (OF-FD)
  # 'relative': peaks above mean + p (max - mean) of each video's score; 'absolute': above p
  # (the learned spotter's scores are probabilities).
  threshold: str = 'relative'


# Lags from MTSN's published settings (k_micro / k_macro: 6 / 18 on CAS(ME)^2 at 30 fps, 37 / 111
# on SAMM-LV at 200 fps, i.e. 5 / 16 after the stride of 7); lengths from the MEGC2020 baseline's
# filter (CAS(ME)^2 ME 7-16 frames, SAMM-LV 47-105); p as SoftNet and MEAN threshold their scores.
PRESETS = {
    'casme2_longvideo': SpotterParams(k_me=6, k_mae=18, p=0.55, me_min=7, me_max=16),
    'samm_longvideo': SpotterParams(k_me=5, k_mae=16, p=0.55, me_min=47, me_max=105),
    # CAS(ME)^3 part A, 30 fps (its MEs are defined by onset -> apex <= 8 frames): as CAS(ME)^2.
    'casme3_longvideo': SpotterParams(k_me=6, k_mae=18, p=0.55, me_min=7, me_max=16),
}


def params_for(dataset: str, source_fps: float) -> SpotterParams:
  """The preset of a dataset, or (a video of its own) CAS(ME)^2's lengths scaled to its fps."""
  if dataset in PRESETS:
    return PRESETS[dataset]
  scale = float(source_fps) / WORKING_FPS
  base = PRESETS['casme2_longvideo']
  return dataclasses.replace(base, me_min=max(2, int(round(base.me_min * scale))),
                             me_max=int(round(base.me_max * scale)))




def working_stride(source_fps: float, target: float = WORKING_FPS) -> int:
  """Every how many source frames one is kept for a working rate near ``target`` (200 -> 7)."""
  return max(1, int(round(float(source_fps) / target)))
