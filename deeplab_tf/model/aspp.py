"""Atrous Spatial Pyramid Pooling with image-level features (DeepLabv3, section 3.3).

As research/deeplab builds it (`model.py`, `extract_features`): an image-pooling branch (average pool,
1x1 conv 256 + BN + ReLU, bilinear resize back), a 1x1 branch `aspp0`, one 3x3 atrous branch per rate
(`aspp1..N`, depthwise-separable with BN + ReLU after both halves when `aspp_with_separable_conv`,
DeepLabv3+ section 3.2), concatenated and projected by `concat_projection` (1x1 conv 256 + BN + ReLU),
then dropout with keep probability 0.9 during training.
"""

from __future__ import annotations

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.layers import BatchNormParams
from deeplab_tf.options import ModelOptions

# The head's BatchNorm (`model.py`: decay 0.9997, epsilon 1e-5).
HEAD_BN = BatchNormParams(decay=0.9997, epsilon=1e-5)
ASPP_DEPTH = 256


def scale_dimension(dim: int, scale: float) -> int:
  """research/deeplab's `scale_dimension`: `int((dim - 1) * scale + 1)`, e.g. 513 at 1/16 -> 33."""
  return int((float(dim) - 1.0) * scale + 1.0)


def build_aspp(features, options: ModelOptions):
  """Builds ASPP on the encoder output.

  Args:
    features: `[batch, h, w, channels]` encoder output (h, w = input size / output_stride, rounded up).
    options: uses `add_image_level_feature`, `image_pooling_crop_size`, `image_pooling_stride`,
      `output_stride`, `atrous_rates`, `aspp_with_separable_conv`.

  Returns:
    `[batch, h, w, 256]` float tensor.
  """
  branches = []
  if options.add_image_level_feature:
    if options.image_pooling_crop_size is not None:
      # The original during training: a VALID window as large as the training crop's feature map.
      pool_size = tuple(scale_dimension(d, 1.0 / options.output_stride)
                        for d in options.image_pooling_crop_size)
      pooled = keras.layers.AveragePooling2D(pool_size, strides=options.image_pooling_stride,
                                             padding="valid", name="image_pooling.pool")(features)
    else:
      pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name="image_pooling.pool")(features)
    pooled = layers.conv2d_same(pooled, ASPP_DEPTH, 1, 1, 1, "image_pooling", bn_params=HEAD_BN)
    branches.append(layers.ResizeLike(name="image_pooling.resize")([pooled, features]))

  branches.append(layers.conv2d_same(features, ASPP_DEPTH, 1, 1, 1, "aspp0", bn_params=HEAD_BN))
  for i, rate in enumerate(options.atrous_rates or (), 1):
    if options.aspp_with_separable_conv:
      branches.append(layers.split_separable_conv2d(features, ASPP_DEPTH, f"aspp{i}", rate=rate,
                                                    bn_params=HEAD_BN))
    else:
      branches.append(layers.conv2d_same(features, ASPP_DEPTH, 3, 1, rate, f"aspp{i}",
                                         bn_params=HEAD_BN))
  x = keras.layers.Concatenate(axis=-1, name="aspp.concat")(branches) if len(branches) > 1 else branches[0]
  x = layers.conv2d_same(x, ASPP_DEPTH, 1, 1, 1, "concat_projection", bn_params=HEAD_BN)
  return layers.HashDropout(0.1, name="concat_projection_dropout")(x)
