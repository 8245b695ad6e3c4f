"""`acceleration.convolutions.DepthwiseConv2D`: Keras' layer with dilations in place and a float32
strided bf16 gradient (the CPU kernel policy's depthwise convolution).

The reference is TF's own `tf.nn.depthwise_conv2d` and its gradient, in float32 on the same (bfloat16-
representable) values; the bfloat16 results carry bfloat16's 2**-8 relative rounding. Dilated
convolutions (`dilated_depthwise.dilated_depthwise_conv2d`) sum the same float32 terms as the space-to-batch
form, possibly in another order: 1e-5 relative.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.model import layers
from deeplab_tf.model.acceleration import KernelPolicy, apply_kernel_policy, convolutions
from deeplab_tf.model.acceleration import dilated_depthwise

RNG = np.random.default_rng(0)
# The CPU policy's layer: in place where this TensorFlow has the kernel (oneDNN with AVX-512), as
# `cpu()` chooses. Probed inside the tests, not at import: a TF op at collection time would initialise
# the devices before tests/training/conftest.py splits the CPU in two.
def _span():
  return 13 if dilated_depthwise.native_dilated_depthwise_available() else 0


def _require_in_place_kernel():
  """Tests of the in-place kernels themselves: TF's own CPU kernel (oneDNN off) and oneDNN without
  AVX-512 have no dilated DepthwiseConv2dNative, and the CPU policy never chooses it there."""
  if not _span():
    pytest.skip("this TensorFlow/CPU has no dilated DepthwiseConv2dNative kernel")


def _fast(*args, **kwargs):
  return convolutions.DepthwiseConv2D(*args, in_place_dilation_max_span=_span(),
                                      bf16_strided_input_gradient_in_float32=True, **kwargs)


def _bf16_values(shape):
  return tf.cast(tf.cast(RNG.standard_normal(shape), tf.bfloat16), tf.float32)


@pytest.mark.parametrize("stride,padding", [(2, "valid"), (2, "same"), (1, "same")])
def test_bfloat16_gradients_match_float32(stride, padding):
  layer = _fast(3, strides=stride, padding=padding, use_bias=True,
                dtype=keras.mixed_precision.Policy("mixed_bfloat16"))
  x = _bf16_values((2, 9, 9, 5))
  layer.build(x.shape)
  layer.set_weights([_bf16_values((3, 3, 5, 1)).numpy(), _bf16_values((5,)).numpy()])
  x16 = tf.cast(x, tf.bfloat16)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x16)
    y = layer(x16)
    dy = _bf16_values(y.shape)
    loss = tf.reduce_sum(tf.cast(y, tf.float32) * dy)
  dx, (dkernel, dbias) = tape.gradient(loss, x16), tape.gradient(loss, layer.trainable_weights)
  kernel, bias = layer.kernel, layer.bias
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    expected_y = tf.nn.depthwise_conv2d(x, kernel, [1, stride, stride, 1], padding.upper()) + bias
    expected_loss = tf.reduce_sum(expected_y * dy)
  expected = [expected_y, tape.gradient(expected_loss, x), *tape.gradient(expected_loss,
                                                                          [kernel, bias])]
  assert y.dtype == dx.dtype == tf.bfloat16
  # Sums of bfloat16 terms, each rounded to 2**-8 relative: within 2**-7 of the sum of the terms'
  # magnitudes. y, dx: <= 9 taps; dkernel, dbias: all output positions.
  magnitude = np.abs(dy.numpy()).sum((0, 1, 2))
  tolerances = [2 ** -6 * np.abs(expected[0]).max(), 2 ** -6 * np.abs(expected[1]).max(),
                2 ** -7 * magnitude[:, None] * np.abs(x.numpy()).max(), 2 ** -7 * magnitude]
  for got, want, tolerance in zip([y, dx, dkernel, dbias], expected, tolerances):
    got, want = tf.cast(got, tf.float32).numpy(), want.numpy()
    assert got.shape == want.shape
    np.testing.assert_array_less(np.abs(got - want), np.broadcast_to(tolerance + 1e-6, got.shape))


def test_strided_bfloat16_input_gradient_runs_the_float32_kernel():
  layer = _fast(3, strides=2, padding="valid", use_bias=False,
                dtype=keras.mixed_precision.Policy("mixed_bfloat16"))
  x = tf.zeros((1, 9, 9, 4), tf.bfloat16)
  layer.build(x.shape)

  @tf.function
  def gradient(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x)
    return tape.gradient(y, x)

  ops = gradient.get_concrete_function(x).graph.get_operations()
  backprop = [op for op in ops if op.type == "DepthwiseConv2dNativeBackpropInput"]
  assert [op.get_attr("T") for op in backprop] == [tf.float32]


def test_builders_make_keras_layers_and_the_cpu_policy_the_fast_one_which_serialises():
  inputs = keras.Input((9, 9, 4))
  out = layers.depthwise_conv2d_same(inputs, 3, 1, 2, "sep_depthwise", bn_params=None,
                                     activation=False)
  model = keras.Model(inputs, out)
  assert type(model.get_layer("sep_depthwise")) is keras.layers.DepthwiseConv2D  # pylint: disable=unidiomatic-typecheck
  fast = apply_kernel_policy(model, KernelPolicy.cpu(in_place_dilated_depthwise=True))
  layer = fast.get_layer("sep_depthwise")
  assert type(layer) is convolutions.DepthwiseConv2D  # pylint: disable=unidiomatic-typecheck
  assert layer.in_place_dilation_max_span == 13
  assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()
  assert [l.name for l in fast.layers] == [l.name for l in model.layers]


def _graph_op_types(function, *args):
  return [op.type for op in tf.function(function).get_concrete_function(*args).graph.get_operations()]


@pytest.mark.parametrize("kernel_size,rate,padding", [
    (3, 2, "SAME"), (3, 6, "SAME"), (5, 3, "SAME"), (3, (2, 1), "SAME"), (3, 12, "SAME"),
    (3, 18, "SAME"), (3, 2, "VALID"), (3, 7, "VALID")])  # VALID 7 (block 7): tf.nn's own form.
def test_dilated_convolution_and_gradients_equal_space_to_batch(kernel_size, rate, padding):
  _require_in_place_kernel()
  rate = (rate, rate) if isinstance(rate, int) else rate
  x = tf.constant(RNG.standard_normal((2, 17, 15, 6)), tf.float32)
  kernel = tf.constant(RNG.standard_normal((kernel_size, kernel_size, 6, 1)), tf.float32)
  results = []
  for convolution in (dilated_depthwise.dilated_depthwise_conv2d,
                      lambda x, k, rate, padding: tf.nn.depthwise_conv2d(
                          x, k, [1, 1, 1, 1], padding, dilations=rate)):
    with tf.GradientTape() as tape:
      tape.watch([x, kernel])
      y = convolution(x, kernel, rate, padding)
    dy = tf.constant(np.random.default_rng(1).standard_normal(y.shape), tf.float32)
    results.append([y, *tape.gradient(y, [x, kernel], output_gradients=dy)])
  for got, want in zip(*results):
    assert got.shape == want.shape
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0,
                               atol=1e-5 * np.abs(want.numpy()).max())


def test_dilated_input_gradient_against_finite_differences():
  """TF's CPU DepthwiseConv2dNative gradient kernels ignore dilations: this would catch their use."""
  _require_in_place_kernel()
  x = tf.constant(RNG.standard_normal((1, 7, 7, 2)), tf.float32)
  kernel = tf.constant(RNG.standard_normal((3, 3, 2, 1)), tf.float32)
  for argument, function in ((x, lambda x: dilated_depthwise.dilated_depthwise_conv2d(x, kernel, (2, 2), "SAME")),
                             (kernel, lambda k: dilated_depthwise.dilated_depthwise_conv2d(x, k, (2, 2), "SAME"))):
    (analytic,), (numeric,) = tf.test.compute_gradient(function, [argument], delta=1e-2)
    # The function is linear in each argument, so central differences are exact up to float32
    # rounding of sums of ~9 terms of size ~3, divided by delta: ~1e-4.
    np.testing.assert_allclose(analytic, numeric, rtol=0, atol=1e-3)
    assert np.abs(numeric).max() > 1


@pytest.mark.parametrize("rate,kernel_size,size,split", [
    (2, 3, 33, (1, 2)), (6, 3, 33, (1, 6)), (7, 3, 33, (7, 1)),  # Span 15: 7 is prime.
    (12, 3, 33, (3, 4)), (12, 3, 34, (2, 6)), (12, 3, None, (2, 6)), (18, 3, 33, (3, 6)),
    (36, 3, 65, (6, 6)), (3, 5, 33, (1, 3)), (4, 5, 33, (2, 2)), (5, 1, 7, (1, 5))])
def test_dilation_split(rate, kernel_size, size, split):
  """The fewest padded pixels, then the smallest block, among inner spans <= 13 pixels."""
  assert dilated_depthwise.dilation_split(rate, kernel_size, size) == split


@pytest.mark.parametrize("rate,size,block,inner_rate", [
    (2, 21, 1, 2), (6, 21, 1, 6), (12, 21, 3, 4), (12, 22, 2, 6), (7, 21, 7, 1), (18, 20, 3, 6)])
def test_layer_runs_the_dilation_split(rate, size, block, inner_rate):
  layer = _fast(3, dilation_rate=rate, padding="same", use_bias=True,
                bias_initializer="random_normal")
  x = tf.constant(RNG.standard_normal((1, size, size, 4)), tf.float32)
  y = layer(x)
  expected = tf.nn.depthwise_conv2d(x, layer.kernel, [1, 1, 1, 1], "SAME",
                                    dilations=[rate, rate]) + layer.bias
  np.testing.assert_allclose(y.numpy(), expected.numpy(), rtol=0,
                             atol=1e-5 * np.abs(expected.numpy()).max())
  ops = tf.function(layer).get_concrete_function(x).graph.get_operations()
  blocks = [tf.get_static_value(op.inputs[1]).tolist() for op in ops if op.type == "SpaceToBatchND"]
  convolutions = [list(op.get_attr("dilations")) for op in ops if op.type == "DepthwiseConv2dNative"]
  if not _span():  # TF's own kernel: the CPU policy keeps tf.nn's form.
    assert blocks == [[rate, rate]] and convolutions == [[1, 1, 1, 1]]
    return
  assert blocks == ([] if block == 1 else [[block, block]])
  assert convolutions == [[1, inner_rate, inner_rate, 1]]


def test_dilation_split_with_unknown_height_and_width():
  """Compiled inference traces with relaxed shapes: the block's padding is then computed at run time."""
  _require_in_place_kernel()
  layer = convolutions.DepthwiseConv2D(3, dilation_rate=12, padding="same", use_bias=False,
                                       in_place_dilation_max_span=13)
  layer.build((None, None, None, 4))
  convolution = tf.function(layer, input_signature=[tf.TensorSpec([1, None, None, 4], tf.float32)])
  for height, width in ((21, 22), (33, 17)):
    x = tf.constant(RNG.standard_normal((1, height, width, 4)), tf.float32)
    expected = tf.nn.depthwise_conv2d(x, layer.kernel, [1, 1, 1, 1], "SAME", dilations=[12, 12])
    got = convolution(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=0,
                               atol=1e-5 * np.abs(expected.numpy()).max())


def test_dilations_fall_back_to_space_to_batch_where_the_kernel_lacks_them(monkeypatch):
  """Without oneDNN the CPU policy keeps tf.nn's form: its model has no in-place dilation."""
  monkeypatch.setattr(dilated_depthwise, "native_dilated_depthwise_available", lambda: False)
  assert not KernelPolicy.cpu().in_place_dilated_depthwise
  inputs = keras.Input((9, 9, 4))
  model = keras.Model(inputs, keras.layers.DepthwiseConv2D(3, dilation_rate=2, padding="same",
                                                           use_bias=False, name="d")(inputs))
  layer = apply_kernel_policy(model, KernelPolicy.cpu()).get_layer("d")
  x = tf.constant(RNG.standard_normal((1, 9, 9, 4)), tf.float32)
  assert "SpaceToBatchND" in _graph_op_types(layer, x)
  expected = tf.nn.depthwise_conv2d(x, layer.kernel, [1, 1, 1, 1], "SAME", dilations=[2, 2])
  np.testing.assert_allclose(layer(x).numpy(), expected.numpy(), rtol=0, atol=1e-5 * 9 * 16)


def test_bfloat16_dilated_convolution_matches_float32():
  layer = _fast(3, dilation_rate=2, padding="same", use_bias=False,
                dtype=keras.mixed_precision.Policy("mixed_bfloat16"))
  x = _bf16_values((2, 11, 11, 16))
  layer.build(x.shape)
  layer.set_weights([_bf16_values((3, 3, 16, 1)).numpy()])
  with tf.GradientTape() as tape:
    x16 = tf.cast(x, tf.bfloat16)
    tape.watch(x16)
    y = layer(x16)
  dx = tape.gradient(y, x16)
  with tf.GradientTape() as tape:
    tape.watch(x)
    expected = tf.nn.depthwise_conv2d(x, layer.kernel, [1, 1, 1, 1], "SAME", dilations=[2, 2])
  expected_dx = tape.gradient(expected, x)
  assert y.dtype == dx.dtype == tf.bfloat16
  # <= 9 products of bfloat16 values summed in bfloat16 or float32: within 2**-6 of the largest.
  for got, want in ((y, expected), (dx, expected_dx)):
    got, want = tf.cast(got, tf.float32).numpy(), want.numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=2 ** -6 * np.abs(want).max())
