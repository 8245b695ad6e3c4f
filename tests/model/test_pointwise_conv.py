"""`PointwiseConv2D` trains as a matrix product and equals Keras' 1x1 Conv2D, forward and backward.

Tolerance: both sum the same 16 products per output in float32, in different orders: a few ulps of
values of magnitude ~4, far below 1e-5.
"""
import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.model import layers
from deeplab_tf.model.acceleration import KernelPolicy, apply_kernel_policy, convolutions

RNG = np.random.default_rng(0)
X = RNG.standard_normal((2, 5, 7, 16)).astype(np.float32)


def test_training_matmul_equals_the_convolution_and_its_gradients():
  pointwise = convolutions.PointwiseConv2D(8, 1, use_bias=True, name="p")
  plain = keras.layers.Conv2D(8, 1, use_bias=True)
  for layer in (pointwise, plain):
    layer.build(X.shape)
  plain.set_weights([RNG.standard_normal((1, 1, 16, 8)), RNG.standard_normal(8)])
  pointwise.set_weights(plain.get_weights())
  x = tf.constant(X)
  results = []
  for layer, training in ((pointwise, True), (pointwise, False), (plain, True)):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=training)
      loss = tf.reduce_sum(y * y)
    results.append([y.numpy()] + [g.numpy() for g in tape.gradient(loss, [x] + layer.weights)])
  for a, b in zip(results[0], results[2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)
  for a, b in zip(results[1], results[2]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_training_graph_uses_matmul_and_inference_the_convolution():
  """The CPU policy's training model: matrix products in training, the convolution at inference
  (which grappler fuses with the BatchNorm after it)."""
  inputs = keras.Input((None, None, 16))
  plain = keras.Model(inputs, layers.conv2d_same(inputs, 8, 1, 1, 1, "a/b", bn_params=None))
  assert type(plain.get_layer("a.b")) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck
  model = apply_kernel_policy(plain, KernelPolicy.cpu(), training=True)
  assert isinstance(model.get_layer("a.b"), convolutions.PointwiseConv2D)
  for training, expected in ((True, "MatMul"), (False, "Conv2D")):
    graph = tf.function(lambda t, training=training: model(t, training=training)).get_concrete_function(
        tf.TensorSpec((None, None, None, 16))).graph
    types = {op.type for op in graph.get_operations()}
    assert expected in types and ({"MatMul", "Conv2D"} - {expected}).isdisjoint(types)
  # Strided, dilated or larger kernels stay Keras Conv2D.
  x = layers.conv2d_same(inputs, 8, 3, 1, 1, "c", bn_params=None, activation=False)
  assert type(x._keras_history.operation) is keras.layers.Conv2D  # pylint: disable=protected-access
