"""Resizes exactly as research/deeplab does them, shared by the model, the input pipeline and the loss.

Every resize in the original (image pooling back to the feature size, ASPP output to the decoder size,
logits to the input size, random scaling of training images and labels) uses align_corners=True,
half_pixel_centers=False (REFERENCE.md). TF2's `tf.image.resize` cannot; the TF1 ops behind
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
