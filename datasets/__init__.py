"""Dataset converters (absl binaries) writing research/deeplab-format TFRecord shards.

Installed as `deeplab_tf.datasets` (console scripts `deeplab_build_voc_data`, `deeplab_build_cityscapes_data`,
`deeplab_build_ade20k_data`, `deeplab_build_folder_data`); from a checkout, `python -m datasets.<module>`
as in the original. Modules import each other relatively, so both names work.
"""
