"""`layers.DepthwiseConv2D`: Keras' layer whose strided bfloat16 input gradient runs in float32.

The reference is TF's own gradient of `tf.nn.depthwise_conv2d` in float32 on the same (bfloat16-
representable) values; the bfloat16 results carry bfloat16's 2**-8 relative rounding.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.model import layers

RNG = np.random.default_rng(0)


def _bf16_values(shape):
  return tf.cast(tf.cast(RNG.standard_normal(shape), tf.bfloat16), tf.float32)


@pytest.mark.parametrize("stride,padding", [(2, "valid"), (2, "same"), (1, "same")])
def test_bfloat16_gradients_match_float32(stride, padding):
  layer = layers.DepthwiseConv2D(3, strides=stride, padding=padding, use_bias=True,
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
  layer = layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False,
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


def test_layer_serialises_and_is_built_by_depthwise_conv2d_same():
  inputs = keras.Input((9, 9, 4))
  out = layers.depthwise_conv2d_same(inputs, 3, 2, 1, "sep_depthwise", bn_params=None,
                                     activation=False)
  model = keras.Model(inputs, out)
  layer = model.get_layer("sep_depthwise")
  assert isinstance(layer, layers.DepthwiseConv2D)
  clone = keras.Model.from_config(model.get_config())
  assert type(clone.get_layer("sep_depthwise")) is layers.DepthwiseConv2D
