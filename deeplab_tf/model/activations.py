"""The piecewise-linear activations of MobileNetV3 and the newest DeepLab head, as Keras layers.

Each computes exactly what the original computes, in the same operation order (so float results agree
to the bit where the kernels do):
- `HardSwish`: `x * relu6(x + 3) * (1 / 6)` (research/slim nets/mobilenet/mobilenet_v3.py `hard_swish`;
  "Searching for MobileNetV3", section 5.2).
- `HardSigmoid`: `relu6(x + 3) * 0.16667`, the gating of MobileNetV3's squeeze-and-excite
  (`mobilenet_v3.squeeze_excite`'s `gating_fn`) and research/deeplab's `utils.q_sigmoid` (the ASPP
  image feature with `image_se_uses_qsigmoid`). 0.16667, not 1/6, as the original writes it.
- `Clip`: `clip_by_value(x, -6, 6)`, bounded Xception's activation (research/deeplab core/xception.py
  `_CLIP_CAP`, `use_bounded_activation`).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# The constant of the original's hard sigmoid (`0.16667`, not 1/6).
HARD_SIGMOID_SCALE = 0.16667


@keras.saving.register_keras_serializable(package="deeplab_tf")
class HardSwish(keras.layers.Layer):
  """`x * relu6(x + 3) * (1 / 6)` on any shape; output dtype as the input's."""

  def call(self, x):
    return x * tf.nn.relu6(x + np.float32(3)) * np.float32(1.0 / 6.0)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class HardSigmoid(keras.layers.Layer):
  """`relu6(x + 3) * 0.16667` on any shape; output dtype as the input's."""

  def call(self, x):
    return tf.nn.relu6(x + 3) * HARD_SIGMOID_SCALE


@keras.saving.register_keras_serializable(package="deeplab_tf")
class Clip(keras.layers.Layer):
  """`clip_by_value(x, -cap, cap)` on any shape (cap 6: core/xception.py `_CLIP_CAP`)."""

  def __init__(self, cap: float = 6.0, **kwargs):
    super().__init__(**kwargs)
    self.cap = cap

  def call(self, x):
    return tf.clip_by_value(x, -self.cap, self.cap)

  def get_config(self):
    return {**super().get_config(), "cap": self.cap}


def activation_layer(kind: str, name: str) -> keras.layers.Layer:
  """A named Keras layer for `kind`: 'relu', 'relu6', 'sigmoid', 'hard_sigmoid' or 'hard_swish'.

  Raises:
    ValueError: an unknown `kind`.
  """
  if kind == "relu":
    return keras.layers.ReLU(name=name)
  if kind == "relu6":
    return keras.layers.ReLU(max_value=6.0, name=name)
  if kind == "sigmoid":
    return keras.layers.Activation("sigmoid", name=name)
  if kind == "hard_sigmoid":
    return HardSigmoid(name=name)
  if kind == "hard_swish":
    return HardSwish(name=name)
  raise ValueError(f"activation {kind!r}: expected 'relu', 'relu6', 'sigmoid', 'hard_sigmoid' or "
                   "'hard_swish'.")
