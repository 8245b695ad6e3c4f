"""DeepLab's aligned, fully-convolutional Xception-41/65/71 (research/deeplab `core/xception.py`).

DeepLabv3+ (Chen et al. 2018, section 3.2) modifies Xception: deeper middle flow, every max-pool replaced
by a strided depthwise-separable conv, and BN + ReLU after each 3x3 depthwise conv. The original
implements the "xception module" as three separable convs whose stride (if any) sits on the third,
pre-activated (ReLU on the input, BN after the depthwise and after the pointwise halves), except in
`exit_flow/block2`, where BN + ReLU follow both halves and the input is not activated.

`use_bounded_activation` (the newest common.py; `xception_arg_scope` and `xception_module`) bounds every
activation for quantized inference: ReLU6 instead of ReLU (stem, pre-activations, exit_flow/block2),
the BN outputs of the pre-activated separable convs clipped to [-6, 6], both terms of every residual sum
clipped and the sum ReLU6-activated; and, as `xception_arg_scope` sets `use_explicit_padding=not
use_bounded_activation`, the strided separable convs use TF's 'SAME' padding instead of fixed padding.

This file is the architecture only: how its layers are computed on a machine (e.g. the 728-channel
features carried as 736 on AVX-512 CPUs) is the kernel policy's rewrite of the built model
(`deeplab_tf.model.acceleration`).
"""

from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.activations import Clip
from deeplab_tf.model.layers import BatchNormParams

# `xception_arg_scope`: BN decay 0.9997, epsilon 1e-3; weights truncated normal with stddev 0.09.
XCEPTION_BN = BatchNormParams(decay=0.9997, epsilon=1e-3)
XCEPTION_INITIALIZER_STDDEV = 0.09
# core/xception.py `_CLIP_CAP`: the bound of clipped features with use_bounded_activation.
CLIP_CAP = 6.0


@dataclasses.dataclass(frozen=True)
class XceptionBlock:
  """One block of `num_units` identical xception modules (`xception_block` in the original)."""

  scope: str
  depth_list: Tuple[int, int, int]
  skip_connection_type: str  # 'conv', 'sum' or 'none'
  stride: int
  num_units: int = 1
  activation_fn_in_separable_conv: bool = False
  use_multi_grid: bool = False


def _entry_flow_65() -> Tuple[XceptionBlock, ...]:
  return (
      XceptionBlock("entry_flow/block1", (128, 128, 128), "conv", 2),
      XceptionBlock("entry_flow/block2", (256, 256, 256), "conv", 2),
      XceptionBlock("entry_flow/block3", (728, 728, 728), "conv", 2),
  )


def _middle_and_exit(middle_units: int) -> Tuple[XceptionBlock, ...]:
  return (
      XceptionBlock("middle_flow/block1", (728, 728, 728), "sum", 1, num_units=middle_units),
      XceptionBlock("exit_flow/block1", (728, 1024, 1024), "conv", 2),
      XceptionBlock("exit_flow/block2", (1536, 1536, 2048), "none", 1,
                    activation_fn_in_separable_conv=True, use_multi_grid=True),
  )


def _decoder_end_points(entry_block_s4: str, entry_block_s8: str) -> Dict[int, str]:
  unit = "unit_1/xception_module/separable_conv2_pointwise"
  return {4: f"entry_flow/{entry_block_s4}/{unit}", 8: f"entry_flow/{entry_block_s8}/{unit}",
          16: f"exit_flow/block1/{unit}"}


# Block lists of `xception_41`, `xception_65` and `xception_71` in core/xception.py, with the features
# the decoder may use per output stride (core/feature_extractor.py `networks_to_feature_maps`).
XCEPTION_VARIANTS = {
    "xception_41": (_entry_flow_65() + _middle_and_exit(8), _decoder_end_points("block2", "block3")),
    "xception_65": (_entry_flow_65() + _middle_and_exit(16), _decoder_end_points("block2", "block3")),
    "xception_71": ((
        XceptionBlock("entry_flow/block1", (128, 128, 128), "conv", 2),
        XceptionBlock("entry_flow/block2", (256, 256, 256), "conv", 1),
        XceptionBlock("entry_flow/block3", (256, 256, 256), "conv", 2),
        XceptionBlock("entry_flow/block4", (728, 728, 728), "conv", 1),
        XceptionBlock("entry_flow/block5", (728, 728, 728), "conv", 2),
    ) + _middle_and_exit(16), _decoder_end_points("block3", "block5")),
}


def _bounded_preactivated_separable_conv(x, filters: int, stride: int, rate: int, scope: str,
                                         initializer):
  """The pre-activated separable conv with use_bounded_activation: depthwise ('SAME' padding, also
  when strided) + BN + clip, pointwise + BN + clip (core/xception.py `separable_conv2d_same` with
  `activation_fn=clip_by_value` and `use_explicit_padding=False`)."""
  name = layers.scope_to_layer_name(scope)
  x = keras.layers.DepthwiseConv2D(3, strides=stride, dilation_rate=rate, padding="same",
                                   depth_multiplier=1, use_bias=False,
                                   depthwise_initializer=initializer, name=name + "_depthwise")(x)
  x = layers.batch_norm(x, scope + "_depthwise", XCEPTION_BN)
  x = Clip(CLIP_CAP, name=name + "_depthwise.clip")(x)
  x = layers.conv2d_same(x, filters, 1, 1, 1, scope + "_pointwise", bn_params=XCEPTION_BN,
                         activation=False, kernel_initializer=initializer)
  return Clip(CLIP_CAP, name=name + "_pointwise.clip")(x)


def xception_module(x, depth_list: Sequence[int], skip_connection_type: str, stride: int, rate: int,
                    unit_rate_list: Sequence[int], activation_fn_in_separable_conv: bool, scope: str,
                    endpoints: Dict[str, object], use_bounded_activation: bool = False):
  """One xception module: three separable convs (stride on the third) plus a shortcut.

  Args:
    x: `[batch, height, width, channels]` input.
    depth_list: output channels of the three separable convs.
    skip_connection_type: 'conv' (1x1 conv with the stride + BN, no activation), 'sum' (identity) or
      'none'.
    stride: stride of the third separable conv and of the 'conv' shortcut.
    rate: atrous rate of the block (set by output_stride), multiplied by `unit_rate_list[i]`.
    unit_rate_list: the three unit rates (multi_grid in exit_flow/block2, else (1, 1, 1)).
    activation_fn_in_separable_conv: BN + ReLU after both halves (exit_flow/block2) instead of
      ReLU before the depthwise conv and no activation after (pre-activation, everywhere else).
    scope: variable scope of the module, `<...>/unit_<U>/xception_module`.
    endpoints: dict receiving `<scope>/separable_conv<N>_pointwise` outputs.
    use_bounded_activation: the bounded form (module docstring).

  Returns:
    `[batch, ceil(height / stride), ceil(width / stride), depth_list[-1]]`: residual + shortcut, not
    activated (ReLU6-activated with use_bounded_activation).

  Raises:
    ValueError: for an unknown `skip_connection_type` or a 'sum' shortcut with a channel change.
  """
  inputs = x
  residual = x
  depthwise_init = keras.initializers.TruncatedNormal(stddev=XCEPTION_INITIALIZER_STDDEV)
  relu_max_value = 6.0 if use_bounded_activation else None
  for i in range(3):
    conv_scope = f"{scope}/separable_conv{i + 1}"
    if not activation_fn_in_separable_conv:
      residual = layers.relu(residual, conv_scope + "/relu_input", relu_max_value)
    if use_bounded_activation and not activation_fn_in_separable_conv:
      residual = _bounded_preactivated_separable_conv(
          residual, depth_list[i], stride if i == 2 else 1, rate * unit_rate_list[i], conv_scope,
          depthwise_init)
    else:
      residual = layers.split_separable_conv2d(
          residual, depth_list[i], conv_scope, kernel_size=3, stride=stride if i == 2 else 1,
          rate=rate * unit_rate_list[i], bn_params=XCEPTION_BN,
          activation=activation_fn_in_separable_conv, depthwise_initializer=depthwise_init,
          pointwise_initializer=keras.initializers.TruncatedNormal(stddev=XCEPTION_INITIALIZER_STDDEV),
          relu_max_value=relu_max_value)
    endpoints[conv_scope + "_pointwise"] = residual
  name = layers.scope_to_layer_name(scope)

  def _sum(a, b):
    if not use_bounded_activation:
      return keras.layers.Add(name=name + ".add")([a, b])
    a = Clip(CLIP_CAP, name=name + ".clip_residual")(a)
    b = Clip(CLIP_CAP, name=name + ".clip_shortcut")(b)
    return layers.relu(keras.layers.Add(name=name + ".add")([a, b]), scope + "/relu6", 6.0)

  if skip_connection_type == "conv":
    shortcut = layers.conv2d_same(
        inputs, depth_list[-1], 1, stride, 1, scope + "/shortcut", bn_params=XCEPTION_BN,
        activation=False,
        kernel_initializer=keras.initializers.TruncatedNormal(stddev=XCEPTION_INITIALIZER_STDDEV))
    return _sum(residual, shortcut)
  if skip_connection_type == "sum":
    if inputs.shape[-1] != depth_list[-1]:
      raise ValueError(f"{scope}: a 'sum' shortcut needs {inputs.shape[-1]} output "
                       f"channels, got depth_list={list(depth_list)}.")
    return _sum(residual, inputs)
  if skip_connection_type == "none":
    return residual
  raise ValueError(f"{scope}: skip_connection_type={skip_connection_type!r}; expected conv, sum or none.")


def build_xception(images, model_variant: str, output_stride: int,
                   multi_grid: Optional[Sequence[int]] = None,
                   use_bounded_activation: bool = False) -> Dict[str, object]:
  """Builds an aligned Xception encoder on preprocessed images.

  Striding follows `stack_blocks_dense` (core/xception.py): the stem's stride 2 counts first; once the
  product of strides reaches `output_stride`, every later stride becomes 1 and the atrous rate is
  multiplied by the stride it replaced (DeepLabv3, section 3.1).

  Args:
    images: `[batch, height, width, 3]` float tensor in [-1, 1].
    model_variant: 'xception_41', 'xception_65' or 'xception_71'.
    output_stride: 8, 16 or 32.
    multi_grid: unit rates of exit_flow/block2, default (1, 1, 1).
    use_bounded_activation: the bounded form for quantized inference (module docstring).

  Returns:
    `{"low_level": [batch, ceil(height/4), ceil(width/4), 256], "encoder_output": [batch,
    ceil(height/os), ceil(width/os), 2048], "decoder_end_point/<4|8|16>": the decoder's feature at that
    stride, <every separable conv scope>: tensor}`.

  Raises:
    ValueError: unknown variant, or an output_stride the network cannot reach.
  """
  if model_variant not in XCEPTION_VARIANTS:
    raise ValueError(f"model_variant={model_variant!r}: expected one of {sorted(XCEPTION_VARIANTS)}.")
  if output_stride % 2:
    raise ValueError(f"output_stride={output_stride}: expected an even number.")
  blocks, decoder_end_points = XCEPTION_VARIANTS[model_variant]
  multi_grid = tuple(multi_grid) if multi_grid else (1, 1, 1)
  init = keras.initializers.TruncatedNormal(stddev=XCEPTION_INITIALIZER_STDDEV)
  root = model_variant
  endpoints: Dict[str, object] = {}

  relu_max_value = 6.0 if use_bounded_activation else None
  net = layers.conv2d_same(images, 32, 3, 2, 1, f"{root}/entry_flow/conv1_1", bn_params=XCEPTION_BN,
                           kernel_initializer=init, relu_max_value=relu_max_value)
  net = layers.conv2d_same(net, 64, 3, 1, 1, f"{root}/entry_flow/conv1_2", bn_params=XCEPTION_BN,
                           kernel_initializer=init, relu_max_value=relu_max_value)
  target = output_stride // 2  # The stem's stride 2, as `xception()` divides output_stride by 2.
  current_stride, rate = 1, 1
  for block in blocks:
    for u in range(block.num_units):
      if current_stride > target:
        raise ValueError(f"output_stride={output_stride} cannot be reached by {model_variant}.")
      unit_rates = multi_grid if block.use_multi_grid else (1, 1, 1)
      scope = f"{root}/{block.scope}/unit_{u + 1}/xception_module"
      if current_stride == target:
        net = xception_module(net, block.depth_list, block.skip_connection_type, 1, rate, unit_rates,
                              block.activation_fn_in_separable_conv, scope, endpoints,
                              use_bounded_activation)
        rate *= block.stride
      else:
        net = xception_module(net, block.depth_list, block.skip_connection_type, block.stride, 1,
                              unit_rates, block.activation_fn_in_separable_conv, scope, endpoints,
                              use_bounded_activation)
        current_stride *= block.stride
  if current_stride != target:
    raise ValueError(f"output_stride={output_stride} cannot be reached by {model_variant}.")
  for stride, name in decoder_end_points.items():
    endpoints[f"decoder_end_point/{stride}"] = endpoints[f"{root}/{name}"]
  endpoints["low_level"] = endpoints["decoder_end_point/4"]
  endpoints["encoder_output"] = net
  return endpoints
