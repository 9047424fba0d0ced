"""Spotting macro- and micro-expressions in long videos, and the MEGC spotting / STR metrics.

* :mod:`mpt_jax.spotting.metrics`: the MEGC interval metric (IoU >= 0.5 on closed frame intervals,
  counts pooled over a dataset, MaE / ME / overall precision, recall, F1) and STRS.
* :mod:`mpt_jax.spotting.spotter`: the training-free optical-flow spotter.
* :mod:`mpt_jax.spotting.run`: ``--mode=spot`` over a prepared long-video dataset or one video.
"""
