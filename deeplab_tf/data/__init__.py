"""Data: TFRecord format, dataset descriptors, augmentation, input pipelines, shard writing.

`data/` knows nothing of models (docs/ARCHITECTURE.md, "Arrows"). Import the submodules directly, e.g.
`from deeplab_tf.data.pipeline import build_dataset`.
"""
