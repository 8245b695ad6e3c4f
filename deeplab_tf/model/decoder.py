"""The DeepLabv3+ decoder (DeepLabv3+, section 3.1; research/deeplab `model.py`, `refine_by_decoder`).

The low-level feature (output stride 4) is projected to 48 channels (`decoder/feature_projection0`,
1x1 conv + BN + ReLU), the ASPP output is bilinearly resized (align_corners=True) to its size, both are
concatenated (304 channels) and refined by two 3x3 convs of 256 channels with BN + ReLU
(`decoder/decoder_conv0`, `decoder/decoder_conv1`, depthwise-separable when
`decoder_use_separable_conv`; otherwise `decoder/decoder_conv0/decoder_conv0_{1,2}` as `slim.repeat`
names them).
"""

from __future__ import annotations

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.aspp import HEAD_BN

DECODER_DEPTH = 256
PROJECTED_FILTERS = 48


def build_decoder(features, low_level, use_separable_conv: bool = True):
  """Refines the ASPP output with the low-level feature.

  The original resizes to `scale_dimension(crop, 1 / 4)`, which equals the low-level feature's own size
  for every input size (both are `(size - 1) // 4 + 1` after two fixed-padded stride-2 layers), so we
  resize to the low-level feature's size.

  Args:
    features: `[batch, h, w, 256]` ASPP output.
    low_level: `[batch, H4, W4, c]` encoder feature at output stride 4.
    use_separable_conv: depthwise-separable 3x3 convs.

  Returns:
    `[batch, H4, W4, 256]` float tensor.
  """
  projected = layers.conv2d_same(low_level, PROJECTED_FILTERS, 1, 1, 1, "decoder/feature_projection0",
                                 bn_params=HEAD_BN)
  upsampled = layers.ResizeLike(name="decoder.resize")([features, projected])
  x = keras.layers.Concatenate(axis=-1, name="decoder.concat")([upsampled, projected])
  for j in range(2):
    if use_separable_conv:
      x = layers.split_separable_conv2d(x, DECODER_DEPTH, f"decoder/decoder_conv{j}", bn_params=HEAD_BN)
    else:
      x = layers.conv2d_same(x, DECODER_DEPTH, 3, 1, 1, f"decoder/decoder_conv0/decoder_conv0_{j + 1}",
                             bn_params=HEAD_BN)
  return x
