"""Channel padding (`acceleration.channel_padding`): layers whose inputs and outputs carry trailing
zero channels, and `with_channel_padding`, the rewrite of a built model that carries Xception's 728
channels as 736.

Each padded layer is compared with the unpadded layer holding the same weights, on the same real
channels: outputs, input gradients and variable gradients must agree to float32 rounding (the padded
channels add exact zeros to every sum, so only the kernels' summation blocking can differ: 1e-5
relative), and the padded output channels must be exactly zero.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import deeplab_tf
from deeplab_tf import options
from deeplab_tf.model.acceleration import channel_padding as padding_lib
from deeplab_tf.model.acceleration import convolutions, folding
from deeplab_tf.model.acceleration.batch_norm import FusedBatchNormalization

RNG = np.random.default_rng(0)
TOLERANCE = 1e-5  # Relative: float32 sums over the same terms in another order (module docstring).


def _close(actual, expected):
  actual, expected = np.asarray(actual), np.asarray(expected)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=TOLERANCE * max(np.abs(expected).max(), 1))


def _pad(x, padding):
  return tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, padding]])


def _outputs_and_gradients(layer, x, training, dy):
  """The layer's output, and the gradients of `sum(y[..., :real channels] * dy)`."""
  x = tf.convert_to_tensor(x)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(x)
    y = layer(x, training=training) if training is not None else layer(x)
    loss = tf.reduce_sum(y[..., :dy.shape[-1]] * dy)
  return y, tape.gradient(loss, x), tape.gradient(loss, layer.trainable_weights)


def _check(padded, plain, channels_in, padding_in, channels_out, padding_out, training=None):
  x = RNG.standard_normal((2, 9, 9, channels_in)).astype(np.float32)
  plain.build(x.shape)
  padded.build(x.shape[:-1] + (channels_in + padding_in,))
  assert [w.shape for w in padded.weights] == [w.shape for w in plain.weights]
  for w in plain.weights:  # Non-trivial statistics for the BatchNorm.
    w.assign(RNG.uniform(0.5, 1.5, w.shape) if "variance" in w.path else RNG.standard_normal(w.shape))
  padded.set_weights(plain.get_weights())
  dy = tf.constant(RNG.standard_normal(plain.compute_output_shape(x.shape)), tf.float32)
  y, dx, dw = _outputs_and_gradients(padded, _pad(x, padding_in), training, dy)
  y_ref, dx_ref, dw_ref = _outputs_and_gradients(plain, x, training, dy)
  assert y.shape[-1] == channels_out + padding_out
  assert np.all(y.numpy()[..., channels_out:] == 0)
  _close(y[..., :channels_out], y_ref)
  _close(dx[..., :channels_in], dx_ref)
  for g, g_ref in zip(dw, dw_ref):
    _close(g, g_ref)
  return padded, plain


@pytest.mark.parametrize("strides,kernel_size", [(1, 1), (2, 1), (1, 3)])
def test_conv2d(strides, kernel_size):
  args = dict(filters=12, kernel_size=kernel_size, strides=strides, use_bias=True, padding="same")
  _check(convolutions.Conv2D(input_channel_padding=3, output_channel_padding=4, **args),
         keras.layers.Conv2D(**args), 5, 3, 12, 4)


@pytest.mark.parametrize("training", [True, False])
def test_pointwise_conv2d_as_matmul_and_convolution(training):
  _check(convolutions.PointwiseConv2D(12, 1, use_bias=True, input_channel_padding=3,
                                output_channel_padding=4),
         keras.layers.Conv2D(12, 1, use_bias=True), 5, 3, 12, 4, training=training)


@pytest.mark.parametrize("strides,dilation", [(1, 1), (2, 1), (1, 2)])
def test_depthwise_conv2d(strides, dilation):
  args = dict(kernel_size=3, strides=strides, dilation_rate=dilation, padding="same", use_bias=True)
  _check(convolutions.DepthwiseConv2D(channel_padding=3, **args), keras.layers.DepthwiseConv2D(**args),
         5, 3, 5, 3)


def test_bfloat16_strided_depthwise_conv2d():
  """The float32 input-gradient path (`depthwise_conv2d_float32_input_gradient`) on padded channels."""
  policy = keras.mixed_precision.Policy("mixed_bfloat16")
  padded = convolutions.DepthwiseConv2D(3, strides=2, channel_padding=3, dtype=policy,
                                        bf16_strided_input_gradient_in_float32=True)
  plain = convolutions.DepthwiseConv2D(3, strides=2, dtype=policy,
                                       bf16_strided_input_gradient_in_float32=True)
  x = tf.cast(RNG.standard_normal((2, 9, 9, 5)), tf.bfloat16)
  plain.build(x.shape)
  padded.build((2, 9, 9, 8))
  padded.set_weights(plain.get_weights())
  dy = tf.cast(RNG.standard_normal((2, 4, 4, 5)), tf.bfloat16)  # VALID: (9 - 3) // 2 + 1.
  results = []
  for layer, inputs in ((padded, _pad(x, 3)), (plain, x)):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(inputs)
      y = layer(inputs)
      loss = tf.reduce_sum(tf.cast(y[..., :5] * dy, tf.float32))
    results.append((y, tape.gradient(loss, inputs), tape.gradient(loss, layer.kernel)))
  (y, dx, dkernel), (y_ref, dx_ref, dkernel_ref) = results
  assert y.dtype == tf.bfloat16 and np.all(y.numpy()[..., 5:] == 0)
  # The same bfloat16 products and sums; zeros added: equal up to bfloat16 rounding (2**-8).
  for a, b in ((y[..., :5], y_ref), (dx[..., :5], dx_ref), (dkernel, dkernel_ref)):
    a, b = tf.cast(a, tf.float32).numpy(), tf.cast(b, tf.float32).numpy()
    np.testing.assert_allclose(a, b, atol=2 ** -8 * np.abs(b).max())


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm(training):
  padded, plain = _check(FusedBatchNormalization(channel_padding=3, momentum=0.5),
                         FusedBatchNormalization(momentum=0.5), 5, 3, 5, 3, training=training)
  for w, w_ref in zip(padded.non_trainable_weights, plain.non_trainable_weights):
    assert w.shape == (5,)
    _close(w, w_ref)  # Moving averages: updated from the real channels' moments only.


def test_bfloat16_batch_norm_on_736_channels_pads_nothing_more():
  layer = FusedBatchNormalization(channel_padding=8, bf16_training_channel_multiple=16,
                                  dtype=keras.mixed_precision.Policy("mixed_bfloat16"))
  x = tf.zeros((1, 3, 3, 736), tf.bfloat16)
  graph = tf.function(lambda x: layer(x, training=True)).get_concrete_function(x).graph
  kinds = [op.type for op in graph.get_operations()]
  assert "FusedBatchNormV3" in kinds
  assert "Slice" not in kinds  # The bfloat16 padding to 16 channels had nothing to add.
  assert layer.gamma.shape == (728,)


def test_configs_round_trip_and_bad_paddings():
  for layer in (convolutions.Conv2D(4, 1, input_channel_padding=2, output_channel_padding=3),
                convolutions.PointwiseConv2D(4, 1, output_channel_padding=3),
                convolutions.DepthwiseConv2D(3, channel_padding=2),
                FusedBatchNormalization(channel_padding=2)):
    config = json.loads(json.dumps(layer.get_config()))
    assert padding_lib.channel_paddings(layer.__class__.from_config(config)) == padding_lib.channel_paddings(layer)
    assert padding_lib.channel_paddings(layer.__class__.from_config(
        padding_lib.config_without_channel_padding(config))) == (0, 0)
  with pytest.raises(ValueError, match="must be >= 0"):
    convolutions.Conv2D(4, 1, output_channel_padding=-1)
  with pytest.raises(ValueError, match="channels_last"):
    convolutions.Conv2D(4, 1, input_channel_padding=2, data_format="channels_first")
  with pytest.raises(ValueError, match="depth_multiplier=1"):
    convolutions.DepthwiseConv2D(3, depth_multiplier=2, channel_padding=2)
  with pytest.raises(ValueError, match="more channels"):
    FusedBatchNormalization(channel_padding=4).build((1, 3, 3, 4))
  with pytest.raises(ValueError, match="4-D channels-last"):
    FusedBatchNormalization(channel_padding=2)(tf.zeros((2, 6)))


def _xception(**kwargs):
  model_options = options.ModelOptions(model_variant="xception_65", num_classes=5,
                                       output_stride=16, atrous_rates=(6, 12, 18),
                                       decoder_output_stride=(8,), **kwargs)
  return deeplab_tf.build_deeplab(model_options, input_shape=(65, 65, 3))


@pytest.fixture(scope="module")
def xception_pair():
  plain = _xception()
  weights = [w + (np.abs(RNG.standard_normal(w.shape)).astype(np.float32) if "variance" in v.path
                  else 0.1 * RNG.standard_normal(w.shape).astype(np.float32) if w.ndim == 1 else 0)
             for w, v in zip(plain.get_weights(), plain.weights)]
  plain.set_weights(weights)
  padded = padding_lib.with_channel_padding(plain, 16)  # Copies the weights and dropout's seed.
  return plain, padded


def _padded_activations(model):
  graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec((1, 65, 65, 3), tf.float32)).graph
  return sum(1 for op in graph.get_operations() for t in op.outputs
             if t.shape.rank == 4 and t.shape[-1] == 736)


def test_xception_65_carries_728_channels_as_736_with_the_original_variables(xception_pair):
  plain, padded = xception_pair
  assert [(w.path, w.shape) for w in padded.weights] == [(w.path, w.shape) for w in plain.weights]
  # 212 in the encoder (every 728-channel conv, depthwise conv and BatchNorm of entry_flow/block3,
  # the middle flow and exit_flow/block1's first unit) and the decoder projection reading block3.
  assert sum(1 for layer in padded.layers if any(padding_lib.channel_paddings(layer))) == 213
  assert not any(any(padding_lib.channel_paddings(layer)) for layer in plain.layers)
  assert _padded_activations(padded) > 200 and _padded_activations(plain) == 0
  x = RNG.uniform(0, 255, (2, 65, 65, 3)).astype(np.float32)
  _close(padded(x, training=False), plain(x, training=False))
  # The decoder's projection reads entry_flow/block3's 728-channel feature at stride 8 padded, and
  # gives 48 real channels: nothing padded leaves the encoder.
  projection = padded.get_layer("decoder.feature_projection0")
  assert padding_lib.channel_paddings(projection) == (8, 0)
  assert projection.output.shape[-1] == 48
  assert [(l.name, type(l)) for l in padded.layers][:3] == [(l.name, type(l)) for l in plain.layers][:3]
  assert [l.name for l in padded.layers] == [l.name for l in plain.layers]  # Checkpoint keys.


def test_xception_65_trains_as_unpadded(xception_pair):
  plain, padded = xception_pair
  x = RNG.uniform(0, 255, (2, 65, 65, 3)).astype(np.float32)
  y, y_ref = padded(x, training=True), plain(x, training=True)
  # Training-mode BN normalises 5x5 middle-flow features by their batch moments, which amplifies
  # float32 rounding: computing the 1x1 convolutions as convolutions instead of matrix products
  # moved these outputs by 2.7e-5 of 0.37, padding by 3.0e-5; an error in the padded channels
  # would move them by the size of the outputs.
  np.testing.assert_allclose(y, y_ref, atol=1e-3 * np.abs(y_ref).max())
  for v, v_ref in zip(padded.non_trainable_weights, plain.non_trainable_weights):
    np.testing.assert_allclose(v, v_ref, atol=1e-5, err_msg=v.path)


def test_xception_65_padded_gradients_equal_the_plain_ones(xception_pair):
  plain, padded = xception_pair
  x = tf.constant(RNG.uniform(0, 255, (2, 65, 65, 3)).astype(np.float32))
  dy = tf.constant(RNG.standard_normal((2, 65, 65, 5)).astype(np.float32))
  gradients = []
  for model in (plain, padded):
    with tf.GradientTape() as tape:
      loss = tf.reduce_sum(model(x, training=False) * dy)
    gradients.append(tape.gradient(loss, model.trainable_variables))
  for g_ref, g, v in zip(*gradients, plain.trainable_variables):
    assert g.shape == g_ref.shape == v.shape
    # Sums over the same terms plus exact zeros, in another order: float32 rounding of the largest.
    np.testing.assert_allclose(g, g_ref, atol=1e-4 * max(np.abs(g_ref).max(), 1e-3), err_msg=v.path)


def test_checkpoints_of_the_padded_model_restore_into_the_plain_one(xception_pair, tmp_path):
  plain, padded = xception_pair
  prefix = tf.train.Checkpoint(model=padded).save(str(tmp_path / "ckpt"))
  fresh = _xception()
  tf.train.Checkpoint(model=fresh).restore(prefix).assert_existing_objects_matched()
  for v, v_ref in zip(fresh.weights, padded.weights):
    np.testing.assert_array_equal(v.numpy(), v_ref.numpy(), err_msg=v.path)


def test_folds_and_exports_drop_the_padding(xception_pair):
  plain, padded = xception_pair
  x = RNG.uniform(0, 255, (1, 65, 65, 3)).astype(np.float32)
  expected = plain(x, training=False)
  for model in (folding.fold_batch_norm(padded), folding.fold_batch_norm(padded, live=True),
                padding_lib.without_channel_padding(padded)):
    assert _padded_activations(model) == 0
    _close(model(x, training=False), expected)


def test_live_folded_convolutions_report_their_output_channels():
  depthwise = convolutions.DepthwiseConv2D(3, padding="same", channel_padding=3)
  depthwise.build((1, 9, 9, 8))
  pointwise = convolutions.PointwiseConv2D(6, 1, input_channel_padding=3, output_channel_padding=2)
  pointwise.build((1, 9, 9, 8))
  bn = FusedBatchNormalization()
  for conv, unpadded, padded in ((depthwise, 5, 8), (pointwise, 6, 8)):
    assert folding.LiveFoldedConv(conv, bn).compute_output_shape((1, 9, 9, 5)) == (1, 9, 9, unpadded)
    assert folding.LiveFoldedConv(conv, bn, keep_channel_padding=True).compute_output_shape(
        (1, 9, 9, 8)) == (1, 9, 9, padded)


def test_live_fold_keeps_the_padding_around_an_unfolded_padded_layer():
  """A padded convolution without BatchNorm is shared as is by the live fold, so the folded pair
  before it must keep producing padded channels."""
  def build(padding):
    images = keras.Input((9, 9, 5 + padding))
    x = convolutions.DepthwiseConv2D(3, padding="same", use_bias=False, channel_padding=padding)(images)
    x = FusedBatchNormalization(channel_padding=padding)(x)
    x = convolutions.Conv2D(4, 1, input_channel_padding=padding)(x)  # No BN: not folded.
    return keras.Model(images, x)
  padded, plain = build(3), build(0)
  for w in plain.weights:
    w.assign(RNG.uniform(0.5, 1.5, w.shape) if "variance" in w.path else RNG.standard_normal(w.shape))
  padded.set_weights(plain.get_weights())
  live = folding.fold_batch_norm(padded, live=True)
  x = RNG.standard_normal((2, 9, 9, 5)).astype(np.float32)
  _close(live(_pad(x, 3)), plain(x, training=False))
