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


def _bn(model, scope, x):
  gamma, beta, mean, variance = model.get_layer(scope.replace("/", ".")).get_weights()
  return gamma * (x - mean) / np.sqrt(variance + 1e-3) + beta


def test_auto_deeplab_cell_equals_its_definition_written_with_tf_nn():
  # A strided Auto-DeepLab cell (F = 4) on a 9x9 input, the cell before last at 17x17 with 3 channels
  # (resized to 9x9, then prev_1x1): each combination as NASBaseCell computes it, with tf.nn ops.
  import tensorflow as tf
  net_in, prev_in = keras.Input((9, 9, 6)), keras.Input((17, 17, 3))
  out = nas.nas_cell(net_in, prev_in, nas.HNAS_CELL, 4, 2, "c", resize_prev=True)
  model = keras.Model([net_in, prev_in], out)
  rng = np.random.default_rng(0)
  model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if "variance" in w.path
                     else (0.5 * rng.standard_normal(w.shape)).astype(np.float32) for w in model.weights])
  net = rng.standard_normal((1, 9, 9, 6)).astype(np.float32)
  prev = rng.standard_normal((1, 17, 17, 3)).astype(np.float32)

  def kernel(scope, i=0):
    return model.get_layer(scope.replace("/", ".")).get_weights()[i]

  def conv(x, scope, rate=1):
    return tf.nn.conv2d(x, kernel(scope), 1, "SAME", dilations=rate).numpy()

  def relu(x):
    return np.maximum(x, 0)

  def separable_2(x, scope, k, stride):
    for n in (1, 2):
      x = relu(x)
      if stride == 2:
        x = np.pad(x, [(0, 0), ((k - 1) // 2, k // 2), ((k - 1) // 2, k // 2), (0, 0)])
      name = f"{scope}/separable_{k}x{k}_{n}"
      x = tf.nn.depthwise_conv2d(x, kernel(name, 0), [1, stride, stride, 1],
                                 "VALID" if stride == 2 else "SAME").numpy()
      x = _bn(model, f"{scope}/bn_sep_{k}x{k}_{n}", tf.nn.conv2d(x, kernel(name, 1), 1, "VALID").numpy())
      stride = 1
    return x

  def atrous(x, scope, k, stride):
    x = relu(x)
    if stride == 2:
      x = tf.compat.v1.image.resize_bilinear(x, [5, 5], align_corners=True).numpy()
      return _bn(model, f"{scope}/bn_atr_{k}x{k}", conv(x, f"{scope}/atrous_{k}x{k}"))
    return _bn(model, f"{scope}/bn_atr_{k}x{k}", conv(x, f"{scope}/atrous_{k}x{k}", rate=2))

  resized = tf.compat.v1.image.resize_bilinear(prev, [9, 9], align_corners=True).numpy()
  h = [_bn(model, "c/beginning_bn", conv(relu(net), "c/1x1")),
       _bn(model, "c/prev_bn", conv(relu(resized), "c/prev_1x1"))]
  c = "c/comb_iter_"
  h.append(atrous(h[1], c + "0/left", 5, 2) + separable_2(h[0], c + "0/right", 3, 2))
  h.append(separable_2(h[1], c + "1/left", 3, 2) + atrous(h[0], c + "1/right", 3, 2))
  h.append(separable_2(h[3], c + "2/left", 3, 1) + separable_2(h[1], c + "2/right", 3, 2))
  h.append(separable_2(h[4], c + "3/left", 5, 1) + separable_2(h[2], c + "3/right", 5, 1))
  h.append(separable_2(h[3], c + "4/left", 5, 1) + atrous(h[5], c + "4/right", 5, 1))
  expected = np.concatenate(h[2:], -1)
  ours = model([net, prev]).numpy()
  assert ours.shape == expected.shape == (1, 5, 5, 20)
  # float32 sums in another order over ~10 layers: 1e-4 of the largest magnitude.
  assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()
