"""An independent check of our MobileNetV3 blocks: Keras Applications' MobileNetV3Large/Small.

`keras.applications.MobileNetV3{Large,Small}` follow research/slim's V3_LARGE / V3_SMALL (same
expansions, kernels, strides, activations, squeeze-excite widths `_depth(expansion / 4)`, residuals,
BN epsilon 1e-3, 'SAME'-equivalent padding). Our encoders are the segmentation versions, whose last
block differs; so the classification spec (`mobilenet_v3.V3_LARGE` / `V3_SMALL`) is built with our
block code up to the last inverted-residual block and compared, given the same weights, with Keras'
`expanded_conv_14_add` / `expanded_conv_10_add`. Keras gates with `relu6(x + 3) / 6` where the
original writes 0.16667: the test sets our constant to 1/6, so that both compute the same function.
"""

import keras
import numpy as np
import pytest

from deeplab_tf.model import activations
from deeplab_tf.model.encoders import mobilenet_v3
from test_mobilenet_v2_keras_applications import assign_same_random_weights


def _keras_name(our_name):
  """`MobilenetV3.expanded_conv_3.squeeze_excite.Conv_1` -> `expanded_conv_3_squeeze_excite_conv_1`."""
  return our_name.split(".", 1)[1].replace(".", "_").replace("BatchNorm", "bn").lower()


# One odd and one even input size (their 'SAME' paddings differ), one per network, to keep it short.
@pytest.mark.parametrize("spec,application,last,size", [
    (mobilenet_v3.V3_LARGE[:16], keras.applications.MobileNetV3Large, "expanded_conv_14_add", 65),
    (mobilenet_v3.V3_SMALL[:12], keras.applications.MobileNetV3Small, "expanded_conv_10_add", 64),
])
def test_matches_keras_applications_mobilenet_v3(monkeypatch, spec, application, last, size):
  monkeypatch.setattr(activations, "HARD_SIGMOID_SCALE", 1.0 / 6.0)
  monkeypatch.setitem(mobilenet_v3.MOBILENET_V3_VARIANTS, "classification",
                      mobilenet_v3.MobileNetV3Variant("MobilenetV3", spec, {}))
  reference = application(input_shape=(size, size, 3), include_top=False, weights=None,
                          include_preprocessing=False)
  reference = keras.Model(reference.input, reference.get_layer(last).output)
  inputs = keras.Input((size, size, 3))
  ours = keras.Model(inputs, mobilenet_v3.build_mobilenet_v3(inputs, "classification", 32)["encoder_output"])
  rng = np.random.default_rng(size)
  assign_same_random_weights(ours, reference, _keras_name, rng)
  images = rng.uniform(-1.0, 1.0, (2, size, size, 3)).astype(np.float32)
  expected = reference(images, training=False).numpy()
  got = ours(images, training=False).numpy()
  assert got.shape == expected.shape == (2, -(-size // 32), -(-size // 32), spec[-1].num_outputs)
  # Same operations in another order (Keras' hard-swish is x * (relu6(x + 3) / 6)): float noise only.
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
