"""Resizes exactly as research/deeplab does them, shared by the model, the input pipeline and the loss.

Also the original's `scale_dimension`, the one rule for the size of a scaled image or feature map.

Every resize in the original (image pooling back to the feature size, ASPP output to the decoder size,
logits to the input size, random scaling of training images and labels) uses align_corners=True,
half_pixel_centers=False (research/deeplab `model.py`, `core/preprocess_utils.py`,
`utils/train_utils.py`). TF2's `tf.image.resize` cannot; the TF1 ops behind
`tf.compat.v1.image.resize_{bilinear,nearest_neighbor}` can, and are called directly here (no
deprecation warning). This module depends on nothing of ours, so `model/` and `data/` may both use it.
"""

from __future__ import annotations

import tensorflow as tf


def resize_bilinear_align_corners(images, size):
  """Bilinear resize with align_corners=True; computes in float32, returns the input dtype.

  Args:
    images: `[batch, height, width, channels]` tensor.
    size: `[new_height, new_width]` (ints or an int32 tensor).

  Returns:
    `[batch, new_height, new_width, channels]` tensor of `images.dtype`.
  """
  out = tf.raw_ops.ResizeBilinear(images=tf.cast(images, tf.float32), size=tf.cast(size, tf.int32),
                                  align_corners=True, half_pixel_centers=False)
  return tf.cast(out, images.dtype)


def resize_nearest_align_corners(labels, size):
  """Nearest-neighbour resize with align_corners=True, for label maps (dtype kept).

  Args:
    labels: `[batch, height, width, channels]` integer tensor.
    size: `[new_height, new_width]`.

  Returns:
    `[batch, new_height, new_width, channels]` tensor of `labels.dtype`.
  """
  return tf.raw_ops.ResizeNearestNeighbor(images=labels, size=tf.cast(size, tf.int32),
                                          align_corners=True, half_pixel_centers=False)


def scale_dimension(dim, scale: float):
  """research/deeplab `model.py` `scale_dimension`: `int((dim - 1) * scale + 1)`, e.g. 513 at 1/16 -> 33.

  Args:
    dim: a size in pixels: a Python int, or an integer tensor (any shape).
    scale: the scale factor (Python float).

  Returns:
    An int for an int `dim`; an int32 tensor of `dim`'s shape for a tensor. Tensors are computed in
    float64 so that they equal the Python path bit for bit (the original's eval and export pass
    Python ints; its float32 tensor path is only taken when no crop size is given).
  """
  if tf.is_tensor(dim):
    return tf.cast((tf.cast(dim, tf.float64) - 1.0) * scale + 1.0, tf.int32)
  return int((float(dim) - 1.0) * scale + 1.0)
