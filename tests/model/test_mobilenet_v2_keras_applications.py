"""An independent check of our MobileNetV2 encoder: Keras Applications' MobileNetV2.

`keras.applications.MobileNetV2` was written to load the same slim checkpoints (ReLU6, BN epsilon 1e-3,
'SAME'-equivalent padding, the same inverted-residual blocks). Without atrous convolution (our
output_stride 32) and at depth_multiplier 1 both must compute the same function up to `layer_18` (its
`block_16_project_BN`), given the same weights. The layers are paired by their names, one rule.
"""
import numpy as np
import pytest
import keras

from deeplab_tf.model.encoders.mobilenet_v2 import build_mobilenet_v2


def _keras_name(our_name):
  """`MobilenetV2.expanded_conv_3.expand.BatchNorm` -> `block_3_expand_BN` (Keras Applications' names)."""
  parts = our_name.split(".")[1:]
  bn = parts[-1] == "BatchNorm"
  if bn:
    parts = parts[:-1]
  if parts == ["Conv"]:
    return "bn_Conv1" if bn else "Conv1"
  block, op = parts
  prefix = "expanded_conv" if block == "expanded_conv" else "block_" + block.split("_")[-1]
  return f"{prefix}_{op}" + ("_BN" if bn else "")


def assign_same_random_weights(ours, reference, keras_name, rng):
  """Gives every weighted layer of `ours` and its twin `reference.get_layer(keras_name(name))` the same
  random weights (BN: positive scale and variance), and checks that every reference layer has a twin."""
  paired = 0
  for layer in ours.layers:
    if not layer.weights:
      continue
    twin = reference.get_layer(keras_name(layer.name))
    values = [rng.normal(0.0, 0.1, w.shape).astype(np.float32) for w in layer.weights]
    if isinstance(layer, keras.layers.BatchNormalization):
      values = [1.0 + values[0], values[1], values[2], 1.0 + np.abs(values[3])]
    layer.set_weights(values)
    twin.set_weights(values)
    paired += 1
  assert paired == len([l for l in reference.layers if l.weights])  # Every layer has its twin.


@pytest.mark.parametrize("size", [64, 65])
def test_matches_keras_applications_mobilenet_v2(size):
  reference = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False,
                                             weights=None)
  reference = keras.Model(reference.input, reference.get_layer("block_16_project_BN").output)
  inputs = keras.Input((size, size, 3))
  ours = keras.Model(inputs, build_mobilenet_v2(inputs, output_stride=32)["encoder_output"])
  rng = np.random.default_rng(size)
  assign_same_random_weights(ours, reference, _keras_name, rng)
  images = rng.uniform(-1.0, 1.0, (2, size, size, 3)).astype(np.float32)
  expected = reference(images, training=False).numpy()
  got = ours(images, training=False).numpy()
  assert got.shape == expected.shape == (2, -(-size // 32), -(-size // 32), 320)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
