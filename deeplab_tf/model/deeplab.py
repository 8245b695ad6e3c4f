"""`build_deeplab(options)`: encoder + ASPP (+ decoder) + logits as one Keras functional model.

research/deeplab `model.py` (`multi_scale_logits` at a single scale, `_get_logits`, `extract_features`,
`refine_by_decoder`, `get_branch_logits`) and `core/feature_extractor.py` (preprocessing).
"""

from __future__ import annotations

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.aspp import build_aspp
from deeplab_tf.model.decoder import build_decoder
from deeplab_tf.model.encoders import get_encoder
from deeplab_tf.options import ModelOptions

LOGITS_SCOPE = "logits/semantic"


def build_deeplab(options: ModelOptions, input_shape=(None, None, 3), input_dtype: str = "float32",
                  name: str = "deeplab") -> keras.Model:
  """Builds DeepLabv3 (no decoder) or DeepLabv3+ (with `decoder_output_stride`).

  Args:
    options: the architecture.
    input_shape: `(height, width, 3)`; height and width may be None (any size, odd or even).
    input_dtype: 'float32' or 'uint8'; images are RGB in [0, 255] either way, the encoder's
      preprocessing ([-1, 1] or ImageNet mean subtraction) is inside the model.
    name: Keras model name.

  Returns:
    A `keras.Model` mapping `[batch, height, width, 3]` images to float32 logits
    `[batch, height, width, num_classes]`, upsampled bilinearly with align_corners=True (or at the
    decoder/encoder stride when `prediction_with_upsampled_logits` is False).

  Raises:
    ValueError: unknown `model_variant`, or a decoder asked of an encoder with no low-level feature.
  """
  spec = get_encoder(options.model_variant)
  images = keras.Input(shape=input_shape, dtype=input_dtype, name="images")
  x = layers.Preprocess(spec.preprocessing, name="preprocess")(images)
  endpoints = spec.build(x, options)
  features = endpoints["encoder_output"]
  if options.aspp_with_batch_norm:
    features = build_aspp(features, options)
  if options.decoder_output_stride is not None:
    low_level = endpoints.get("low_level")
    if low_level is None or options.decoder_output_stride != 4:
      raise ValueError(
          f"decoder_output_stride={options.decoder_output_stride}: {options.model_variant} provides a "
          "low-level feature at output stride 4 only; use 4 or None.")
    features = build_decoder(features, low_level, options.decoder_use_separable_conv)
  logits = keras.layers.Conv2D(
      options.num_classes, options.logits_kernel_size, padding="same", use_bias=True,
      kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
      name=layers.scope_to_layer_name(LOGITS_SCOPE), dtype="float32")(features)
  if options.prediction_with_upsampled_logits:
    logits = layers.ResizeLike(name="upsample_logits", dtype="float32")([logits, images])
  return keras.Model(images, logits, name=name)
