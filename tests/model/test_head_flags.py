"""The newest common.py head flags as research/deeplab model.py builds them: `aspp_convs_filters`,
`aspp_with_concat_projection`, `aspp_with_squeeze_and_excitation`, `image_se_uses_qsigmoid`,
`decoder_use_sum_merge`, `decoder_filters`, `decoder_output_is_logits`, `use_bounded_activation`;
and their binaries' flags (bin/model_flags.py).
"""

import keras
import numpy as np
import pytest
from absl import flags
from absl.testing import flagsaver

import deeplab_tf
from deeplab_tf.bin import model_flags
from deeplab_tf.checkpoints import model_weights_by_checkpoint_name
from deeplab_tf.model import activations
from deeplab_tf.model.encoders import get_encoder

# The MobileNetV3 model-zoo head (g3doc/model_zoo.md) on MobileNetV2, with global image pooling.
_LR_ASPP = dict(aspp_convs_filters=128, aspp_with_concat_projection=False,
                aspp_with_squeeze_and_excitation=True, image_se_uses_qsigmoid=True,
                decoder_use_sum_merge=True, decoder_filters=19, decoder_output_is_logits=True,
                decoder_output_stride=8, num_classes=19, output_stride=32)


def _randomize(model, rng, stddev):
  """Normal(0, stddev) weights; BN moving variances 1 + |normal|."""
  for weight in model.weights:
    value = rng.normal(0.0, stddev, weight.shape)
    if "moving_variance" in weight.path:
      value = 1.0 + np.abs(value)
    weight.assign(value.astype(np.float32))


def _shapes(model):
  return {n: tuple(w.shape) for n, w in model_weights_by_checkpoint_name(model).items()}


def test_squeeze_excitation_head_and_logits_decoder_values():
  model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(model_variant="mobilenet_v2", **_LR_ASPP),
                                   input_shape=(64, 96, 3))
  shapes = _shapes(model)
  head = {n: s for n, s in shapes.items() if not n.startswith("MobilenetV2")}
  # image_pooling: biased, no BN; aspp0 with BN; no concat_projection, no logits layer; decoder
  # projection and conv 1x1 with biases to 19 channels (layer_7/depthwise_output: 192 channels).
  assert head == {
      "image_pooling/weights": (1, 1, 320, 128), "image_pooling/biases": (128,),
      "aspp0/weights": (1, 1, 320, 128), **{f"aspp0/BatchNorm/{v}": (128,) for v in (
          "gamma", "beta", "moving_mean", "moving_variance")},
      "decoder/feature_projection0/weights": (1, 1, 192, 19),
      "decoder/feature_projection0/biases": (19,),
      "decoder/decoder_conv0/weights": (1, 1, 128, 19), "decoder/decoder_conv0/biases": (19,)}

  # Values: logits at stride 8 = conv0(resize(aspp0 * qsigmoid(image_pooling(mean)))) + projection.
  rng = np.random.default_rng(0)
  _randomize(model, rng, 0.2)
  parts = keras.Model(model.input, [model.get_layer("MobilenetV2.expanded_conv_16.project.BatchNorm").output,
                                    model.get_layer("MobilenetV2.expanded_conv_5.depthwise.relu6").output,
                                    model.get_layer("decoder_logits").output])
  images = rng.uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
  encoder, low_level, logits = [t.numpy() for t in parts(images, training=False)]
  assert encoder.shape == (1, 2, 3, 320) and low_level.shape == (1, 8, 12, 192)
  w = {n: np.asarray(v) for n, v in model_weights_by_checkpoint_name(model).items()}
  gate = np.clip(encoder.mean(axis=(1, 2)) @ w["image_pooling/weights"][0, 0]
                 + w["image_pooling/biases"] + 3, 0, 6) * 0.16667
  bn = {v: w[f"aspp0/BatchNorm/{v}"] for v in ("gamma", "beta", "moving_mean", "moving_variance")}
  aspp0 = encoder @ w["aspp0/weights"][0, 0]
  aspp0 = (aspp0 - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-5) * bn["gamma"] + bn["beta"]
  aspp = np.maximum(aspp0, 0) * gate[:, None, None, :]
  # Bilinear, align_corners=True, 2x3 -> 8x12.
  ys, xs = np.linspace(0, 1, 8), np.linspace(0, 2, 12)
  y0, x0 = np.minimum(ys.astype(int), 0), np.minimum(xs.astype(int), 1)
  fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
  a = aspp[0]
  up = ((1 - fy) * (1 - fx) * a[y0][:, x0] + (1 - fy) * fx * a[y0][:, x0 + 1]
        + fy * (1 - fx) * a[y0 + 1][:, x0] + fy * fx * a[y0 + 1][:, x0 + 1])
  expected = (up @ w["decoder/decoder_conv0/weights"][0, 0] + w["decoder/decoder_conv0/biases"]
              + low_level[0] @ w["decoder/feature_projection0/weights"][0, 0]
              + w["decoder/feature_projection0/biases"])
  # float32 against float64 through two 1x1 convs of ~300 inputs: 1e-4 of the largest magnitude.
  np.testing.assert_allclose(logits[0], expected, rtol=0, atol=1e-4 * np.abs(expected).max())
  assert tuple(model(images).shape) == (1, 64, 96, 19)


def test_sigmoid_gate_sum_merge_without_logits_and_bounded_activation():
  options = deeplab_tf.ModelOptions(
      model_variant="mobilenet_v2", atrous_rates=(6, 12), aspp_with_squeeze_and_excitation=True,
      aspp_convs_filters=64, decoder_use_sum_merge=True, decoder_filters=32, decoder_output_stride=4,
      use_bounded_activation=True)
  model = deeplab_tf.build_deeplab(options)
  shapes = _shapes(model)
  # The gate is not a branch: the projection concatenates aspp0..2 only.
  assert shapes["concat_projection/weights"] == (1, 1, 3 * 64, 64)
  assert shapes["aspp1_depthwise/depthwise_weights"] == (3, 3, 320, 1)
  # Sum merge, separable: one split separable conv, projection to decoder_filters with BN.
  assert shapes["decoder/decoder_split_sep_conv0_pointwise/weights"] == (1, 1, 64, 32)
  assert shapes["decoder/feature_projection0/weights"] == (1, 1, 144, 32)
  assert "decoder/feature_projection0/BatchNorm/gamma" in shapes
  assert not any(n.startswith("decoder/decoder_conv") for n in shapes)
  assert shapes["logits/semantic/weights"] == (1, 1, 32, 21)
  assert isinstance(model.get_layer("image_pooling.sigmoid"), keras.layers.Activation)
  # use_bounded_activation: every ReLU of the head and decoder is a ReLU6.
  head_relus = [l for l in model.layers if isinstance(l, keras.layers.ReLU)
                and not l.name.startswith("MobilenetV2")]
  assert len(head_relus) == 1 + 2 * 2 + 1 + 1 + 2  # aspp0, aspp1-2 (x2), projection, decoder.
  assert all(l.max_value == 6.0 for l in head_relus)
  assert tuple(model(np.zeros((1, 33, 33, 3), np.float32)).shape) == (1, 33, 33, 21)


def test_defaults_build_the_classic_head():
  model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(
      model_variant="mobilenet_v2", atrous_rates=(6,), decoder_output_stride=4,
      decoder_use_separable_conv=False, aspp_convs_filters=32, decoder_filters=16))
  shapes = _shapes(model)
  assert shapes["image_pooling/BatchNorm/gamma"] == (32,)
  assert shapes["concat_projection/weights"] == (1, 1, 96, 32)
  assert shapes["decoder/decoder_conv0/decoder_conv0_1/weights"] == (3, 3, 32 + 48, 16)
  assert shapes["logits/semantic/weights"] == (1, 1, 16, 21)
  assert all(l.max_value is None for l in model.layers if isinstance(l, keras.layers.ReLU)
             and l.name.startswith(("aspp", "decoder", "concat")))


def test_head_flag_errors():
  with pytest.raises(ValueError, match="decoder_output_is_logits"):
    deeplab_tf.ModelOptions(decoder_output_is_logits=True, decoder_filters=21)
  with pytest.raises(ValueError, match="decoder_output_is_logits"):
    deeplab_tf.ModelOptions(decoder_output_is_logits=True, decoder_output_stride=8)
  with pytest.raises(ValueError, match="aspp_convs_filters=0"):
    deeplab_tf.ModelOptions(aspp_convs_filters=0)


def test_binaries_flags_reach_the_options():
  options = deeplab_tf.ModelOptions(model_variant="mobilenet_v3_small_seg", **_LR_ASPP)
  argv = ["prog", "--model_variant=mobilenet_v3_small_seg", "--num_classes=19", "--output_stride=32",
          "--aspp_convs_filters=128", "--noaspp_with_concat_projection",
          "--aspp_with_squeeze_and_excitation", "--image_se_uses_qsigmoid", "--decoder_use_sum_merge",
          "--decoder_filters=19", "--decoder_output_is_logits", "--decoder_output_stride=8"]
  with flagsaver.flagsaver():
    flags.FLAGS(argv)
    assert model_flags.model_options_from_flags() == options
    flags.FLAGS(["prog", "--use_bounded_activation"])
    assert model_flags.model_options_from_flags().use_bounded_activation
  assert options == deeplab_tf.ModelOptions.from_json(options.to_json())


def test_bounded_xception():
  # core/xception.py with use_bounded_activation: ReLU6, clipped BN outputs and residual terms, ReLU6
  # after each sum, and 'SAME' (not fixed) padding of the strided separable convs; same variables.
  def encoder(bounded):
    inputs = keras.Input((None, None, 3))
    endpoints = get_encoder("xception_41").build(inputs, deeplab_tf.ModelOptions(
        model_variant="xception_41", use_bounded_activation=bounded))
    return keras.Model(inputs, [endpoints["encoder_output"], endpoints["low_level"]])
  bounded, plain = encoder(True), encoder(False)
  assert _shapes(bounded) == _shapes(plain)
  names = {layer.name: layer for layer in bounded.layers}
  unit = "xception_41.entry_flow.block1.unit_1.xception_module"
  assert names["xception_41.entry_flow.conv1_1.relu"].max_value == 6.0
  assert names[unit + ".separable_conv3_depthwise"].padding == "same"
  assert unit + ".separable_conv3_depthwise.pad" not in names
  assert plain.get_layer(unit + ".separable_conv3_depthwise").padding == "valid"  # Fixed padding.
  assert isinstance(names[unit + ".clip_shortcut"], activations.Clip)
  assert all(l.max_value == 6.0 for l in bounded.layers if isinstance(l, keras.layers.ReLU))
  # Every activation is bounded, whatever the weights: large random weights, large inputs.
  rng = np.random.default_rng(0)
  _randomize(bounded, rng, 1.0)
  images = rng.uniform(-1, 1, (1, 64, 64, 3)).astype(np.float32)
  encoder_output, low_level = [t.numpy() for t in bounded(images * 100, training=False)]
  assert encoder_output.shape == (1, 4, 4, 2048) and low_level.shape == (1, 16, 16, 256)
  assert 0.0 <= encoder_output.min() and encoder_output.max() <= 6.0 and encoder_output.max() > 1.0
  assert -6.0 <= low_level.min() < 0.0 < low_level.max() <= 6.0  # A clipped pointwise BN output.
