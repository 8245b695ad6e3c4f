"""research/deeplab's model flags (`common.py`), shared by the binaries that build a model.

Importing this module defines the flags (and, through `deeplab_tf.bin.original_flags`, the original's
spellings we refuse); `model_options_from_flags()` turns them into `ModelOptions`, and
`override_model_options()` applies the model flags given explicitly to options read from a checkpoint.
"""

from __future__ import annotations

import dataclasses

from absl import flags

from deeplab_tf.bin import original_flags  # noqa: F401  (defines the original's refused spellings)
from deeplab_tf.model.dense_prediction_cell import load_dense_prediction_cell_config
from deeplab_tf.options import KERNEL_POLICIES, ModelOptions

FLAGS = flags.FLAGS

flags.DEFINE_enum("kernel_policy", "auto", list(KERNEL_POLICIES), "How the network is computed "
                  "(deeplab_tf.model.acceleration): 'auto' = 'cpu' on CPUs, 'portable' with a GPU or TPU; "
                  "'cpu' = the kernels measured fastest on oneDNN CPUs (fused BatchNorm, matrix products, "
                  "in-place dilated depthwise convolutions, 728 channels carried as 736 in training); "
                  "'portable' = plain Keras/TF arithmetic, which runs on every TensorFlow build and "
                  "device. Checkpoints do not depend on it. deeplab_export_model defaults to 'portable': "
                  "its 'cpu' export is faster on oneDNN CPUs but gives up serving anywhere else (TF "
                  "without oneDNN, GPUs, ARM, macOS: dilated DepthwiseConv2dNative has no kernel there).")
flags.DEFINE_string("model_variant", "mobilenet_v2", "Encoder: xception_41/65/71, resnet_v1_18[_beta], "
                    "resnet_v1_50[_beta], resnet_v1_101[_beta], mobilenet_v2, mobilenet_v3_large_seg, "
                    "mobilenet_v3_small_seg, mobilenet_edgetpu, nas_pnasnet, nas_hnasnet.")
flags.DEFINE_integer("num_classes", 21, "Number of classes the checkpoint predicts.")
flags.DEFINE_integer("output_stride", 16, "Input / encoder output resolution: 8, 16 or 32.")
flags.DEFINE_multi_integer("atrous_rates", None, "ASPP atrous rates, one flag each (6, 12, 18 at "
                           "output_stride 16); none for the MobileNetV2 head.")
flags.DEFINE_list("decoder_output_stride", None, "Decoder feature stride (4 for DeepLabv3+); unset for "
                  "DeepLabv3.")
flags.DEFINE_multi_integer("multi_grid", None, "Unit rates of the last block, e.g. 1, 2, 4.")
flags.DEFINE_boolean("aspp_with_separable_conv", True, "Depthwise-separable ASPP convolutions.")
flags.DEFINE_boolean("decoder_use_separable_conv", True, "Depthwise-separable decoder convolutions.")
flags.DEFINE_boolean("add_image_level_feature", True, "ASPP image pooling branch.")
flags.DEFINE_boolean("aspp_with_batch_norm", True, "Build the ASPP head.")
flags.DEFINE_float("depth_multiplier", 1.0, "MobileNet (V2, V3, EdgeTPU) width multiplier.")
flags.DEFINE_integer("divisible_by", None, "MobileNetV2 channel rounding (default 8 at multiplier 1, "
                     "else 1).")
flags.DEFINE_list("image_pooling_crop_size", None, "height,width of the crop image pooling averages "
                  "over; unset pools globally.")
flags.DEFINE_list("image_pooling_stride", ["1", "1"], "Stride of that pooling window.")
flags.DEFINE_string("dense_prediction_cell_json", "", "A Dense Prediction Cell JSON file replacing ASPP, or "
                    "the name of a packaged one (dense_prediction_cell_branch5_top1_cityscapes.json, the "
                    "model zoo's xception71_dpc_cityscapes); empty builds ASPP.")
flags.DEFINE_integer("nas_stem_output_num_conv_filters", 20, "NAS encoders: filters of the first cells.")
flags.DEFINE_boolean("nas_use_classification_head", False, "NAS encoders: image classification head "
                     "(to output stride 32, 2048 channels).")
flags.DEFINE_boolean("nas_remove_os32_stride", False, "NAS encoders: no stride in the output stride 32 "
                     "cells.")
flags.DEFINE_integer("logits_kernel_size", 1, "Kernel size of the logits convolution.")
flags.DEFINE_boolean("prediction_with_upsampled_logits", True, "Upsample logits to the input size.")
# The newest common.py head flags (the MobileNetV3 model-zoo configurations use them).
flags.DEFINE_boolean("use_bounded_activation", False, "Bounded activations for quantized inference: "
                     "ReLU6 in the ASPP head and decoder; the bounded Xception (ReLU6, clipping).")
flags.DEFINE_boolean("aspp_with_concat_projection", True, "ASPP with concat projection.")
flags.DEFINE_boolean("aspp_with_squeeze_and_excitation", False, "ASPP with squeeze and excitation: the "
                     "image-pooling branch gates the ASPP output.")
flags.DEFINE_integer("aspp_convs_filters", 256, "ASPP convolution filters.")
flags.DEFINE_boolean("decoder_use_sum_merge", False, "Decoder uses simply sum merge.")
flags.DEFINE_integer("decoder_filters", 256, "Decoder filters.")
flags.DEFINE_boolean("decoder_output_is_logits", False, "Use decoder output as logits.")
flags.DEFINE_boolean("image_se_uses_qsigmoid", False, "Use q-sigmoid (relu6(x + 3) * 0.16667) in the "
                     "squeeze-and-excitation gate.")

# Input resizing (research/deeplab common.py), used by train, eval and vis: deeplab_tf.data.preprocess.
flags.DEFINE_integer("min_resize_value", None, "Resize every image first so that its smaller side has this "
                     "many pixels (unless --max_resize_value caps the larger side); unset: no resize.")
flags.DEFINE_integer("max_resize_value", None, "Largest allowed size of the larger side after resizing "
                     "(needs --min_resize_value).")
flags.DEFINE_integer("resize_factor", None, "Resized sides are a multiple of this plus one.")
flags.DEFINE_boolean("keep_aspect_ratio", True, "Keep the aspect ratio when resizing; False resizes to a "
                     "square of the larger side.")

flags.DEFINE_boolean("overwrite", False, "Replace existing outputs (export, converted model) once the "
                     "new ones are complete.")
# Checkpoint flags used by several binaries, defined once so that they can share one process.
flags.DEFINE_string("checkpoint_path", None, "A checkpoint: our ckpt-N prefix or a .keras file (eval, vis, "
                    "export_model; overrides --checkpoint_dir), or a model-zoo TF1 checkpoint prefix, folder "
                    "or .tar.gz (convert_checkpoint).")
flags.DEFINE_boolean("initialize_last_layer", True, "Also restore the last layer(s); False leaves them "
                     "freshly initialised, to fine-tune to another number of classes (research/deeplab "
                     "train.py).")
flags.DEFINE_boolean("last_layers_contain_logits_only", False, "With --noinitialize_last_layer: the last "
                     "layers are the logits only (True) or the whole ASPP/decoder head (False), as "
                     "research/deeplab train.py (default False).")


def _ints(values, flag):
  if values is None or values == []:
    return None
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    raise ValueError(f"--{flag}={','.join(values)}: expected integers.") from None


# Model flags whose string values are parsed into their ModelOptions field; every other field is set from
# the flag of its own name, as the value absl parsed.
_PARSED_FLAGS = ("decoder_output_stride", "image_pooling_crop_size", "image_pooling_stride")


def model_options_from_flags() -> ModelOptions:
  """`ModelOptions` from research/deeplab's model flags, field by field of the same name (raises
  ValueError naming a bad flag)."""
  values = {field.name: FLAGS[field.name].value for field in dataclasses.fields(ModelOptions)
            if field.name in FLAGS}
  for name in _PARSED_FLAGS:
    values[name] = _ints(values[name], name)
  values["atrous_rates"] = values["atrous_rates"] or None
  values["multi_grid"] = values["multi_grid"] or None
  if FLAGS.dense_prediction_cell_json:
    values["dense_prediction_cell_config"] = load_dense_prediction_cell_config(
        FLAGS.dense_prediction_cell_json)
  return ModelOptions(**values)


def override_model_options(options: ModelOptions) -> ModelOptions:
  """`options` with every model flag given explicitly on the command line in its place.

  research/deeplab's eval.py and vis.py build the model from their flags, so an evaluation may use
  another output_stride or atrous_rates than training did; ours read the architecture beside the
  checkpoint, and the model flags given explicitly take precedence.

  Raises:
    ValueError: naming a bad flag.
  """
  flagged = model_options_from_flags()
  changes = {field.name: getattr(flagged, field.name) for field in dataclasses.fields(ModelOptions)
             if field.name in FLAGS and FLAGS[field.name].present}
  return options.replace(**changes) if changes else options
