"""The registry from `model_variant` to its encoder: one name is the whole story for a user.

Each entry says how to build the encoder on preprocessed images and which preprocessing it expects
(research/deeplab `core/feature_extractor.py`: `_PREPROCESS_FN`, `networks_map`, `name_scope`).
A builder takes `(images, options)` with `images` `[batch, height, width, 3]` float in the encoder's
input range and returns named endpoints, at least `"encoder_output"` (`[batch, ceil(h/os),
ceil(w/os), c]`) and, where the original's decoder can read them (`networks_to_feature_maps`; none for
mobilenet_edgetpu), `"low_level"` (the decoder's feature at output stride 4) and
`"decoder_end_point/<s>"` for each stride s in 4, 8, 16.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Dict

from deeplab_tf.model import layers
from deeplab_tf.model.encoders import mobilenet_v2, mobilenet_v3, nas, resnet, xception
from deeplab_tf.options import ModelOptions

EncoderBuilder = Callable[[object, ModelOptions], Dict[str, object]]


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
  """How to build one `model_variant`: its builder and its input preprocessing."""

  build: EncoderBuilder
  preprocessing: str


ENCODERS: Dict[str, EncoderSpec] = {}


def register_encoder(model_variant: str, build: EncoderBuilder, preprocessing: str) -> None:
  """Adds `model_variant` to the registry (raises ValueError if the name is taken)."""
  if model_variant in ENCODERS:
    raise ValueError(f"model_variant {model_variant!r} is already registered.")
  ENCODERS[model_variant] = EncoderSpec(build, preprocessing)


def get_encoder(model_variant: str) -> EncoderSpec:
  """Returns the registered encoder, or raises ValueError naming the known variants."""
  try:
    return ENCODERS[model_variant]
  except KeyError:
    raise ValueError(f"model_variant={model_variant!r} is not known; expected one of "
                     f"{sorted(ENCODERS)}.") from None


for _variant in xception.XCEPTION_VARIANTS:
  register_encoder(
      _variant,
      lambda images, options, _v=_variant: xception.build_xception(
          images, _v, options.output_stride, options.multi_grid, options.use_bounded_activation),
      layers.ZERO_MEAN_UNIT_RANGE)

for _variant in resnet.RESNET_VARIANTS:
  register_encoder(
      _variant,
      lambda images, options, _v=_variant: resnet.build_resnet(
          images, _v, options.output_stride, options.multi_grid),
      layers.ZERO_MEAN_UNIT_RANGE if resnet.RESNET_VARIANTS[_variant].beta
      else layers.SUBTRACT_IMAGENET_MEAN)

register_encoder(
    "mobilenet_v2",
    lambda images, options: mobilenet_v2.build_mobilenet_v2(
        images, options.output_stride, options.depth_multiplier, options.divisible_by),
    layers.ZERO_MEAN_UNIT_RANGE)

for _variant in nas.NAS_VARIANTS:
  register_encoder(
      _variant,
      lambda images, options, _v=_variant: nas.build_nas(
          images, _v, options.output_stride, options.nas_stem_output_num_conv_filters,
          options.nas_use_classification_head, options.nas_remove_os32_stride),
      layers.ZERO_MEAN_UNIT_RANGE)

for _variant in mobilenet_v3.MOBILENET_V3_VARIANTS:
  register_encoder(
      _variant,
      lambda images, options, _v=_variant: mobilenet_v3.build_mobilenet_v3(
          images, _v, options.output_stride, options.depth_multiplier),
      layers.ZERO_MEAN_UNIT_RANGE)
