"""`FusedBatchNormalization` computes Keras' BatchNormalization (and slim's fused BN) on one kernel.

References are Keras' own `BatchNormalization` with the same weights and numpy by hand. Tolerances:
float32 results of two different reduction orders over <= 2*9*9 values differ by a few ulps of their
magnitude (~1), so 1e-5 absolute leaves a wide margin on any CPU.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.model import layers

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((2, 9, 9, 4)) * 3.0 + 1.5).astype(np.float32)
WEIGHTS = [np.array([1.0, 0.5, 2.0, -1.0], np.float32), np.array([0.1, -0.2, 0.3, 0.0], np.float32),
           np.array([0.5, 1.0, -1.0, 0.0], np.float32), np.array([2.0, 1.0, 0.5, 4.0], np.float32)]


def _pair(momentum=0.9, epsilon=1e-3):
  fused = layers.FusedBatchNormalization(momentum=momentum, epsilon=epsilon)
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


def test_training_output_gradients_and_moving_averages():
  fused, plain = _pair(momentum=0.25)
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
  """Inference casts no activation in a traced conv + BN + ReLU; training computes BN in float32."""
  inputs = keras.Input((9, 9, 4), dtype="bfloat16")
  policy = keras.mixed_precision.Policy("mixed_bfloat16")
  x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, dtype=policy)(inputs)
  x = layers.FusedBatchNormalization(dtype=policy)(x)
  x = keras.layers.ReLU(dtype=policy)(x)
  model = keras.Model(inputs, x)
  for training in (False, True):
    graph = tf.function(lambda a, t=training: model(a, training=t)).get_concrete_function(
        tf.TensorSpec((2, 9, 9, 4), tf.bfloat16)).graph
    ops = [op.type for op in graph.get_operations()]
    # Training: the fused kernel in float32 between two casts (oneDNN's bfloat16 training kernels are
    # slower than the casts); inference: one bfloat16 multiply-add, no cast.
    assert ops.count("FusedBatchNormV3") == (1 if training else 0)
    activation_casts = [op.outputs[0].dtype for op in graph.get_operations() if op.type == "Cast"
                        and tuple(op.outputs[0].shape) == (2, 9, 9, 4)]
    assert activation_casts == ([tf.float32, tf.bfloat16] if training else []), ops
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
  # Training: batch moments of the bfloat16 conv output, normalised in float32, rounded to bfloat16.
  out = model(tf.constant(X, tf.bfloat16), training=True)
  assert out.dtype == tf.bfloat16
  conv = tf.cast(conv, tf.float32).numpy()
  expected = np.maximum(0.0, (conv - conv.mean((0, 1, 2))) / np.sqrt(conv.var((0, 1, 2)) + 1e-3)
                        * gamma + beta)
  np.testing.assert_allclose(tf.cast(out, tf.float32).numpy(), expected, atol=0.02, rtol=2 ** -7)


@pytest.mark.parametrize("channels,in_float32", [(4, True), (728, True), (16, False), (736, False)])
def test_bfloat16_training_bn_runs_float32_only_off_whole_vectors(channels, in_float32):
  """bfloat16 training BN keeps the bfloat16 kernel on channel counts that are multiples of 16."""
  assert layers.bf16_training_bn_in_float32(channels) is in_float32
  bn = layers.FusedBatchNormalization(dtype=keras.mixed_precision.Policy("mixed_bfloat16"))
  x = tf.cast(RNG.standard_normal((2, 3, 3, channels)) * 3.0 + 1.5, tf.bfloat16)
  graph = tf.function(lambda a: bn(a, training=True)).get_concrete_function(x).graph
  kernel_inputs = [op.inputs[0].dtype for op in graph.get_operations()
                   if op.type == "FusedBatchNormV3"]
  assert kernel_inputs == [tf.float32 if in_float32 else tf.bfloat16]
  # Both kernels normalise with the batch moments to bfloat16 precision (2**-8 relative, values ~3).
  out = tf.cast(bn(x, training=True), tf.float32).numpy()
  x = tf.cast(x, tf.float32).numpy()
  np.testing.assert_allclose(out, (x - x.mean((0, 1, 2))) / np.sqrt(x.var((0, 1, 2)) + 1e-3),
                             atol=0.02, rtol=2 ** -7)


def test_bfloat16_training_bn_switch_keeps_the_bfloat16_kernel(monkeypatch):
  monkeypatch.setattr(layers, "BF16_TRAINING_BN_IN_FLOAT32", False)
  assert not layers.bf16_training_bn_in_float32(728)


def test_other_inputs_fall_back_to_keras():
  layer = layers.FusedBatchNormalization()
  x = RNG.standard_normal((3, 4)).astype(np.float32)
  out = layer(x, training=True).numpy()
  np.testing.assert_allclose(out, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-3), atol=1e-5)


def test_batch_norm_helper_builds_the_fused_layer_and_serialises():
  inputs = keras.Input((9, 9, 4))
  model = keras.Model(inputs, layers.batch_norm(inputs, "a/b", layers.BatchNormParams(0.99, 1e-5)))
  layer = model.get_layer("a.b.BatchNorm")
  assert isinstance(layer, layers.FusedBatchNormalization)
  assert (layer.momentum, layer.epsilon) == pytest.approx((0.99, 1e-5))
  clone = keras.Model.from_config(model.get_config())
  assert isinstance(clone.get_layer("a.b.BatchNorm"), layers.FusedBatchNormalization)
