"""Structure of the issue-10 encoders as the original builds them: ResNet-v1-18(-beta) (research/deeplab
core/resnet_v1_beta.py `lite_bottleneck`, `resnet_v1_18[_beta]`).
"""

import math

import numpy as np
import pytest

import deeplab_tf
from deeplab_tf.model.encoders import get_encoder
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
