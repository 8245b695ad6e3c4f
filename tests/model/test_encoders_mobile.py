"""Structure of the issue-10 encoders as the original builds them: ResNet-v1-18(-beta) (research/deeplab
core/resnet_v1_beta.py `lite_bottleneck`, `resnet_v1_18[_beta]`), MobileNetV3 large/small seg and
EdgeTPU-MobileNet (research/slim nets/mobilenet, research/deeplab core/feature_extractor.py).
"""

import math

import keras
import numpy as np
import pytest

import deeplab_tf
from deeplab_tf.model import activations
from deeplab_tf.model.encoders import get_encoder, mobilenet_v3
from test_encoders import _conv, _encoder


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_resnet_18_strides_rates_and_sizes(output_stride):
  model = _encoder("resnet_v1_18", output_stride=output_stride, multi_grid=(1, 2))
  unit = "resnet_v1_18/block{}/unit_{}/lite_bottleneck_v1/conv{}"
  # The stride sits on conv2 of each block's last unit while below the output stride.
  assert _conv(model, unit.format(1, 2, 2)).strides == (2, 2)
  assert _conv(model, unit.format(1, 2, 1)).strides == (1, 1)
  assert _conv(model, unit.format(2, 2, 2)).strides == ((2, 2) if output_stride >= 16 else (1, 1))
  assert _conv(model, unit.format(3, 2, 2)).strides == ((2, 2) if output_stride == 32 else (1, 1))
  # Both 3x3 convs of a unit carry its atrous rate (block rate x unit rate).
  block3_rate = 2 if output_stride == 8 else 1
  assert _conv(model, unit.format(3, 1, 1)).dilation_rate == (block3_rate,) * 2
  assert _conv(model, unit.format(3, 1, 2)).dilation_rate == (block3_rate,) * 2
  block4_rate = {8: 4, 16: 2, 32: 1}[output_stride]
  for u, grid in enumerate((1, 2), 1):
    for conv in (1, 2):
      assert _conv(model, unit.format(4, u, conv)).dilation_rate == (block4_rate * grid,) * 2
  out = model(np.zeros((1, 65, 80, 3), np.float32))
  assert tuple(out["encoder_output"].shape) == (
      1, math.ceil(65 / output_stride), math.ceil(80 / output_stride), 512)
  # Decoder features: block{1,2,3}/unit_1/lite_bottleneck_v1/conv2 at strides 4, 8, 16.
  assert tuple(out["low_level"].shape) == (1, 17, 20, 64)
  assert tuple(out["decoder_end_point/8"].shape) == (1, 9, 10, 128)
  # (at output stride 8, block3 runs at stride 8 too).
  assert tuple(out["decoder_end_point/16"].shape) == ((1, 9, 10, 256) if output_stride == 8
                                                      else (1, 5, 5, 256))


def test_resnet_18_roots_and_shortcuts():
  plain = _encoder("resnet_v1_18", output_stride=16)
  beta = _encoder("resnet_v1_18_beta", output_stride=16)
  assert _conv(plain, "resnet_v1_18/conv1").kernel_size == (7, 7)
  # resnet_v1_18_beta's root_depth_multiplier 0.25: 16, 16, 32 channels; so block1/unit_1 (64
  # channels) needs a shortcut conv there, while the plain root's 64 channels are subsampled.
  assert [_conv(beta, f"resnet_v1_18/conv1_{i}").filters for i in (1, 2, 3)] == [16, 16, 32]
  shortcut = "resnet_v1_18/block1/unit_1/lite_bottleneck_v1/shortcut"
  assert _conv(beta, shortcut).filters == 64
  assert shortcut.replace("/", ".") not in [layer.name for layer in plain.layers]
  assert get_encoder("resnet_v1_18").preprocessing == "subtract_imagenet_mean"
  assert get_encoder("resnet_v1_18_beta").preprocessing == "zero_mean_unit_range"


def test_resnet_18_multi_grid_has_two_rates():
  with pytest.raises(ValueError, match="expected 2 unit rates"):
    deeplab_tf.ModelOptions(model_variant="resnet_v1_18", multi_grid=(1, 2, 4))
  with pytest.raises(ValueError, match="expected 3 unit rates"):
    deeplab_tf.ModelOptions(model_variant="resnet_v1_50", multi_grid=(1, 2))


# MobileNetV3 (research/slim nets/mobilenet/mobilenet_v3.py, research/deeplab feature_extractor.py).

def _mobilenet(model_variant, output_stride=32, depth_multiplier=1.0):
  inputs = keras.Input((None, None, 3))
  endpoints = mobilenet_v3.build_mobilenet_v3(inputs, model_variant, output_stride, depth_multiplier)
  return keras.Model(inputs, {k: v for k, v in endpoints.items()
                              if k in ("encoder_output", "low_level") or k.startswith("decoder_end")})


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_mobilenet_v3_large_seg_strides_rates_and_sizes(output_stride):
  model = _mobilenet("mobilenet_v3_large_seg", output_stride)
  def depthwise(i):
    return _conv(model, f"MobilenetV3/expanded_conv_{i}/depthwise")
  # V3_LARGE strides 2 at layers 1, 3, 5, 8, 14 (Conv, expanded_conv_1, _3, _6, _12).
  assert depthwise(6).strides == ((2, 2) if output_stride >= 16 else (1, 1))
  assert depthwise(12).strides == ((2, 2) if output_stride == 32 else (1, 1))
  assert depthwise(12).dilation_rate == ((2, 2) if output_stride == 8 else (1, 1))
  assert depthwise(14).dilation_rate == ({8: 4, 16: 2, 32: 1}[output_stride],) * 2
  assert depthwise(14).kernel_size == (5, 5) and depthwise(14).padding == "same"
  # 1x1 convs never get a rate (mobilenet_base).
  assert _conv(model, "MobilenetV3/Conv_1").dilation_rate == (1, 1)
  out = model(np.zeros((1, 65, 80, 3), np.float32))
  assert tuple(out["encoder_output"].shape) == (
      1, math.ceil(65 / output_stride), math.ceil(80 / output_stride), 480)
  # layer_4/7/13 depthwise outputs: 72 channels at stride 4, 120 at 8, 672 at 16.
  assert tuple(out["low_level"].shape) == (1, 17, 20, 72)
  assert tuple(out["decoder_end_point/8"].shape) == (1, 9, 10, 120)
  assert tuple(out["decoder_end_point/16"].shape)[3] == 672


def test_mobilenet_v3_segmentation_widths():
  large = _mobilenet("mobilenet_v3_large_seg")
  # The last block halved: 80 channels, expansions 336 (= 3 x 112), 480, 480; last conv 480.
  assert [_conv(large, f"MobilenetV3/expanded_conv_{i}/project").filters for i in (11, 12, 13, 14)] == [
      112, 80, 80, 80]
  assert [_conv(large, f"MobilenetV3/expanded_conv_{i}/expand").filters for i in (12, 13, 14)] == [
      336, 480, 480]
  assert _conv(large, "MobilenetV3/Conv_1").filters == 480
  # Squeeze-excite: _make_divisible(expansion / 4, 8) (72 -> 24, 336 -> 88), biased 1x1 convs.
  assert _conv(large, "MobilenetV3/expanded_conv_3/squeeze_excite/Conv").filters == 24
  assert _conv(large, "MobilenetV3/expanded_conv_12/squeeze_excite/Conv").filters == 88
  assert _conv(large, "MobilenetV3/expanded_conv_12/squeeze_excite/Conv_1").use_bias
  # The first block expands by 1: no expand conv; hard-swish from expanded_conv_6 on.
  names = [layer.name for layer in large.layers]
  assert "MobilenetV3.expanded_conv.expand" not in names
  assert "MobilenetV3.expanded_conv_5.depthwise.relu" in names
  assert "MobilenetV3.expanded_conv_6.depthwise.hard_swish" in names
  small = _mobilenet("mobilenet_v3_small_seg")
  assert [_conv(small, f"MobilenetV3/expanded_conv_{i}/expand").filters for i in (8, 9, 10)] == [
      144, 288, 288]
  assert _conv(small, "MobilenetV3/Conv_1").filters == 288
  out = small(np.zeros((1, 65, 80, 3), np.float32))
  # layer_2/4/9 depthwise outputs: 16 channels at stride 4, 88 at 8, 144 at 16.
  assert tuple(out["low_level"].shape) == (1, 17, 20, 16)
  assert tuple(out["decoder_end_point/8"].shape) == (1, 9, 10, 88)
  assert tuple(out["decoder_end_point/16"].shape) == (1, 5, 5, 144)
  assert tuple(out["encoder_output"].shape) == (1, 3, 3, 288)


def test_mobilenet_edgetpu_fused_blocks_and_depth_multiplier():
  model = _mobilenet("mobilenet_edgetpu", 16)
  names = [layer.name for layer in model.layers]
  # mbv3_fused: a 3x3 expand conv carrying the stride, no depthwise; the first block (expansion 1)
  # is the projection alone.
  expand = _conv(model, "MobilenetEdgeTPU/expanded_conv_1/expand")
  assert expand.kernel_size == (3, 3) and expand.strides == (2, 2) and expand.filters == 128
  assert not any(n.startswith("MobilenetEdgeTPU.expanded_conv_1.depthwise") for n in names)
  assert not any(n.startswith("MobilenetEdgeTPU.expanded_conv.expand") for n in names)
  assert _conv(model, "MobilenetEdgeTPU/expanded_conv_9/depthwise").strides == (2, 2)
  assert _conv(model, "MobilenetEdgeTPU/expanded_conv_17/depthwise").dilation_rate == (1, 1)
  assert _conv(model, "MobilenetEdgeTPU/expanded_conv_18/depthwise").dilation_rate == (2, 2)
  # residual=False on expanded_conv_13 (96 -> 96 channels, stride 1), a sum on expanded_conv_14.
  assert "MobilenetEdgeTPU.expanded_conv_13.add" not in names
  assert "MobilenetEdgeTPU.expanded_conv_14.add" in names
  assert "MobilenetEdgeTPU.Conv_1.relu" in names
  assert tuple(model(np.zeros((1, 65, 65, 3), np.float32))["encoder_output"].shape) == (1, 5, 5, 1280)
  # EdgeTPU-DeepLab-slim: depth multiplier 0.75 everywhere, the last conv included (960).
  slim = _mobilenet("mobilenet_edgetpu", 32, 0.75)
  assert _conv(slim, "MobilenetEdgeTPU/Conv").filters == 24
  assert _conv(slim, "MobilenetEdgeTPU/Conv_1").filters == 960
  # No decoder end points (networks_to_feature_maps has none): asking for a decoder is an error.
  with pytest.raises(ValueError, match="decoder features at output strides"):
    deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(model_variant="mobilenet_edgetpu",
                                                     decoder_output_stride=4))


def test_mobilenet_v3_hard_swish_and_squeeze_excite_values():
  # hard_swish(x) = x * relu6(x + 3) / 6; the SE gate relu6(x + 3) * 0.16667 (the original's constant).
  x = np.linspace(-5, 5, 41, dtype=np.float32)
  np.testing.assert_allclose(activations.HardSwish()(x).numpy(),
                             x * np.clip(x + 3, 0, 6) / 6, rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(activations.HardSigmoid()(x).numpy(),
                                (np.clip(x + 3, 0, 6) * np.float32(0.16667)).astype(np.float32))
  inputs = keras.Input((4, 5, 40))
  model = keras.Model(inputs, mobilenet_v3.squeeze_excite(inputs, "se"))
  rng = np.random.default_rng(0)
  w1, b1 = rng.normal(0, 0.3, (1, 1, 40, 16)).astype(np.float32), rng.normal(0, 0.3, 16)
  w2, b2 = rng.normal(0, 0.3, (1, 1, 16, 40)).astype(np.float32), rng.normal(0, 0.3, 40)
  model.get_layer("se.Conv").set_weights([w1, b1])
  model.get_layer("se.Conv_1").set_weights([w2, b2])
  features = rng.normal(0, 1, (2, 4, 5, 40)).astype(np.float32)
  squeezed = np.maximum(features.mean(axis=(1, 2)) @ w1[0, 0] + b1, 0)
  gate = np.clip(squeezed @ w2[0, 0] + b2 + 3, 0, 6) * 0.16667
  np.testing.assert_allclose(model(features).numpy(), features * gate[:, None, None, :],
                             rtol=1e-5, atol=1e-6)
  assert model.get_layer("se.Conv").filters == 16  # _make_divisible(40 / 4, 8).
