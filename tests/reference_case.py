"""Test support: the reference variable lists and a TF1 model-zoo-style checkpoint writer.

Re-implements the recipe of the reference data (`det_value`: every variable's value from its name and
shape alone, crc32-seeded PCG64 draws: He-scaled normals for kernels, near-identity BN statistics) and
writes TF1 name-based checkpoints (a `.index` + `.data-*` bundle whose variables carry slim's names, as
research/deeplab's `model.ckpt`) with the raw SaveV2 op, which is what `tf.compat.v1.train.Saver` runs.
"""

import json
import os
import zlib

import numpy as np
import tensorflow as tf

from deeplab_tf.model.dense_prediction_cell import load_dense_prediction_cell_config

REFERENCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "testdata", "reference")
VARS_DIR = os.path.join(REFERENCE_DIR, "vars")
XCEPTION_65_CASE_DIR = os.path.join(REFERENCE_DIR, "xception_65_os16_129")
# Variable lists derived by reading the original's code (testdata/derived_vars/make_vars.py), for the
# variants the reference graph run does not cover.
DERIVED_VARS_DIR = os.path.join(os.path.dirname(REFERENCE_DIR), "derived_vars")

_PLUS = dict(atrous_rates=(6, 12, 18), decoder_output_stride=4)
_RESNET_PLUS = dict(_PLUS, aspp_with_separable_conv=False, decoder_use_separable_conv=False)

# vars list -> (ModelOptions fields, parameter count the reference README gives, or None).
VARIANT_CASES = {
    "xception_41": (dict(model_variant="xception_41", **_PLUS), 28_241_573),
    "xception_65": (dict(model_variant="xception_65", **_PLUS), 41_258_213),
    "xception_71": (dict(model_variant="xception_71", **_PLUS), 43_694_413),
    "xception_65_deeplabv3": (dict(model_variant="xception_65", atrous_rates=(6, 12, 18)), None),
    "xception_65_19classes": (dict(model_variant="xception_65", num_classes=19, **_PLUS), None),
    "resnet_v1_50": (dict(model_variant="resnet_v1_50", **_RESNET_PLUS), 40_409_493),
    "resnet_v1_50_beta": (dict(model_variant="resnet_v1_50_beta", **_RESNET_PLUS), 40_533_653),
    "resnet_v1_101_beta": (dict(model_variant="resnet_v1_101_beta", **_RESNET_PLUS), 59_578_005),
    "mobilenet_v2": (dict(model_variant="mobilenet_v2"), 2_146_645),
    # The model zoo's xception71_dpc_cityscapes: the Dense Prediction Cell instead of ASPP.
    "xception_71_dpc_cityscapes19": (dict(
        model_variant="xception_71", num_classes=19, decoder_output_stride=4,
        dense_prediction_cell_config=load_dense_prediction_cell_config(
            "dense_prediction_cell_branch5_top1_cityscapes.json")), 41_818_955),
    # The NAS encoders, lists written by testdata/reference/make_nas_vars.py from the original's code.
    "nas_pnasnet": (dict(model_variant="nas_pnasnet", **_PLUS), 2_602_069),
    "nas_hnasnet": (dict(model_variant="nas_hnasnet", output_stride=8, **_PLUS), 7_823_205),
    "nas_hnasnet_classification_head": (dict(
        model_variant="nas_hnasnet", atrous_rates=(6, 12, 18), nas_use_classification_head=True),
        17_854_717),
    "nas_pnasnet_os32_no_stride_classification_head": (dict(
        model_variant="nas_pnasnet", output_stride=32, atrous_rates=(6, 12, 18),
        nas_use_classification_head=True, nas_remove_os32_stride=True), 7_859_509),
}
# g3doc/model_zoo.md's flags of the MobileNetV3 Cityscapes checkpoints, but for their
# image_pooling_crop_size=769,769 and image_pooling_stride=4,5 (no variables; a 25x25 pooling window
# needs inputs of 769 pixels or more), so that the model runs on the small test inputs.
_MNV3_CITYSCAPES = dict(
    num_classes=19, output_stride=32, aspp_convs_filters=128, aspp_with_concat_projection=False, aspp_with_squeeze_and_excitation=True,
    decoder_use_sum_merge=True, decoder_filters=19, decoder_output_is_logits=True,
    image_se_uses_qsigmoid=True, decoder_output_stride=8)
# Issue 10 (lists in DERIVED_VARS_DIR; the parameter counts are those lists' sums, as no published figure
# exists).
VARIANT_CASES.update({
    "resnet_v1_18": (dict(model_variant="resnet_v1_18", **_RESNET_PLUS), 16_621_973),
    "resnet_v1_18_beta": (dict(model_variant="resnet_v1_18_beta", **_RESNET_PLUS), 16_603_781),
    "mobilenet_v3_large_seg": (dict(model_variant="mobilenet_v3_large_seg", **_MNV3_CITYSCAPES),
                               1_525_230),
    "mobilenet_v3_small_seg": (dict(model_variant="mobilenet_v3_small_seg", **_MNV3_CITYSCAPES),
                               477_454),
    # EdgeTPU-DeepLab(-slim): MobileNetV2's head (image pooling, 1x1 branch, projection).
    "mobilenet_edgetpu": (dict(model_variant="mobilenet_edgetpu", num_classes=19), 3_643_699),
    "mobilenet_edgetpu_slim": (dict(model_variant="mobilenet_edgetpu", num_classes=19,
                                    depth_multiplier=0.75, aspp_convs_filters=128), 1_972_443),
})


def load_vars(name):
  """`[(checkpoint name, shape tuple)]` of `testdata/{reference/vars,derived_vars}/<name>.vars.json`."""
  path = os.path.join(VARS_DIR, name + ".vars.json")
  if not os.path.exists(path):
    path = os.path.join(DERIVED_VARS_DIR, name + ".vars.json")
  with open(path) as f:
    return [(n, tuple(int(d) for d in s)) for n, s in json.load(f)]


def det_value(name, shape, gain=2.0):
  """The reference recipe's deterministic float32 value of variable `name` of `shape`."""
  shape = tuple(int(d) for d in shape)
  rng = np.random.default_rng(zlib.crc32(name.encode("utf-8")))
  if name.endswith("moving_variance"):
    value = 1.0 + 0.1 * np.abs(rng.standard_normal(shape))
  elif name.endswith("moving_mean"):
    value = 0.1 * rng.standard_normal(shape)
  elif name.endswith("gamma"):
    value = 1.0 + 0.1 * rng.standard_normal(shape)
  elif name.endswith("beta") or name.endswith("biases"):
    value = 0.1 * rng.standard_normal(shape)
  else:
    if len(shape) == 4:
      fan_in = shape[0] * shape[1] * (1 if name.endswith("depthwise_weights") else shape[2])
    else:
      fan_in = int(np.prod(shape[:-1])) if len(shape) >= 2 else (shape[0] if shape else 1)
    value = rng.standard_normal(shape) * np.sqrt(gain / fan_in)
  return np.asarray(value, dtype=np.float32)


def assign_reference_weights(model):
  """Gives every weight of our `model` its `det_value` by checkpoint name (varied, non-trivial outputs:
  a freshly built model predicts the same probability for every class)."""
  from deeplab_tf.checkpoints import model_weights_by_checkpoint_name
  for name, weight in model_weights_by_checkpoint_name(model).items():
    weight.assign(det_value(name, weight.shape))
  return model


def cheap_value(name, shape):
  """A fast stand-in for `det_value` where the values do not matter (only names and shapes)."""
  return np.full(shape, 0.5 if name.endswith("moving_variance") else 0.0, np.float32)


def write_tf1_checkpoint(prefix, names_and_values):
  """Writes `[(name, array)]` as a TF1 name-based checkpoint at `prefix` and returns the prefix."""
  os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
  names = [n for n, _ in names_and_values]
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                    tensors=[tf.constant(v) for _, v in names_and_values])
  return prefix


def write_checkpoint_from_vars(prefix, names_and_shapes, value_fn=det_value):
  return write_tf1_checkpoint(prefix, [(n, value_fn(n, s)) for n, s in names_and_shapes])
