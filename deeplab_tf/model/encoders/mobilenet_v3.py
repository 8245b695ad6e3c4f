"""MobileNetV3 (large and small, segmentation versions) and EdgeTPU-MobileNet as DeepLab uses them.

Sources: research/slim `nets/mobilenet/mobilenet_v3.py` (V3_LARGE, V3_SMALL, V3_EDGETPU, `mbv3_op`,
`mbv3_fused`, `hard_swish`, the squeeze-excite `_se4`), `mobilenet.py` (`mobilenet_base`: output_stride,
`depth_multiplier`), `conv_blocks.py` (`expanded_conv`, `squeeze_excite`), and research/deeplab
`core/feature_extractor.py` (`mobilenet_v3_large_seg`, `mobilenet_v3_small_seg`, `mobilenet_edgetpu`,
their final end points, decoder end points, scopes and preprocessing); "Searching for MobileNetV3"
(Howard et al., ICCV 2019), section 6.3 for the segmentation changes.

- Blocks (`expanded_conv[_N]`): a 1x1 `expand` conv (BN + the block's activation; absent when the
  expansion `_make_divisible(in * ef, 8)` is not larger than the input), a kxk `depthwise` conv carrying
  the stride and atrous rate (BN + activation; its output is `layer_N/depthwise_output`), an optional
  squeeze-and-excite (`squeeze_excite/Conv`: global mean, 1x1 conv with bias to
  `_make_divisible(expansion / 4, 8)` channels + ReLU; `squeeze_excite/Conv_1`: 1x1 conv with bias back
  + hard sigmoid `relu6(x + 3) * 0.16667`; multiplies the depthwise output), a 1x1 `project` conv (BN,
  no activation), plus the input when the stride is 1 and the depth unchanged (and `residual`).
  EdgeTPU's early "fused" blocks (`mbv3_fused`) replace expand + depthwise by one kxk `expand` conv
  carrying the stride (so no depthwise output).
- Activations: V3 uses ReLU or hard-swish `x * relu6(x + 3) / 6` per block, hard-swish in the first and
  last convs; EdgeTPU uses ReLU throughout (the conv_defs' defaults override DeepLab's ReLU6 arg scope).
- Segmentation versions (`feature_extractor`): the last block's filters halved (large: layers 14-16 to
  80 channels with expansions 336/480/480 and the last 1x1 conv to 480; small: layers 10-12 to 48 with
  expansions 144/288/288, last conv to 288); the network stops at `layer_17` (large), `layer_13`
  (small), `layer_24` (EdgeTPU: the 1x1/1280 conv): no pooling or classifier.
- Padding 'SAME' everywhere (no explicit padding); BN decay 0.997, epsilon 1e-3 (DeepLab's
  `mobilenet_v2_arg_scope`); widths `_make_divisible(n * depth_multiplier, 8, 8)` (DeepLab drops its
  `divisible_by` for these networks).
- output_stride (`mobilenet_base`): once the running stride equals output_stride, later strides become
  atrous rates; 1x1 convs never get a rate.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Tuple

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.activations import activation_layer
from deeplab_tf.model.encoders.mobilenet_v2 import MOBILENET_BN, MOBILENET_INITIALIZER_STDDEV, make_divisible

RELU = "relu"
HARD_SWISH = "hard_swish"
SQUEEZE_FACTOR = 4  # mobilenet_v3.squeeze_excite's squeeze_factor.


@dataclasses.dataclass(frozen=True)
class Op:
  """One entry of a conv_defs spec: a plain conv (`expansion=None`) or an expanded_conv block."""

  num_outputs: float
  kernel_size: int
  stride: int = 1
  expansion: Optional[float] = None  # Expansion factor of the input channels; None for a plain conv.
  activation: str = RELU
  squeeze_excite: bool = False
  fused: bool = False
  residual: bool = True


def _conv(n, k, s=1, act=RELU):
  return Op(n, k, s, activation=act)


def _mbv3(ef, n, k, s=1, act=RELU, se=False, fused=False, residual=True):
  return Op(n, k, s, ef, act, se, fused, residual)


_HS = HARD_SWISH
# mobilenet_v3.V3_LARGE up to its 1x1/960 conv (the pooling and 1280 conv follow, never built here).
V3_LARGE = (
    _conv(16, 3, 2, _HS),
    _mbv3(1, 16, 3), _mbv3(4, 24, 3, 2), _mbv3(3, 24, 3),
    _mbv3(3, 40, 5, 2, se=True), _mbv3(3, 40, 5, se=True), _mbv3(3, 40, 5, se=True),
    _mbv3(6, 80, 3, 2, _HS), _mbv3(2.5, 80, 3, act=_HS), _mbv3(184 / 80., 80, 3, act=_HS),
    _mbv3(184 / 80., 80, 3, act=_HS),
    _mbv3(6, 112, 3, act=_HS, se=True), _mbv3(6, 112, 3, act=_HS, se=True),
    _mbv3(6, 160, 5, 2, _HS, se=True), _mbv3(6, 160, 5, act=_HS, se=True),
    _mbv3(6, 160, 5, act=_HS, se=True),
    _conv(960, 1, act=_HS),
)
# mobilenet_v3.V3_SMALL up to its 1x1/576 conv.
V3_SMALL = (
    _conv(16, 3, 2, _HS),
    _mbv3(1, 16, 3, 2, se=True), _mbv3(72. / 16, 24, 3, 2), _mbv3(88. / 24, 24, 3),
    _mbv3(4, 40, 5, 2, _HS, se=True), _mbv3(6, 40, 5, act=_HS, se=True),
    _mbv3(6, 40, 5, act=_HS, se=True),
    _mbv3(3, 48, 5, act=_HS, se=True), _mbv3(3, 48, 5, act=_HS, se=True),
    _mbv3(6, 96, 5, 2, _HS, se=True), _mbv3(6, 96, 5, act=_HS, se=True),
    _mbv3(6, 96, 5, act=_HS, se=True),
    _conv(576, 1, act=_HS),
)
# mobilenet_v3.V3_EDGETPU (`mbv3_fused` blocks first).
V3_EDGETPU = (
    (_conv(32, 3, 2),
     _mbv3(1, 16, 3, 1, fused=True), _mbv3(8, 32, 3, 2, fused=True))
    + (_mbv3(4, 32, 3, fused=True),) * 3 + (_mbv3(8, 48, 3, 2, fused=True),)
    + (_mbv3(4, 48, 3, fused=True),) * 3 + (_mbv3(8, 96, 3, 2),) + (_mbv3(4, 96, 3),) * 3
    + (_mbv3(8, 96, 3, residual=False),) + (_mbv3(4, 96, 3),) * 3 + (_mbv3(8, 160, 5, 2),)
    + (_mbv3(4, 160, 5),) * 3 + (_mbv3(8, 192, 3), _conv(1280, 1))
)


def _segmentation_spec(spec: Tuple[Op, ...], changes) -> Tuple[Op, ...]:
  """feature_extractor.mobilenet_v3_{large,small}_seg: halve the last block's filters and re-set the
  expansions to `expansion / previous num_outputs` (`changes`: (0-based layer, expansion or None))."""
  spec = list(spec)
  for index, expansion in changes:
    spec[index] = dataclasses.replace(spec[index], num_outputs=spec[index].num_outputs / 2)
    if expansion is not None:
      spec[index] = dataclasses.replace(spec[index],
                                        expansion=expansion / spec[index - 1].num_outputs)
  return tuple(spec)


@dataclasses.dataclass(frozen=True)
class MobileNetV3Variant:
  """One model_variant: scope, spec up to DeepLab's final end point, decoder end points."""

  scope: str
  spec: Tuple[Op, ...]
  decoder_end_points: Dict[int, str]


MOBILENET_V3_VARIANTS = {
    "mobilenet_v3_large_seg": MobileNetV3Variant(
        "MobilenetV3",
        _segmentation_spec(V3_LARGE, ((13, 336), (14, 480), (15, 480), (16, None)))[:17],
        {4: "layer_4/depthwise_output", 8: "layer_7/depthwise_output",
         16: "layer_13/depthwise_output"}),
    "mobilenet_v3_small_seg": MobileNetV3Variant(
        "MobilenetV3",
        _segmentation_spec(V3_SMALL, ((9, 144), (10, 288), (11, 288), (12, None)))[:13],
        {4: "layer_2/depthwise_output", 8: "layer_4/depthwise_output",
         16: "layer_9/depthwise_output"}),
    # networks_to_feature_maps has no entry for it: no decoder.
    "mobilenet_edgetpu": MobileNetV3Variant("MobilenetEdgeTPU", V3_EDGETPU[:24], {}),
}


def _initializer():
  return keras.initializers.TruncatedNormal(stddev=MOBILENET_INITIALIZER_STDDEV)


def _conv_bn(x, filters: int, kernel_size: int, stride: int, rate: int, scope: str,
             activation: Optional[str]):
  """slim.conv2d, 'SAME' padding, no bias, BN, then `activation` (or none)."""
  x = keras.layers.Conv2D(filters, kernel_size, strides=stride, dilation_rate=rate, padding="same",
                          use_bias=False, kernel_initializer=_initializer(),
                          name=layers.scope_to_layer_name(scope))(x)
  x = layers.batch_norm(x, scope, MOBILENET_BN)
  if activation is None:
    return x
  return activation_layer(activation, layers.scope_to_layer_name(f"{scope}/{activation}"))(x)


def squeeze_excite(x, scope: str):
  """conv_blocks.squeeze_excite as mobilenet_v3's `_se4` configures it.

  Args:
    x: `[batch, height, width, channels]` depthwise output.
    scope: `<block scope>/squeeze_excite`.

  Returns:
    `x * hard_sigmoid(conv(relu(conv(mean(x)))))`, same shape as `x`.
  """
  channels = x.shape[-1]
  squeeze = make_divisible(channels / SQUEEZE_FACTOR, 8)
  name = layers.scope_to_layer_name(scope)
  pooled = keras.layers.GlobalAveragePooling2D(keepdims=True, name=name + ".mean")(x)
  gate = keras.layers.Conv2D(squeeze, 1, use_bias=True, activation="relu",
                             kernel_initializer=_initializer(), name=name + ".Conv")(pooled)
  gate = keras.layers.Conv2D(channels, 1, use_bias=True, kernel_initializer=_initializer(),
                             name=name + ".Conv_1")(gate)
  gate = activation_layer("hard_sigmoid", name + ".hard_sigmoid")(gate)
  return keras.layers.Multiply(name=name + ".gate")([x, gate])


def expanded_conv(x, op: Op, num_outputs: int, stride: int, rate: int, scope: str):
  """One block (`conv_blocks.expanded_conv` with `mbv3_op` / `mbv3_fused` settings).

  Args:
    x: `[batch, height, width, channels]` input.
    op: the block's spec entry.
    num_outputs: output channels (after the depth multiplier).
    stride: depthwise stride (1 or 2), after output_stride folding; a fused block's expand conv keeps
      `op.stride`, as the original's `functools.partial(slim.conv2d, stride=s)` does.
    rate: depthwise atrous rate.
    scope: `<network scope>/expanded_conv[_N]`.

  Returns:
    `(output, depthwise_output)`: `[batch, ceil(height / stride), ceil(width / stride), num_outputs]`
    and the depthwise conv's activated output (None for a fused block).
  """
  inputs = x
  expansion = make_divisible(x.shape[-1] * op.expansion, 8)  # expand_input_by_factor(ef).
  if expansion > x.shape[-1]:
    if op.fused:
      x = _conv_bn(x, expansion, op.kernel_size, op.stride, 1, scope + "/expand", op.activation)
    else:
      x = _conv_bn(x, expansion, 1, 1, 1, scope + "/expand", op.activation)
  depthwise_output = None
  if not op.fused:
    x = keras.layers.DepthwiseConv2D(op.kernel_size, strides=stride, dilation_rate=rate,
                                     padding="same", depth_multiplier=1, use_bias=False,
                                     depthwise_initializer=_initializer(),
                                     name=layers.scope_to_layer_name(scope + "/depthwise"))(x)
    x = layers.batch_norm(x, scope + "/depthwise", MOBILENET_BN)
    x = depthwise_output = activation_layer(
        op.activation, layers.scope_to_layer_name(f"{scope}/depthwise/{op.activation}"))(x)
  if op.squeeze_excite:
    x = squeeze_excite(x, scope + "/squeeze_excite")
  x = _conv_bn(x, num_outputs, 1, 1, 1, scope + "/project", None)
  if op.residual and stride == 1 and x.shape[-1] == inputs.shape[-1]:
    x = keras.layers.Add(name=layers.scope_to_layer_name(scope + "/add"))([x, inputs])
  return x, depthwise_output


def build_mobilenet_v3(images, model_variant: str, output_stride: int,
                       depth_multiplier: float = 1.0) -> Dict[str, object]:
  """Builds one of DeepLab's MobileNetV3 / EdgeTPU encoders on preprocessed images.

  Args:
    images: `[batch, height, width, 3]` float tensor in [-1, 1].
    model_variant: 'mobilenet_v3_large_seg', 'mobilenet_v3_small_seg' or 'mobilenet_edgetpu'.
    output_stride: 8, 16 or 32.
    depth_multiplier: width multiplier (> 0), e.g. 0.75 for EdgeTPU-DeepLab-slim.

  Returns:
    `{"encoder_output": [batch, ceil(h/os), ceil(w/os), 480 | 288 | 1280 (x dm)], "layer_N",
    "layer_N/depthwise_output", "decoder_end_point/<stride>" and "low_level" where the original
    defines decoder end points}`.

  Raises:
    ValueError: unknown variant, a non-positive depth_multiplier, or an output_stride the network
      cannot reach (or that would need a fused EdgeTPU block to drop its stride).
  """
  if model_variant not in MOBILENET_V3_VARIANTS:
    raise ValueError(f"model_variant={model_variant!r}: expected one of "
                     f"{sorted(MOBILENET_V3_VARIANTS)}.")
  if depth_multiplier <= 0:
    raise ValueError(f"depth_multiplier={depth_multiplier}: expected a positive multiplier.")
  if output_stride % 2 or output_stride > 32:
    raise ValueError(f"output_stride={output_stride}: {model_variant} supports 2, 4, 8, 16 or 32.")
  variant = MOBILENET_V3_VARIANTS[model_variant]
  endpoints: Dict[str, object] = {}
  current_stride, rate = 1, 1
  net = images
  counts = {"Conv": 0, "expanded_conv": 0}
  for i, op in enumerate(variant.spec):
    if current_stride == output_stride:
      layer_stride, layer_rate = 1, rate
      rate *= op.stride
    else:
      layer_stride, layer_rate = op.stride, 1
      current_stride *= op.stride
    base = "Conv" if op.expansion is None else "expanded_conv"
    scope = f"{variant.scope}/{base}" + (f"_{counts[base]}" if counts[base] else "")
    counts[base] += 1
    num_outputs = make_divisible(op.num_outputs * depth_multiplier, 8, 8)
    if op.expansion is None:
      net = _conv_bn(net, num_outputs, op.kernel_size, layer_stride,
                     layer_rate if op.kernel_size > 1 else 1, scope, op.activation)
    else:
      if op.fused and layer_stride != op.stride:
        raise ValueError(f"output_stride={output_stride}: {model_variant}'s fused block {scope} "
                         "cannot trade its stride for an atrous rate (the original keeps the stride).")
      net, depthwise_output = expanded_conv(net, op, num_outputs, layer_stride, layer_rate, scope)
      if depthwise_output is not None:
        endpoints[f"layer_{i + 1}/depthwise_output"] = depthwise_output
    endpoints[f"layer_{i + 1}"] = net
  if current_stride != output_stride:
    raise ValueError(f"output_stride={output_stride} cannot be reached by {model_variant}.")
  for stride, name in variant.decoder_end_points.items():
    endpoints[f"decoder_end_point/{stride}"] = endpoints[name]
  if 4 in variant.decoder_end_points:
    endpoints["low_level"] = endpoints["decoder_end_point/4"]
  endpoints["encoder_output"] = net
  return endpoints
