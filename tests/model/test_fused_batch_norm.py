"""The original's BatchNorm (`layers.BatchNormalization`, plain TF ops) and the CPU policy's
`FusedBatchNormalization` (one kernel) compute Keras' BatchNormalization, with slim's fused BN's
Bessel-corrected moving variance.

References are Keras' own `BatchNormalization` with the same weights and numpy by hand. Tolerances:
float32 results of two different reduction orders over <= 2*9*9 values differ by a few ulps of their
magnitude (~1), so 1e-5 absolute leaves a wide margin on any CPU.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.model import layers
from deeplab_tf.model.acceleration.batch_norm import FusedBatchNormalization
from deeplab_tf.model.acceleration.channel_padding import channel_padding

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((2, 9, 9, 4)) * 3.0 + 1.5).astype(np.float32)
WEIGHTS = [np.array([1.0, 0.5, 2.0, -1.0], np.float32), np.array([0.1, -0.2, 0.3, 0.0], np.float32),
           np.array([0.5, 1.0, -1.0, 0.0], np.float32), np.array([2.0, 1.0, 0.5, 4.0], np.float32)]


def _pair(momentum=0.9, epsilon=1e-3, cls=FusedBatchNormalization):
  fused = cls(momentum=momentum, epsilon=epsilon)
  plain = keras.layers.BatchNormalization(momentum=momentum, epsilon=epsilon)
  for layer in (fused, plain):
    layer.build(X.shape)
    layer.set_weights(WEIGHTS)
  return fused, plain


def test_inference_equals_keras_and_the_formula():
  fused, plain = _pair()
  gamma, beta, mean, variance = WEIGHTS
  by_hand = (X - mean) / np.sqrt(variance + 1e-3) * gamma + beta
  np.testing.assert_allclose(fused(X, training=False).numpy(), by_hand, atol=1e-5)
  np.testing.assert_allclose(fused(X, training=False).numpy(), plain(X, training=False).numpy(),
                             atol=1e-5)


@pytest.mark.parametrize("cls", [FusedBatchNormalization, layers.BatchNormalization])
def test_training_output_gradients_and_moving_averages(cls):
  fused, plain = _pair(momentum=0.25, cls=cls)
  x = tf.constant(X)
  results = []
  for layer in (fused, plain):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = layer(x, training=True)
      loss = tf.reduce_sum(y * y * tf.range(4, dtype=tf.float32))
    results.append((y.numpy(), [g.numpy() for g in tape.gradient(loss, [x, layer.gamma, layer.beta])]))
  (y_fused, grads_fused), (y_plain, grads_plain) = results
  np.testing.assert_allclose(y_fused, y_plain, atol=1e-5)
  for a, b in zip(grads_fused, grads_plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
  flat = X.reshape(-1, 4)
  # moving = momentum * moving + (1 - momentum) * batch statistic; the variance with Bessel's
  # correction, as slim's fused batch_norm (the original) updates it.
  np.testing.assert_allclose(fused.moving_mean.numpy(), 0.25 * WEIGHTS[2] + 0.75 * flat.mean(0),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(fused.moving_variance.numpy(),
                             0.25 * WEIGHTS[3] + 0.75 * flat.var(0, ddof=1), rtol=1e-5)


def test_frozen_layer_uses_moving_statistics_and_keeps_them():
  fused, _ = _pair()
  fused.trainable = False
  np.testing.assert_allclose(fused(X, training=True).numpy(), fused(X, training=False).numpy(),
                             atol=0)
  for weight, value in zip(fused.weights, WEIGHTS):
    np.testing.assert_array_equal(weight.numpy(), value)


def test_mixed_bfloat16_keeps_activations_in_bfloat16():
  """Neither inference nor training casts an activation in a traced conv + BN + ReLU."""
  inputs = keras.Input((9, 9, 4), dtype="bfloat16")
  policy = keras.mixed_precision.Policy("mixed_bfloat16")
  x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, dtype=policy)(inputs)
  x = FusedBatchNormalization(dtype=policy, bf16_training_channel_multiple=16,
                              bf16_inference_as_affine=True)(x)
  x = keras.layers.ReLU(dtype=policy)(x)
  model = keras.Model(inputs, x)
  for training in (False, True):
    graph = tf.function(lambda a, t=training: model(a, training=t)).get_concrete_function(
        tf.TensorSpec((2, 9, 9, 4), tf.bfloat16)).graph
    ops = [op.type for op in graph.get_operations()]
    # Training: the bfloat16 kernel (on channels padded to 16); inference: one bfloat16 multiply-add.
    assert ops.count("FusedBatchNormV3") == (1 if training else 0)
    activation_casts = [op.outputs[0].dtype for op in graph.get_operations() if op.type == "Cast"
                        and tuple(op.outputs[0].shape) == (2, 9, 9, 4)]
    assert activation_casts == [], ops
  out = model(tf.constant(X, tf.bfloat16), training=False)
  assert out.dtype == tf.bfloat16
  # The bfloat16 multiply-add is the float32 BN to bfloat16 precision (2**-8 relative, values ~3).
  bn = model.layers[2]
  gamma, beta, mean, variance = (w.numpy() for w in bn.weights)
  conv = tf.nn.conv2d(tf.constant(X, tf.bfloat16), tf.cast(model.layers[1].kernel, tf.bfloat16), 1,
                      "SAME")
  expected = np.maximum(0.0, (tf.cast(conv, tf.float32).numpy() - mean) / np.sqrt(variance + 1e-3)
                        * gamma + beta)
  np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), expected, atol=0.05, rtol=0.02)
  # Training: batch moments of the bfloat16 conv output, normalised, rounded to bfloat16.
  out = model(tf.constant(X, tf.bfloat16), training=True)
  assert out.dtype == tf.bfloat16
  conv = tf.cast(conv, tf.float32).numpy()
  expected = np.maximum(0.0, (conv - conv.mean((0, 1, 2))) / np.sqrt(conv.var((0, 1, 2)) + 1e-3)
                        * gamma + beta)
  np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), expected, atol=0.02, rtol=2 ** -7)


@pytest.mark.parametrize("channels,padded", [(4, 16), (728, 736), (16, 16), (736, 736)])
def test_bfloat16_training_bn_pads_channels_to_whole_vectors(channels, padded):
  """bfloat16 training BN runs the bfloat16 kernel on channels zero-padded to a multiple of 16."""
  assert channel_padding(channels, 16) == padded - channels
  bn = FusedBatchNormalization(dtype=keras.mixed_precision.Policy("mixed_bfloat16"),
                               bf16_training_channel_multiple=16)
  x = tf.cast(RNG.standard_normal((2, 3, 3, channels)) * 3.0 + 1.5, tf.bfloat16)
  bn.build(x.shape)
  bn.gamma.assign(RNG.uniform(0.5, 2.0, channels))
  bn.beta.assign(RNG.standard_normal(channels))
  graph = tf.function(lambda a: bn(a, training=True)).get_concrete_function(x).graph
  kernels = [op.inputs[0] for op in graph.get_operations() if op.type == "FusedBatchNormV3"]
  assert [(k.dtype, k.shape[-1]) for k in kernels] == [(tf.bfloat16, padded)]
  assert not [op for op in graph.get_operations() if op.type == "Cast"
              and op.outputs[0].shape.rank == 4]
  weights = RNG.standard_normal((2, 3, 3, channels)).astype(np.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    out = bn(x, training=True)
    loss = tf.reduce_sum(tf.cast(out, tf.float32) * weights)
  grad = tape.gradient(loss, x)
  assert out.shape == grad.shape == x.shape
  # The kernel normalises with the batch moments to bfloat16 precision (2**-8 relative, values ~5).
  out = tf.cast(out, tf.float32).numpy()
  x = tf.cast(x, tf.float32)
  mean, var = x.numpy().mean((0, 1, 2)), x.numpy().var((0, 1, 2))
  gamma, beta = bn.gamma.numpy(), bn.beta.numpy()
  np.testing.assert_allclose(out, (x.numpy() - mean) / np.sqrt(var + 1e-3) * gamma + beta,
                             atol=0.05, rtol=2 ** -7)
  # The moving statistics take the true channels' moments (Bessel-corrected variance, n = 18).
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.01 * mean, rtol=0.02, atol=1e-4)
  np.testing.assert_allclose(bn.moving_variance.numpy(), 0.99 + 0.01 * var * 18 / 17, rtol=0.02)
  # The gradient is float32 BN's to bfloat16 precision (2**-8 of its largest values).
  reference = FusedBatchNormalization()
  reference.build(x.shape)
  reference.set_weights([gamma, beta, np.zeros(channels), np.ones(channels)])
  with tf.GradientTape() as tape:
    tape.watch(x)
    loss = tf.reduce_sum(reference(x, training=True) * weights)
  expected = tape.gradient(loss, x).numpy()
  np.testing.assert_allclose(tf.cast(grad, tf.float32).numpy(), expected,
                             atol=2 ** -5 * np.abs(expected).max())


def test_bfloat16_training_bn_padding_can_be_switched_off():
  bn = FusedBatchNormalization(dtype=keras.mixed_precision.Policy("mixed_bfloat16"),
                               bf16_training_channel_multiple=1)
  x = tf.zeros((2, 3, 3, 728), tf.bfloat16)
  graph = tf.function(lambda a: bn(a, training=True)).get_concrete_function(x).graph
  kernels = [op.inputs[0] for op in graph.get_operations() if op.type == "FusedBatchNormV3"]
  assert [k.shape[-1] for k in kernels] == [728]


@pytest.mark.parametrize("cls", [FusedBatchNormalization, layers.BatchNormalization])
def test_other_inputs_fall_back_to_keras(cls):
  layer = cls()
  x = RNG.standard_normal((3, 4)).astype(np.float32)
  out = layer(x, training=True).numpy()
  np.testing.assert_allclose(out, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), atol=1e-5)


def test_batch_norm_helper_builds_the_plain_layer_and_serialises():
  inputs = keras.Input((9, 9, 4))
  model = keras.Model(inputs, layers.batch_norm(inputs, "a/b", layers.BatchNormParams(0.99, 1e-5)))
  layer = model.get_layer("a.b.BatchNorm")
  assert type(layer) is layers.BatchNormalization  # pylint: disable=unidiomatic-typecheck
  assert (layer.momentum, layer.epsilon) == pytest.approx((0.99, 1e-5))
  clone = keras.Model.from_config(model.get_config())
  assert type(clone.get_layer("a.b.BatchNorm")) is layers.BatchNormalization  # pylint: disable=unidiomatic-typecheck
