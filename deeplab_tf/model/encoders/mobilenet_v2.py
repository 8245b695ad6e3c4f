"""MobileNetV2 as DeepLab uses it (research/slim `nets/mobilenet/{mobilenet_v2,mobilenet,conv_blocks}.py`,
research/deeplab `core/feature_extractor.py` `_mobilenet_v2`).

- `V2_DEF`: a 3x3/2 conv `Conv` (32) then 17 inverted-residual blocks `expanded_conv[_N]`: 1x1
  `expand` (BN + ReLU6, absent when the expansion would not add channels, i.e. in the first block),
  3x3 `depthwise` carrying the stride and atrous rate (BN + ReLU6), 1x1 `project` (BN, no activation),
  plus the input when the block's stride is 1 and the depth is unchanged. DeepLab stops at `layer_18`
  (`_MOBILENET_V2_FINAL_ENDPOINT`): the final 1x1/1280 conv is not built, the output has 320 channels
  (x depth_multiplier).
- Padding: every conv is 'SAME', strided ones included. `mobilenet_base` pads explicitly only with
  `use_explicit_padding=True`, which DeepLab never passes, so unlike Xception and ResNet there is no
  fixed padding here (on even inputs 'SAME' puts the odd padding pixel at the end).
- output_stride (`mobilenet_base`): once the running product of strides equals output_stride, every
  later layer has stride 1 and the rate is multiplied by the stride it replaced; the layer that drops
  its stride keeps the current rate (DeepLabv3, section 3.1).
- Widths: `num_outputs` -> `_make_divisible(num_outputs * depth_multiplier, divisible_by, min_depth)`
  with, in DeepLab, `divisible_by` = 8 if depth_multiplier == 1 else 1 (unless given) and `min_depth`
  = 8 if depth_multiplier == 1 else 1; expansions are `_make_divisible(input_channels * 6, 8)`.
- BN: decay 0.997 (`training_scope` default, DeepLab passes no bn_decay), epsilon 1e-3 (slim's
  default: `training_scope` sets none), with scale; weights truncated normal stddev 0.09.
"""

from __future__ import annotations

from typing import Dict, Optional

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.layers import BatchNormParams

MOBILENET_BN = BatchNormParams(decay=0.997, epsilon=1e-3)
MOBILENET_INITIALIZER_STDDEV = 0.09
SCOPE = "MobilenetV2"

# (stride, num_outputs, expansion factor) of V2_DEF's expanded_conv layers (layers 2..18); the
# first layer (`Conv`, 3x3/2, 32) precedes them. Expansion factor 1 in the first block.
_BLOCKS = (
    (1, 16, 1),
    (2, 24, 6), (1, 24, 6),
    (2, 32, 6), (1, 32, 6), (1, 32, 6),
    (2, 64, 6), (1, 64, 6), (1, 64, 6), (1, 64, 6),
    (1, 96, 6), (1, 96, 6), (1, 96, 6),
    (2, 160, 6), (1, 160, 6), (1, 160, 6),
    (1, 320, 6),
)

# `networks_to_feature_maps["mobilenet_v2"]`; layer_N is the N-th op of V2_DEF (one-based): layer_1 = Conv,
# layer_2 = expanded_conv, layer_4 = expanded_conv_2 (24 channels, expanded to 144, at stride 4).
DECODER_END_POINTS = {4: "layer_4/depthwise_output", 8: "layer_7/depthwise_output",
                      16: "layer_14/depthwise_output"}


def make_divisible(value: float, divisor: int, min_value: Optional[int] = None) -> int:
  """`_make_divisible` of nets/mobilenet: round to a multiple of `divisor`, never down by > 10%."""
  if min_value is None:
    min_value = divisor
  new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


def _initializer():
  return keras.initializers.TruncatedNormal(stddev=MOBILENET_INITIALIZER_STDDEV)


def _relu6(x, scope: str):
  return keras.layers.ReLU(max_value=6.0, name=layers.scope_to_layer_name(scope + "/relu6"))(x)


def _conv_bn(x, filters: int, kernel_size: int, stride: int, scope: str, activation: bool):
  """slim.conv2d with 'SAME' padding (no bias), BN, optional ReLU6."""
  x = keras.layers.Conv2D(filters, kernel_size, strides=stride, padding="same", use_bias=False,
                          kernel_initializer=_initializer(), name=layers.scope_to_layer_name(scope))(x)
  x = layers.batch_norm(x, scope, MOBILENET_BN)
  return _relu6(x, scope) if activation else x


def expanded_conv(x, num_outputs: int, expansion_size: int, stride: int, rate: int, scope: str):
  """One inverted-residual block (`conv_blocks.expanded_conv` with DeepLab's defaults).

  Args:
    x: `[batch, height, width, channels]` input.
    num_outputs: output channels.
    expansion_size: channels of the expanded representation; no `expand` conv when it is not larger
      than the input's.
    stride: depthwise stride (1 or 2); must be 1 when `rate` > 1.
    rate: depthwise atrous rate.
    scope: `MobilenetV2/expanded_conv[_N]`.

  Returns:
    `(output, depthwise_output)`: `[batch, ceil(height / stride), ceil(width / stride), num_outputs]`
    and the depthwise conv's activated output `[..., expansion channels]`.
  """
  inputs = x
  if expansion_size > x.shape[-1]:
    x = _conv_bn(x, expansion_size, 1, 1, scope + "/expand", activation=True)
  x = keras.layers.DepthwiseConv2D(3, strides=stride, dilation_rate=rate, padding="same",
                                   depth_multiplier=1, use_bias=False,
                                   depthwise_initializer=_initializer(),
                                   name=layers.scope_to_layer_name(scope + "/depthwise"))(x)
  x = layers.batch_norm(x, scope + "/depthwise", MOBILENET_BN)
  depthwise_output = _relu6(x, scope + "/depthwise")
  x = _conv_bn(depthwise_output, num_outputs, 1, 1, scope + "/project", activation=False)
  if stride == 1 and x.shape[-1] == inputs.shape[-1]:
    x = keras.layers.Add(name=layers.scope_to_layer_name(scope + "/add"))([x, inputs])
  return x, depthwise_output


def build_mobilenet_v2(images, output_stride: int, depth_multiplier: float = 1.0,
                       divisible_by: Optional[int] = None) -> Dict[str, object]:
  """Builds DeepLab's MobileNetV2 encoder (up to layer_18) on preprocessed images.

  Args:
    images: `[batch, height, width, 3]` float tensor in [-1, 1].
    output_stride: 8, 16 or 32.
    depth_multiplier: width multiplier (> 0), e.g. 0.5.
    divisible_by: channel rounding; None for DeepLab's default (8 at depth_multiplier 1, else 1).

  Returns:
    `{"low_level": layer_4/depthwise_output [batch, ceil(h/4), ceil(w/4), 144 x dm],
    "encoder_output": [batch, ceil(h/os), ceil(w/os), 320 x dm], "layer_N", "layer_N/depthwise_output",
    "decoder_end_point/<stride>"}`.

  Raises:
    ValueError: a non-positive depth_multiplier, or an output_stride the network cannot reach.
  """
  if depth_multiplier <= 0:
    raise ValueError(f"depth_multiplier={depth_multiplier}: expected a positive multiplier.")
  if output_stride % 2 or output_stride > 32:
    raise ValueError(f"output_stride={output_stride}: MobileNetV2 supports 2, 4, 8, 16 or 32.")
  if divisible_by is None:
    divisible_by = 8 if depth_multiplier == 1.0 else 1
  min_depth = 8 if depth_multiplier == 1.0 else 1

  def depth(d):
    return make_divisible(d * depth_multiplier, divisible_by, min_depth)

  endpoints: Dict[str, object] = {}
  current_stride, rate = 1, 1

  def stride_and_rate(stride):
    nonlocal current_stride, rate
    if current_stride == output_stride:
      layer_rate = rate
      rate *= stride
      return 1, layer_rate
    current_stride *= stride
    return stride, 1

  layer_stride, _ = stride_and_rate(2)
  net = _conv_bn(images, depth(32), 3, layer_stride, f"{SCOPE}/Conv", activation=True)
  endpoints["layer_1"] = net
  for i, (stride, num_outputs, expansion) in enumerate(_BLOCKS):
    scope = f"{SCOPE}/expanded_conv" + (f"_{i}" if i else "")
    layer_stride, layer_rate = stride_and_rate(stride)
    in_channels = net.shape[-1]
    expansion_size = in_channels if expansion == 1 else make_divisible(in_channels * expansion, 8)
    net, depthwise_output = expanded_conv(net, depth(num_outputs), expansion_size, layer_stride,
                                          layer_rate, scope)
    endpoints[f"layer_{i + 2}"] = net
    endpoints[f"layer_{i + 2}/depthwise_output"] = depthwise_output
  if current_stride != output_stride:
    raise ValueError(f"output_stride={output_stride} cannot be reached by mobilenet_v2.")
  for stride, name in DECODER_END_POINTS.items():
    endpoints[f"decoder_end_point/{stride}"] = endpoints[name]
  endpoints["low_level"] = endpoints["decoder_end_point/4"]
  endpoints["encoder_output"] = net
  return endpoints
