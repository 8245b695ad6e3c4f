"""The DeepLabv3+ decoder (DeepLabv3+, section 3.1; research/deeplab `model.py`, `refine_by_decoder`).

The low-level feature (output stride 4) is projected to 48 channels (`decoder/feature_projection0`,
1x1 conv + BN + ReLU), the ASPP output is bilinearly resized (align_corners=True) to its size, both are
concatenated (304 channels) and refined by two 3x3 convs of `decoder_filters` (256) channels with BN +
ReLU (`decoder/decoder_conv0`, `decoder/decoder_conv1`, depthwise-separable when
`decoder_use_separable_conv`; otherwise `decoder/decoder_conv0/decoder_conv0_{1,2}` as `slim.repeat`
names them).

The newest common.py flags (`_decoder_with_sum_merge`): with `decoder_use_sum_merge` the projection has
`decoder_filters` channels and is added to ONE conv of the resized ASPP output (`decoder/decoder_conv0`,
3x3, or `decoder/decoder_split_sep_conv0` when separable); with `decoder_output_is_logits` every
decoder conv is 1x1 with a bias and no BN or activation (never separable) and the sum is the logits
(the MobileNetV3 model-zoo models). `use_bounded_activation` makes every ReLU a ReLU6.
"""

from __future__ import annotations

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.aspp import HEAD_BN, relu_max_value
from deeplab_tf.options import ModelOptions

DECODER_DEPTH = 256
PROJECTED_FILTERS = 48


def build_decoder(features, low_level, options: ModelOptions):
  """Refines the ASPP output with the low-level feature.

  The original resizes to `scale_dimension(crop, 1 / decoder_output_stride)`, which equals the
  low-level feature's own size for every input size (the encoders' strided layers all give
  `(size - 1) // stride + 1`), so we resize to the low-level feature's size.

  Args:
    features: `[batch, h, w, c]` ASPP output.
    low_level: `[batch, H, W, c_low]` encoder feature at `decoder_output_stride`.
    options: uses `decoder_use_separable_conv`, `decoder_use_sum_merge`, `decoder_filters`,
      `decoder_output_is_logits`, `use_bounded_activation`.

  Returns:
    `[batch, H, W, decoder_filters]` float tensor (the logits with `decoder_output_is_logits`).
  """
  filters = options.decoder_filters
  is_logits = options.decoder_output_is_logits
  separable = options.decoder_use_separable_conv and not is_logits
  # decoder_output_is_logits: 1x1 convs with a bias, no BN, no activation.
  bn_params = None if is_logits else HEAD_BN
  conv_kwargs = dict(bn_params=bn_params, activation=not is_logits,
                     relu_max_value=relu_max_value(options))
  projected_filters = filters if options.decoder_use_sum_merge else PROJECTED_FILTERS
  projected = layers.conv2d_same(low_level, projected_filters, 1, 1, 1, "decoder/feature_projection0",
                                 **conv_kwargs)
  upsampled = layers.ResizeLike(name="decoder.resize")([features, projected])
  if options.decoder_use_sum_merge:
    if separable:
      x = layers.split_separable_conv2d(upsampled, filters, "decoder/decoder_split_sep_conv0",
                                        bn_params=HEAD_BN, relu_max_value=relu_max_value(options))
    else:
      x = layers.conv2d_same(upsampled, filters, 1 if is_logits else 3, 1, 1, "decoder/decoder_conv0",
                             **conv_kwargs)
    return keras.layers.Add(name="decoder.sum")([x, projected])
  x = keras.layers.Concatenate(axis=-1, name="decoder.concat")([upsampled, projected])
  for j in range(2):
    if separable:
      x = layers.split_separable_conv2d(x, filters, f"decoder/decoder_conv{j}", bn_params=HEAD_BN,
                                        relu_max_value=relu_max_value(options))
    else:
      x = layers.conv2d_same(x, filters, 3, 1, 1, f"decoder/decoder_conv0/decoder_conv0_{j + 1}",
                             **conv_kwargs)
  return x
