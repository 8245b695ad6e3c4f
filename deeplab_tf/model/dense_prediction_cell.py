"""The Dense Prediction Cell (DPC), the searched replacement of ASPP (Chen et al. 2018, "Searching for
Efficient Multi-Scale Architectures for Dense Image Prediction", section 3.1).

As research/deeplab builds it (`core/dense_prediction_cell.py`, `DensePredictionCell.build_cell`,
called from `model.py` `extract_features` in place of ASPP when `--dense_prediction_cell_json` is given):
a list of branches `branch0 .. branchN-1`, each reading the encoder output (`input: -1`) or an earlier
branch (`input: i`), each either
- `conv`: a 1x1 conv 256 + BN + ReLU (`kernel: 1`), or DeepLab's separable conv (`kernel: 3`,
  depthwise + BN + ReLU, pointwise 256 + BN + ReLU) with an anisotropic atrous `rate: [rh, rw]`
  multiplied by `16 // output_stride`;
- `pyramid_pooling`: average pooling over a `grid_size: [gh, gw]` grid of the image-pooling crop
  (VALID, stride 1), 1x1 conv 256 + BN + ReLU, bilinear resize (align_corners=True) back;
then every branch concatenated, dropout (keep probability 0.9, training only), and
`concat_projection` (1x1 conv 256 + BN + ReLU), all under the variable scope `meta_architecture`.
BatchNorm: decay 0.9997, epsilon 1e-5, as the rest of the head.

The model zoo's Cityscapes DPC (`xception71_dpc_cityscapes_*`) uses
`dense_prediction_cell_branch5_top1_cityscapes.json`, shipped with this package (`PACKAGED_CONFIGS`).
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab_tf.model import layers
from deeplab_tf.image_ops import scale_dimension
from deeplab_tf.model.aspp import HEAD_BN

META_ARCHITECTURE_SCOPE = "meta_architecture"
CONCAT_PROJECTION_SCOPE = "concat_projection"
# `dense_prediction_cell_hparams()`: reduction_size, concat_channels, dropout_keep_prob.
REDUCTION_SIZE = 256
CONCAT_CHANNELS = 256
DROPOUT_RATE = 0.1

CONV = "conv"
PYRAMID_POOLING = "pyramid_pooling"

_CONFIG_DIR = os.path.dirname(os.path.abspath(__file__))  # not-gfile: the package's own files
# The DPC architectures the original ships (core/*.json), by file name.
PACKAGED_CONFIGS = ("dense_prediction_cell_branch5_top1_cityscapes.json",)


def _pair(value, what: str) -> Tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
    return (int(value[0]), int(value[1]))
  raise ValueError(f"{what}={value!r}: expected an integer or a pair of integers [height, width].")


def normalize_config(config: Sequence[Dict[str, Any]]) -> Tuple[Dict[str, Any], ...]:
  """Checks a DPC config (a list of branch dicts, as the original's JSON files) and normalises it.

  Each branch: `{"op": "conv", "input": i, "kernel": 1 | 3 | [kh, kw], "rate": [rh, rw]}` (rate needed
  unless the kernel is 1) or `{"op": "pyramid_pooling", "input": i, "grid_size": [gh, gw]}`, with `i` -1
  (the encoder output) or the index of an earlier branch.

  Returns:
    A tuple of dicts with sorted keys and pairs as tuples (so that options compare equal after JSON).

  Raises:
    ValueError: an empty config, an unknown op, a missing key, an input that is not an earlier branch,
      or a kernel, rate or grid that is not an integer pair.
  """
  if not isinstance(config, (list, tuple)) or not config:
    raise ValueError(f"dense_prediction_cell_config={config!r}: expected a non-empty list of branches.")
  branches = []
  for i, branch in enumerate(config):
    where = f"dense_prediction_cell_config branch {i}"
    if not isinstance(branch, dict) or "op" not in branch or "input" not in branch:
      raise ValueError(f"{where}: {branch!r}: expected a dict with 'op' and 'input'.")
    source = branch["input"]
    if not isinstance(source, int) or not -1 <= source < i:
      raise ValueError(f"{where}: input={source!r}: expected -1 (the encoder output) or an earlier "
                       f"branch 0..{i - 1}.")
    out = {"op": branch["op"], "input": source}
    if branch["op"] == CONV:
      if "kernel" not in branch:
        raise ValueError(f"{where}: a 'conv' needs 'kernel' (1 or 3).")
      out["kernel"] = _pair(branch["kernel"], f"{where} kernel")
      if out["kernel"] != (1, 1):
        if "rate" not in branch:
          raise ValueError(f"{where}: a {list(out['kernel'])} 'conv' needs 'rate' [rh, rw].")
        out["rate"] = _pair(branch["rate"], f"{where} rate")
    elif branch["op"] == PYRAMID_POOLING:
      if "grid_size" not in branch:
        raise ValueError(f"{where}: a 'pyramid_pooling' needs 'grid_size' [gh, gw].")
      out["grid_size"] = _pair(branch["grid_size"], f"{where} grid_size")
    else:
      raise ValueError(f"{where}: op={branch['op']!r}: expected {CONV!r} or {PYRAMID_POOLING!r}.")
    unknown = sorted(set(branch) - {"op", "input", "kernel", "rate", "grid_size"})
    if unknown:
      raise ValueError(f"{where}: unknown key(s) {unknown}.")
    branches.append(dict(sorted(out.items())))
  return tuple(branches)


def load_dense_prediction_cell_config(path: str) -> Tuple[Dict[str, Any], ...]:
  """Reads a DPC JSON file (research/deeplab's `--dense_prediction_cell_json`).

  Args:
    path: a JSON file (any tf.io.gfile path), or the bare name of a config shipped with this package
      (`PACKAGED_CONFIGS`, e.g. `dense_prediction_cell_branch5_top1_cityscapes.json`).

  Returns:
    The normalised config (`normalize_config`).

  Raises:
    FileNotFoundError: neither a file nor a packaged config name.
    ValueError: the file is not valid JSON or not a valid config.
  """
  if not tf.io.gfile.exists(path):
    if os.path.basename(path) != path or path not in PACKAGED_CONFIGS:
      raise FileNotFoundError(f"--dense_prediction_cell_json={path}: no such file, and not one of the "
                              f"packaged configs {list(PACKAGED_CONFIGS)}.")
    path = os.path.join(_CONFIG_DIR, path)
  with tf.io.gfile.GFile(path, "r") as f:
    text = f.read()
  try:
    config = json.loads(text)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e}).") from None
  try:
    return normalize_config(config)
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None


def conv_rate_multiplier(output_stride: int) -> int:
  """`16 // output_stride` (model.py): the searched rates are for output stride 16, doubled at 8.

  Raises:
    ValueError: output_stride > 16, where the original's multiplier would be 0.
  """
  multiplier = 16 // output_stride
  if multiplier < 1:
    raise ValueError(f"output_stride={output_stride}: the dense prediction cell needs output_stride 8 or "
                     "16 (its conv_rate_multiplier 16 // output_stride must be at least 1).")
  return multiplier


def pyramid_pooling_kernel(crop_size: Sequence[int], output_stride: int,
                           grid_size: Sequence[int]) -> Tuple[int, int]:
  """The pooling window of a `pyramid_pooling` branch, in feature pixels.

  `scale_dimension(crop, 1 / (output_stride * grid))` per dimension (`_get_pyramid_pooling_arguments`),
  e.g. crop 513, output stride 16, grid 4 -> 9.
  """
  return tuple(scale_dimension(c, 1.0 / (output_stride * g)) for c, g in zip(crop_size, grid_size))


def build_dense_prediction_cell(features, config, output_stride: int,
                                image_pooling_crop_size=None):
  """Builds the DPC on the encoder output.

  Args:
    features: `[batch, h, w, channels]` encoder output at `output_stride`.
    config: a DPC config (`normalize_config` form, or anything it accepts).
    output_stride: 8 or 16; scales the atrous rates by `16 // output_stride`.
    image_pooling_crop_size: `(height, width)` in pixels of the crop whose grid `pyramid_pooling`
      branches average over (the original's `image_pooling_crop_size`, else its `crop_size`).

  Returns:
    `[batch, h, w, 256]` float tensor.

  Raises:
    ValueError: an invalid config, output_stride 32, or a `pyramid_pooling` branch without
      `image_pooling_crop_size` (the original sizes its window from the crop, not the input).
  """
  config = normalize_config(config)
  multiplier = conv_rate_multiplier(output_stride)
  branches = []
  for i, branch in enumerate(config):
    scope = f"{META_ARCHITECTURE_SCOPE}/branch{i}"
    source = features if branch["input"] < 0 else branches[branch["input"]]
    if branch["op"] == CONV:
      if branch["kernel"] == (1, 1):
        out = layers.conv2d_same(source, REDUCTION_SIZE, 1, 1, 1, scope, bn_params=HEAD_BN)
      else:
        rate = tuple(r * multiplier for r in branch["rate"])
        out = layers.split_separable_conv2d(source, REDUCTION_SIZE, scope, kernel_size=branch["kernel"],
                                            rate=rate, bn_params=HEAD_BN)
    else:
      if image_pooling_crop_size is None:
        raise ValueError(f"dense_prediction_cell_config branch {i} is a pyramid_pooling, whose window "
                         "the original sizes from the crop: give image_pooling_crop_size.")
      kernel = pyramid_pooling_kernel(image_pooling_crop_size, output_stride, branch["grid_size"])
      name = layers.scope_to_layer_name(scope)
      pooled = keras.layers.AveragePooling2D(kernel, strides=1, padding="valid",
                                             name=name + ".pool")(source)
      pooled = layers.conv2d_same(pooled, REDUCTION_SIZE, 1, 1, 1, scope, bn_params=HEAD_BN)
      out = layers.ResizeLike(name=name + ".resize")([pooled, features])
    branches.append(out)
  prefix = layers.scope_to_layer_name(META_ARCHITECTURE_SCOPE + "/" + CONCAT_PROJECTION_SCOPE)
  x = (keras.layers.Concatenate(axis=-1, name=prefix + ".concat")(branches)
       if len(branches) > 1 else branches[0])
  x = layers.HashDropout(DROPOUT_RATE, name=prefix + "_dropout")(x)
  return layers.conv2d_same(x, CONCAT_CHANNELS, 1, 1, 1,
                            f"{META_ARCHITECTURE_SCOPE}/{CONCAT_PROJECTION_SCOPE}", bn_params=HEAD_BN)
