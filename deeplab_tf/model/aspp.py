"""Atrous Spatial Pyramid Pooling with image-level features (DeepLabv3, section 3.3).

As research/deeplab builds it (`model.py`, `extract_features`): an image-pooling branch (average pool,
1x1 conv + BN + ReLU, bilinear resize back), a 1x1 branch `aspp0`, one 3x3 atrous branch per rate
(`aspp1..N`, depthwise-separable with BN + ReLU after both halves when `aspp_with_separable_conv`,
DeepLabv3+ section 3.2), concatenated and projected by `concat_projection` (1x1 conv + BN + ReLU),
then dropout with keep probability 0.9 during training. Every conv has `aspp_convs_filters` (256)
channels.

The newest common.py head flags (MobileNetV3's "Lite R-ASPP", "Searching for MobileNetV3", section
6.3): `aspp_with_squeeze_and_excitation` turns the image-pooling conv into a gate (bias, no BN,
sigmoid or `image_se_uses_qsigmoid`'s hard sigmoid) that multiplies the head's output instead of being
a branch; `aspp_with_concat_projection=False` drops the projection (and its dropout);
`use_bounded_activation` makes every ReLU a ReLU6.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.image_ops import scale_dimension
from deeplab_tf.model import layers
from deeplab_tf.model.activations import activation_layer
from deeplab_tf.model.layers import BatchNormParams
from deeplab_tf.options import ModelOptions

# The head's BatchNorm (`model.py`: decay 0.9997, epsilon 1e-5).
HEAD_BN = BatchNormParams(decay=0.9997, epsilon=1e-5)
# The default `aspp_convs_filters`.
ASPP_DEPTH = 256


IMAGE_POOLING_LAYER_NAME = "image_pooling.pool"


@keras.saving.register_keras_serializable(package="deeplab_tf")
class ImagePooling(keras.layers.AveragePooling2D):
  """The original's image-pooling window for a given crop: VALID average pooling of
  `scale_dimension(crop_size, 1 / output_stride)` pixels (research/deeplab `model.py`,
  `extract_features`).

  It keeps `crop_size` and `output_stride` so that multi-scale inference can rebuild the window for
  a scaled crop, as the original's `multi_scale_logits` does with `image_pooling_crop_size`.
  """

  def __init__(self, crop_size, output_stride, strides=(1, 1), **kwargs):
    kwargs.pop("pool_size", None)
    kwargs.pop("padding", None)
    self.crop_size = tuple(int(d) for d in crop_size)
    self.output_stride = int(output_stride)
    super().__init__(pool_size=tuple(scale_dimension(d, 1.0 / self.output_stride)
                                     for d in self.crop_size),
                     strides=tuple(strides), padding="valid", **kwargs)

  def get_config(self):
    return {**super().get_config(), "crop_size": self.crop_size, "output_stride": self.output_stride}


@keras.saving.register_keras_serializable(package="deeplab_tf")
class GlobalImagePooling(keras.layers.Layer):
  """Image-level features as the original computes them: `[batch, h, w, c]` -> `[batch, 1, 1, c]`.

  research/deeplab (`model.py`, `extract_features`) pools with `slim.avg_pool2d` (AvgPool, VALID)
  whose window is the whole feature map of the crop it was given, and with `tf.reduce_mean` only when
  no crop size is known. This layer does the same: AvgPool over the whole map where its height and
  width are known when the graph is built (training crops, fixed-size exports, inference traced at
  one size), the mean where they are not. The two give the same value but round differently (about
  5e-6 at that branch's output, which one training step with hard pixel mining amplified to
  gradients 2.5e-3 away from the original's); with AvgPool they agree to about 1e-6.
  """

  def call(self, inputs):
    height, width = inputs.shape[1], inputs.shape[2]
    if height is not None and width is not None:
      return tf.nn.avg_pool2d(inputs, [height, width], [1, 1], "VALID")
    return tf.reduce_mean(inputs, axis=[1, 2], keepdims=True)

  def compute_output_shape(self, input_shape):
    return (input_shape[0], 1, 1, input_shape[3])


def relu_max_value(options: ModelOptions):
  """The head's ReLU cap: 6 with `use_bounded_activation` (ReLU6), else None (ReLU)."""
  return 6.0 if options.use_bounded_activation else None


def build_aspp(features, options: ModelOptions):
  """Builds ASPP on the encoder output.

  Args:
    features: `[batch, h, w, channels]` encoder output (h, w = input size / output_stride, rounded up).
    options: uses `add_image_level_feature`, `image_pooling_crop_size`, `image_pooling_stride`,
      `output_stride`, `atrous_rates`, `aspp_with_separable_conv`, `aspp_convs_filters`,
      `aspp_with_concat_projection`, `aspp_with_squeeze_and_excitation`, `image_se_uses_qsigmoid`,
      `use_bounded_activation`.

  Returns:
    `[batch, h, w, aspp_convs_filters]` float tensor (`[batch, h, w, branches x aspp_convs_filters]`
    without the concat projection).
  """
  depth = options.aspp_convs_filters
  cap = relu_max_value(options)
  branches = []
  gate = None
  if options.add_image_level_feature:
    if options.image_pooling_crop_size is not None:
      # The original during training: a VALID window as large as the training crop's feature map.
      pooled = ImagePooling(options.image_pooling_crop_size, options.output_stride,
                            options.image_pooling_stride, name=IMAGE_POOLING_LAYER_NAME)(features)
    else:
      pooled = GlobalImagePooling(name=IMAGE_POOLING_LAYER_NAME)(features)
    if options.aspp_with_squeeze_and_excitation:
      pooled = layers.conv2d_same(pooled, depth, 1, 1, 1, "image_pooling", bn_params=None,
                                  activation=False)
      kind = "hard_sigmoid" if options.image_se_uses_qsigmoid else "sigmoid"
      pooled = activation_layer(kind, f"image_pooling.{kind}")(pooled)
      gate = layers.ResizeLike(name="image_pooling.resize")([pooled, features])
    else:
      pooled = layers.conv2d_same(pooled, depth, 1, 1, 1, "image_pooling", bn_params=HEAD_BN,
                                  relu_max_value=cap)
      branches.append(layers.ResizeLike(name="image_pooling.resize")([pooled, features]))

  branches.append(layers.conv2d_same(features, depth, 1, 1, 1, "aspp0", bn_params=HEAD_BN,
                                     relu_max_value=cap))
  for i, rate in enumerate(options.atrous_rates or (), 1):
    if options.aspp_with_separable_conv:
      branches.append(layers.split_separable_conv2d(features, depth, f"aspp{i}", rate=rate,
                                                    bn_params=HEAD_BN, relu_max_value=cap))
    else:
      branches.append(layers.conv2d_same(features, depth, 3, 1, rate, f"aspp{i}",
                                         bn_params=HEAD_BN, relu_max_value=cap))
  x = keras.layers.Concatenate(axis=-1, name="aspp.concat")(branches) if len(branches) > 1 else branches[0]
  if options.aspp_with_concat_projection:
    x = layers.conv2d_same(x, depth, 1, 1, 1, "concat_projection", bn_params=HEAD_BN,
                           relu_max_value=cap)
    x = layers.HashDropout(0.1, name="concat_projection_dropout")(x)
  if gate is not None:
    x = keras.layers.Multiply(name="image_pooling.gate")([x, gate])
  return x
