"""Padding of strided convolutions, checked against hand-computed numbers.

DeepLab's Xception and ResNet pad strided convs with the original's fixed padding (pad (k-1)//2 before
and the rest after, then VALID); MobileNetV2 keeps TF's 'SAME' (the odd pixel after). On a 4x4 input
with a 3x3 stride-2 all-ones kernel, x = arange(16).reshape(4, 4):
- fixed padding (1 before, 1 after) sums windows starting at rows/cols -1, 1:
  [[0+1+4+5, 1+2+3+5+6+7], [4+5+8+9+12+13, 5+6+7+9+10+11+13+14+15]] = [[10, 24], [51, 90]];
- 'SAME' (0 before, 1 after) sums windows starting at 0, 2:
  [[0+1+2+4+5+6+8+9+10, 2+3+6+7+10+11], [8+9+10+12+13+14, 10+11+14+15]] = [[45, 39], [66, 50]].
"""

import keras
import numpy as np
import pytest

from deeplab_tf.model import layers
from deeplab_tf.model.encoders import mobilenet_v2

X = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
FIXED = np.array([[10, 24], [51, 90]], np.float32)
SAME = np.array([[45, 39], [66, 50]], np.float32)


def test_conv2d_same_fixed_padding_by_hand():
  inputs = keras.Input((4, 4, 1))
  out = layers.conv2d_same(inputs, 1, 3, 2, 1, "conv", bn_params=None, activation=False)
  model = keras.Model(inputs, out)
  conv = model.get_layer("conv")
  conv.set_weights([np.ones((3, 3, 1, 1), np.float32), np.zeros((1,), np.float32)])
  np.testing.assert_array_equal(model(X).numpy()[0, :, :, 0], FIXED)


def test_fixed_padding_with_rate_and_even_kernel():
  # k_eff = 3 + 2 * (2 - 1) = 5: 2 before, 2 after; a 2x2 kernel pads 0 before, 1 after.
  inputs = keras.Input((4, 4, 1))
  assert tuple(layers.fixed_padding(inputs, 3, rate=2).shape) == (None, 8, 8, 1)
  padded = keras.Model(inputs, layers.fixed_padding(inputs, 2))(X).numpy()[0, :, :, 0]
  np.testing.assert_array_equal(padded[:4, :4], X[0, :, :, 0])
  assert padded.shape == (5, 5) and not padded[4].any() and not padded[:, 4].any()


def test_depthwise_conv2d_same_fixed_padding_by_hand():
  inputs = keras.Input((4, 4, 1))
  out = layers.depthwise_conv2d_same(inputs, 3, 2, 1, "dw", bn_params=None, activation=False)
  model = keras.Model(inputs, out)
  model.get_layer("dw").set_weights([np.ones((3, 3, 1, 1), np.float32), np.zeros((1,), np.float32)])
  np.testing.assert_array_equal(model(X).numpy()[0, :, :, 0], FIXED)


def test_mobilenet_first_conv_uses_same_padding():
  # The original builds MobileNetV2 without explicit padding: 'SAME', unlike conv2d_same.
  inputs = keras.Input((4, 4, 3))
  endpoints = mobilenet_v2.build_mobilenet_v2(inputs, output_stride=32)
  model = keras.Model(inputs, endpoints["layer_1"])
  kernel = np.zeros((3, 3, 3, 32), np.float32)
  kernel[:, :, 0, 0] = 1.0
  model.get_layer("MobilenetV2.Conv").set_weights([kernel])
  bn = model.get_layer("MobilenetV2.Conv.BatchNorm")
  bn.set_weights([np.ones(32), np.zeros(32), np.zeros(32), np.ones(32)])
  images = np.zeros((1, 4, 4, 3), np.float32)
  images[..., 0] = X[..., 0] / 100.0  # Keep the sums below ReLU6's cap.
  out = model(images).numpy()[0, :, :, 0]
  np.testing.assert_allclose(out, SAME / 100.0 / np.sqrt(1.0 + 1e-3), rtol=1e-6)


@pytest.mark.parametrize("mode", [layers.ZERO_MEAN_UNIT_RANGE, layers.SUBTRACT_IMAGENET_MEAN])
def test_mean_pixel_is_what_the_preprocessing_maps_to_zero(mode):
  mean = np.asarray(layers.mean_pixel_for_preprocessing(mode), np.float32)
  out = layers.Preprocess(mode)(np.broadcast_to(mean, (1, 2, 2, 3)).copy()).numpy()
  np.testing.assert_allclose(out, 0.0, atol=1e-6)
  with pytest.raises(ValueError, match="preprocessing="):
    layers.mean_pixel_for_preprocessing("caffe")
