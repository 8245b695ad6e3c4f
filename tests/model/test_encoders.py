"""Encoder structure as the original builds it: strides, atrous rates, widths and end points.

Derived from research/deeplab core/resnet_v1_beta.py + slim resnet_utils.stack_blocks_dense (ResNet),
slim nets/mobilenet (mobilenet_base's output_stride logic, V2_DEF, _make_divisible) and
core/feature_extractor.py (decoder end points, DeepLab's MobileNetV2 width rules).
"""

import math

import keras
import numpy as np
import pytest

import deeplab_tf
from deeplab_tf.checkpoints import model_weights_by_checkpoint_name
from deeplab_tf.model.encoders import get_encoder, mobilenet_v2, resnet


def _encoder(model_variant, **options):
  spec = get_encoder(model_variant)
  inputs = keras.Input((None, None, 3))
  endpoints = spec.build(inputs, deeplab_tf.ModelOptions(model_variant=model_variant, **options))
  names = ["encoder_output", "low_level"] + sorted(k for k in endpoints if k.startswith("decoder_end"))
  return keras.Model(inputs, {k: endpoints[k] for k in names})


def _conv(model, scope):
  return model.get_layer(scope.replace("/", "."))


@pytest.fixture(scope="module", params=[8, 16, 32])
def resnet_50_beta(request):
  return request.param, _encoder("resnet_v1_50_beta", output_stride=request.param,
                                 multi_grid=(1, 2, 4))


def test_resnet_strides_and_rates(resnet_50_beta):
  output_stride, model = resnet_50_beta
  unit = "resnet_v1_50/block{}/unit_{}/bottleneck_v1/conv2"
  # Stride on the 3x3 conv of each block's last unit, while below the output stride.
  assert _conv(model, unit.format(1, 3)).strides == (2, 2)
  assert _conv(model, "resnet_v1_50/block1/unit_3/bottleneck_v1/conv1").strides == (1, 1)
  assert _conv(model, unit.format(2, 4)).strides == ((2, 2) if output_stride >= 16 else (1, 1))
  assert _conv(model, unit.format(3, 6)).strides == ((2, 2) if output_stride == 32 else (1, 1))
  block3_rate = 2 if output_stride == 8 else 1
  assert _conv(model, unit.format(3, 1)).dilation_rate == (block3_rate, block3_rate)
  block4_rate = {8: 4, 16: 2, 32: 1}[output_stride]
  for u, grid in enumerate((1, 2, 4), 1):
    assert _conv(model, unit.format(4, u)).dilation_rate == (block4_rate * grid,) * 2


@pytest.mark.parametrize("height,width", [(65, 65), (64, 80)])
def test_resnet_output_sizes(resnet_50_beta, height, width):
  output_stride, model = resnet_50_beta
  out = model(np.zeros((1, height, width, 3), np.float32))
  assert tuple(out["encoder_output"].shape) == (
      1, math.ceil(height / output_stride), math.ceil(width / output_stride), 2048)
  assert tuple(out["low_level"].shape) == (1, math.ceil(height / 4), math.ceil(width / 4), 256)
  assert tuple(out["decoder_end_point/8"].shape)[1:] == (
      math.ceil(height / 8), math.ceil(width / 8), 512)


def test_resnet_identity_shortcut_is_subsampled():
  # Last unit of block1: depth unchanged (256), stride 2: shortcut = every other pixel of the input.
  inputs = keras.Input((5, 5, 256))
  endpoints = {}
  out = resnet.bottleneck(inputs, 256, 64, 2, 1, "u", endpoints)
  model = keras.Model(inputs, out)
  model.get_layer("u.conv3.BatchNorm").set_weights([np.zeros(256)] * 3 + [np.ones(256)])
  x = np.random.default_rng(0).standard_normal((1, 5, 5, 256)).astype(np.float32)
  np.testing.assert_allclose(model(x).numpy(), np.maximum(x[:, ::2, ::2], 0), atol=1e-6)
  assert [l.name for l in model.layers if l.name.startswith("u.shortcut")] == ["u.shortcut_subsample"]


@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_mobilenet_strides_and_rates(output_stride):
  model = _encoder("mobilenet_v2", output_stride=output_stride)
  def depthwise(i):
    return _conv(model, f"MobilenetV2/expanded_conv_{i}/depthwise")
  # V2_DEF strides 2 at layers 1, 3, 5, 8, 15 (expanded_conv_1, _3, _6, _13).
  assert depthwise(6).strides == ((2, 2) if output_stride >= 16 else (1, 1))
  assert depthwise(13).strides == ((2, 2) if output_stride == 32 else (1, 1))
  assert depthwise(13).dilation_rate == ((2, 2) if output_stride == 8 else (1, 1))
  assert depthwise(16).dilation_rate == ({8: 4, 16: 2, 32: 1}[output_stride],) * 2
  out = model(np.zeros((1, 64, 80, 3), np.float32))
  assert tuple(out["encoder_output"].shape) == (
      1, math.ceil(64 / output_stride), math.ceil(80 / output_stride), 320)
  assert tuple(out["low_level"].shape) == (1, 16, 20, 144)
  assert depthwise(16).padding == "same"


def test_mobilenet_depth_multiplier_half():
  model = _encoder("mobilenet_v2", output_stride=16, depth_multiplier=0.5)
  # DeepLab rounds to multiples of 1 at depth_multiplier != 1; expansions to multiples of 8.
  project = [_conv(model, "MobilenetV2/expanded_conv" + (f"_{i}" if i else "") + "/project").filters
             for i in range(17)]
  assert project == [8, 12, 12, 16, 16, 16, 32, 32, 32, 32, 48, 48, 48, 80, 80, 80, 160]
  assert _conv(model, "MobilenetV2/Conv").filters == 16
  assert _conv(model, "MobilenetV2/expanded_conv_2/expand").filters == 72
  assert _conv(model, "MobilenetV2/expanded_conv_16/expand").filters == 480
  out = model(np.zeros((1, 33, 33, 3), np.float32))
  assert tuple(out["encoder_output"].shape) == (1, 3, 3, 160)
  assert tuple(out["low_level"].shape) == (1, 9, 9, 72)


def test_make_divisible():
  assert mobilenet_v2.make_divisible(32 * 0.35, 8) == 16  # 11.2 rounds to 8, < 90%: bumped.
  assert mobilenet_v2.make_divisible(24 * 6, 8) == 144
  assert mobilenet_v2.make_divisible(12.5, 1, 1) == 13


def test_mobilenet_v3_plus_decoder_and_v2_style_logits():
  # DeepLabv3+ on MobileNetV2 reads layer_4/depthwise_output (144 channels) at stride 4.
  plus = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(
      model_variant="mobilenet_v2", decoder_output_stride=4))
  weights = model_weights_by_checkpoint_name(plus)
  assert tuple(weights["decoder/feature_projection0/weights"].shape) == (1, 1, 144, 48)
  assert tuple(plus(np.zeros((1, 64, 80, 3), np.float32)).shape) == (1, 64, 80, 21)
  # Without the ASPP head, atrous rates become summed dilated logits convs (get_branch_logits).
  v2 = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(
      model_variant="mobilenet_v2", aspp_with_batch_norm=False, atrous_rates=(6, 12, 18),
      logits_kernel_size=3))
  logits = [l for l in v2.layers if l.name.startswith("logits.semantic")]
  assert [(l.name, l.dilation_rate, l.kernel_size) for l in logits] == [
      ("logits.semantic", (6, 6), (3, 3)), ("logits.semantic_1", (12, 12), (3, 3)),
      ("logits.semantic_2", (18, 18), (3, 3))]
  assert not any(n.startswith(("aspp", "image_pooling", "concat_projection"))
                 for n in model_weights_by_checkpoint_name(v2))
  assert tuple(v2(np.zeros((1, 33, 33, 3), np.float32)).shape) == (1, 33, 33, 21)
  with pytest.raises(ValueError, match="logits_kernel_size=3"):
    deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(model_variant="mobilenet_v2",
                                                     logits_kernel_size=3))


def test_resnet_plain_root_and_decoder_at_stride_8():
  model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(
      model_variant="resnet_v1_50", atrous_rates=(6, 12, 18), decoder_output_stride=8,
      aspp_with_separable_conv=False, decoder_use_separable_conv=False))
  conv1 = _conv(model, "resnet_v1_50/conv1")
  assert conv1.kernel_size == (7, 7) and conv1.strides == (2, 2) and conv1.padding == "valid"
  assert _conv(model, "resnet_v1_50/conv1.pad").padding == ((3, 3), (3, 3))
  assert model.get_layer("preprocess").mode == "subtract_imagenet_mean"
  assert get_encoder("resnet_v1_101").preprocessing == "subtract_imagenet_mean"
  assert get_encoder("resnet_v1_101_beta").preprocessing == "zero_mean_unit_range"
  assert len([l for l in model.layers if l.name.endswith("bottleneck_v1.conv3")]) == 3 + 4 + 6 + 3
  assert _conv(model, "resnet_v1_50/block1/unit_1/bottleneck_v1/conv1.BatchNorm").epsilon == 1e-5
  # The decoder reads block2/unit_3/bottleneck_v1/conv3 (512 channels) at stride 8.
  weights = model_weights_by_checkpoint_name(model)
  assert tuple(weights["decoder/feature_projection0/weights"].shape) == (1, 1, 512, 48)
  assert tuple(model(np.zeros((1, 64, 80, 3), np.float32)).shape) == (1, 64, 80, 21)


def test_xception_41_output_stride_8():
  model = _encoder("xception_41", output_stride=8, multi_grid=(1, 2, 4))
  block = "xception_41/exit_flow/block2/unit_1/xception_module/separable_conv{}_depthwise"
  assert [_conv(model, block.format(i)).dilation_rate[0] for i in (1, 2, 3)] == [4, 8, 16]
  out = model(np.zeros((1, 33, 48, 3), np.float32))
  assert tuple(out["encoder_output"].shape) == (1, 5, 6, 2048)
  assert tuple(out["low_level"].shape) == (1, 9, 12, 256)
