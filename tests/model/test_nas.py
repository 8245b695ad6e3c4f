"""The NAS encoders' strides and channels (their variable lists are checked in test_variants.py)."""

import keras
import numpy as np
import pytest

from deeplab_tf.model.encoders import nas


def _encoder(model_variant, output_stride, **kwargs):
  images = keras.Input((65, 65, 3))
  endpoints = nas.build_nas(images, model_variant, output_stride, **kwargs)
  return {k: tuple(v.shape[1:]) for k, v in endpoints.items()}


@pytest.mark.parametrize("model_variant,output_stride,kwargs,expected", [
    # 65 pixels: 33 at stride 2, 17 at 4, 9 at 8, 5 at 16, 3 at 32; 5F channels, F = 20 * 2^level.
    ("nas_pnasnet", 8, {}, (9, 9, 200)),
    ("nas_pnasnet", 16, {}, (5, 5, 400)),
    ("nas_pnasnet", 32, {}, (3, 3, 800)),
    ("nas_pnasnet", 32, dict(remove_os32_stride=True), (5, 5, 800)),
    ("nas_hnasnet", 8, {}, (9, 9, 200)),
    # The classification head: strided to 16, then atrous to 32 (rate 2), 2048 channels.
    ("nas_hnasnet", 16, dict(use_classification_head=True), (5, 5, 2048)),
])
def test_strides_and_channels(model_variant, output_stride, kwargs, expected):
  shapes = _encoder(model_variant, output_stride, **kwargs)
  assert shapes["encoder_output"] == expected
  assert shapes["low_level"][:2] == (17, 17)


def test_decoder_end_points_are_the_originals():
  shapes = _encoder("nas_pnasnet", 16)
  assert shapes["decoder_end_point/4"] == shapes["Stem"] == (17, 17, 128)
  assert shapes["decoder_end_point/8"] == shapes["Cell_3"] == (9, 9, 200)
  assert shapes["decoder_end_point/16"] == shapes["Cell_7"] == (5, 5, 400)
  shapes = _encoder("nas_hnasnet", 8)
  assert shapes["decoder_end_point/4"] == shapes["Cell_2"] == (17, 17, 100)
  assert shapes["decoder_end_point/8"] == shapes["Cell_5"] == (9, 9, 200)


def test_bad_output_strides_are_named():
  with pytest.raises(ValueError, match="output_stride=4"):
    _encoder("nas_pnasnet", 4)
  with pytest.raises(ValueError, match="multiple of the backbone's output stride 8"):
    _encoder("nas_hnasnet", 4, use_classification_head=True)


def test_upsampling_doubles_minus_one():
  x = np.arange(2 * 3 * 4, dtype=np.float32).reshape(1, 3, 4, 2)
  up = nas.ScaleResize(2.0)(x).numpy()
  assert up.shape == (1, 5, 7, 2)
  np.testing.assert_allclose(up[:, ::2, ::2], x, atol=1e-6)  # align_corners keeps the grid points
  np.testing.assert_allclose(up[0, 1, 0], (x[0, 0, 0] + x[0, 1, 0]) / 2, atol=1e-6)
  assert nas.ScaleResize(0.5)(up).shape == (1, 3, 4, 2)


@pytest.mark.parametrize("size", [9, 10])
def test_strided_separable_conv_is_the_stride_1_conv_subsampled(size):
  # core/xception.py separable_conv2d_same, which the NAS cells use: with fixed padding a stride-2
  # separable conv samples the stride-1 'SAME' conv at every other pixel, for odd and even sizes.
  inputs = keras.Input((size, size, 4))
  strided = keras.Model(inputs, nas._separable(inputs, 6, 5, 2, "s2"))
  dense = keras.Model(inputs, nas._separable(inputs, 6, 5, 1, "s1"))
  dense.set_weights(strided.get_weights())
  x = np.random.default_rng(0).standard_normal((1, size, size, 4)).astype(np.float32)
  np.testing.assert_allclose(strided(x).numpy(), dense(x).numpy()[:, ::2, ::2], atol=1e-5)
