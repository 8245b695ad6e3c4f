"""`build_deeplab(options)`: encoder + ASPP (+ decoder) + logits as one Keras functional model.

research/deeplab `model.py` (`multi_scale_logits` at a single scale, `_get_logits`, `extract_features`,
`refine_by_decoder`, `get_branch_logits`) and `core/feature_extractor.py` (preprocessing).
"""

from __future__ import annotations

import contextlib

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.aspp import build_aspp
from deeplab_tf.model.decoder import build_decoder
from deeplab_tf.model.dense_prediction_cell import build_dense_prediction_cell
from deeplab_tf.model.encoders import get_encoder
from deeplab_tf.options import ModelOptions, check_mixed_precision

LOGITS_SCOPE = "logits/semantic"
# research/deeplab `model.get_extra_layer_scopes`: the scopes of the "last layers", which fine-tuning
# leaves out of `initialize_last_layer=False` and trains with `last_layer_gradient_multiplier`; the
# Dense Prediction Cell's `meta_architecture` is head like ASPP.
EXTRA_LAYER_SCOPES = ("logits", "image_pooling", "aspp", "concat_projection", "decoder", "meta_architecture")


def get_extra_layer_scopes(last_layers_contain_logits_only: bool = False) -> tuple:
  """The "last layers": `("logits",)` when `last_layers_contain_logits_only`, else the whole head."""
  return EXTRA_LAYER_SCOPES[:1] if last_layers_contain_logits_only else EXTRA_LAYER_SCOPES


def build_logits(features, options: ModelOptions):
  """The logits layer `logits/semantic` (research/deeplab `model.py`, `get_branch_logits`).

  With the ASPP head (`aspp_with_batch_norm`) or no `atrous_rates`: one `logits_kernel_size` conv with
  bias, no BN or activation. Without the head but with `atrous_rates` (DeepLabv2's ASPP): one such
  conv per rate, dilated by it, named `logits/semantic`, `logits/semantic_1`, ..., summed.

  Args:
    features: `[batch, h, w, c]` head (or encoder) output.
    options: uses `num_classes`, `logits_kernel_size`, `aspp_with_batch_norm`, `atrous_rates`.

  Returns:
    `[batch, h, w, num_classes]` float32 logits.

  Raises:
    ValueError: `logits_kernel_size` != 1 with the ASPP head or without atrous rates (as the original).
  """
  rates = (1,)
  if not options.aspp_with_batch_norm and options.atrous_rates:
    rates = tuple(options.atrous_rates)
  elif options.logits_kernel_size != 1:
    raise ValueError(f"logits_kernel_size={options.logits_kernel_size}: must be 1 when atrous_rates is "
                     "empty or aspp_with_batch_norm is set (research/deeplab get_branch_logits).")
  branches = []
  for i, rate in enumerate(rates):
    branches.append(keras.layers.Conv2D(
        options.num_classes, options.logits_kernel_size, dilation_rate=rate, padding="same",
        use_bias=True, kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.01),
        name=layers.scope_to_layer_name(LOGITS_SCOPE + (f"_{i}" if i else "")),
        dtype="float32")(features))
  if len(branches) == 1:
    return branches[0]
  return keras.layers.Add(name="logits.sum", dtype="float32")(branches)


@contextlib.contextmanager
def global_dtype_policy(name: str):
  """Layers built inside use Keras dtype policy `name` ('float32', 'mixed_bfloat16', 'mixed_float16').

  Keras layers take the global policy when constructed; this sets it and restores the previous one.

  Raises:
    ValueError: `name` is not one of `options.MIXED_PRECISION_POLICIES`.
  """
  check_mixed_precision(name)
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(name)
  try:
    yield
  finally:
    keras.mixed_precision.set_global_policy(previous)


def build_deeplab(options: ModelOptions, input_shape=(None, None, 3), input_dtype: str = "float32",
                  name: str = "deeplab") -> keras.Model:
  """Builds DeepLabv3 (no decoder) or DeepLabv3+ (with `decoder_output_stride`), with ASPP or the DPC.

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
  if options.aspp_with_batch_norm and options.dense_prediction_cell_config is not None:
    features = build_dense_prediction_cell(features, options.dense_prediction_cell_config,
                                           options.output_stride, options.image_pooling_crop_size)
  elif options.aspp_with_batch_norm:
    features = build_aspp(features, options)
  if options.decoder_output_stride is not None:
    low_level = endpoints.get(f"decoder_end_point/{options.decoder_output_stride}")
    if low_level is None:
      known = sorted(int(k.split("/")[1]) for k in endpoints if k.startswith("decoder_end_point/"))
      raise ValueError(
          f"decoder_output_stride={options.decoder_output_stride}: {options.model_variant} provides "
          f"decoder features at output strides {known} only (research/deeplab "
          "networks_to_feature_maps); use one of them or None.")
    features = build_decoder(features, low_level, options)
  # decoder_output_is_logits: the decoder's output is the logits (model.py `_get_logits`).
  if options.decoder_output_is_logits:
    logits = keras.layers.Activation("linear", dtype="float32", name="decoder_logits")(features)
  else:
    logits = build_logits(features, options)
  if options.prediction_with_upsampled_logits:
    logits = layers.ResizeLike(name="upsample_logits", dtype="float32")([logits, images])
  return keras.Model(images, logits, name=name)
