"""The version of the prepared datasets: ``tfds_builders.me_builder.MEBuilder.VERSION``.

Kept in a module that imports nothing, so that code which must start fast without TensorFlow
Datasets (the resampled cache's lookup in ``input_pipeline.load``) can check it. Bump it (and add
a release note to ``MEBuilder.RELEASE_NOTES``) whenever the stored examples change.
"""

DATASET_VERSION = '2.2.0'
