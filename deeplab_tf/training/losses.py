"""DeepLab's training loss: pixel-wise softmax cross-entropy with ignore label, class weights and
hard pixel mining, plus slim-style L2 weight decay.

research/deeplab `utils/train_utils.py` (`add_softmax_cross_entropy_loss_for_each_scale`,
`_div_maybe_zero`) and `core/utils.py` (`get_label_weight_mask`); DeepLabv3, section 4.1 (loss on
upsampled logits).
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import tensorflow as tf

from deeplab_tf.image_ops import resize_bilinear_align_corners, resize_nearest_align_corners


def label_weights(labels, num_classes: int, ignore_label: int,
                  class_weights: Optional[Sequence[float]] = None):
  """Per-pixel loss weights: the pixel's class weight, 0 at `ignore_label` (`get_label_weight_mask`).

  Args:
    labels: int tensor of any shape, class ids or `ignore_label`.
    num_classes: number of classes.
    ignore_label: the "don't care" id.
    class_weights: one non-negative weight per class, or None for all 1.

  Returns:
    float32 tensor of `labels`' shape.

  Raises:
    ValueError: `class_weights` has not `num_classes` entries, or a negative entry.
  """
  keep = tf.cast(tf.not_equal(labels, ignore_label), tf.float32)
  if class_weights is None:
    return keep
  class_weights = [float(w) for w in class_weights]
  if len(class_weights) != num_classes or min(class_weights) < 0:
    raise ValueError(f"class_weights={class_weights}: expected {num_classes} non-negative weights "
                     "(one per class).")
  # One-hot of an out-of-range id (the ignore label) is all zeros, so it gets weight 0 either way.
  one_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
  return tf.einsum("...c,c->...", one_hot, tf.constant(class_weights, tf.float32)) * keep


def _div_maybe_zero(total, count):
  """`total / count`, and 0 when `count` is 0 (`_div_maybe_zero` in the original)."""
  return tf.cast(count > 0, tf.float32) * tf.math.divide(total, tf.maximum(1e-5, count))


def top_k_fraction(step, top_k_percent_pixels: float, hard_example_mining_step: int):
  """Fraction of pixels kept by hard pixel mining at `step` (float32 scalar in (0, 1]).

  Ramps linearly from 1 (all pixels) at step 0 to `top_k_percent_pixels` at
  `hard_example_mining_step`, then stays there; a ramp of 0 steps keeps `top_k_percent_pixels` at once.
  """
  if hard_example_mining_step == 0:
    return tf.constant(top_k_percent_pixels, tf.float32)
  ratio = tf.minimum(1.0, tf.cast(step, tf.float32) / float(hard_example_mining_step))
  return ratio * top_k_percent_pixels + (1.0 - ratio)


def softmax_cross_entropy_loss(logits, labels, *, num_classes: int, ignore_label: int,
                               class_weights: Optional[Sequence[float]] = None,
                               upsample_logits: bool = True, top_k_percent_pixels: float = 1.0,
                               hard_example_mining_step: int = 0, step=0):
  """Mean pixel-wise softmax cross-entropy, normalised as research/deeplab does.

  With `top_k_percent_pixels == 1`: sum of (class-weighted) pixel losses / number of non-ignored
  pixels. Otherwise only the `k = int(fraction * num_pixels)` highest weighted pixel losses count
  (`num_pixels` includes ignored pixels, `fraction` from `top_k_fraction`), and the sum is divided by
  the number of non-zero losses among those k. 0 when nothing is counted.

  Args:
    logits: float `[batch, h, w, num_classes]` (computed in float32 whatever its dtype).
    labels: int `[batch, H, W, 1]` or `[batch, H, W]`, class ids or `ignore_label`.
    num_classes: number of classes.
    ignore_label: label of pixels weighted 0.
    class_weights: optional per-class weights (see `label_weights`).
    upsample_logits: resize the logits bilinearly (align_corners) to the label size (True, the
      paper's choice); otherwise resize the labels by nearest neighbour (align_corners) to the logits.
    top_k_percent_pixels: fraction in (0, 1] of pixels kept by hard pixel mining.
    hard_example_mining_step: steps over which the mining fraction ramps from 1 down.
    step: the current training step (int scalar or tensor), used by the ramp.

  Returns:
    float32 scalar.

  Raises:
    ValueError: bad `class_weights` or `top_k_percent_pixels`.
  """
  if not 0.0 < top_k_percent_pixels <= 1.0:
    raise ValueError(f"top_k_percent_pixels={top_k_percent_pixels}: expected a value in (0, 1].")
  logits = tf.cast(logits, tf.float32)
  labels = tf.cast(labels, tf.int32)
  if labels.shape.rank == 3:
    labels = labels[..., tf.newaxis]
  if upsample_logits:
    logits = resize_bilinear_align_corners(logits, tf.shape(labels)[1:3])
  else:
    labels = resize_nearest_align_corners(labels, tf.shape(logits)[1:3])
  labels = tf.reshape(labels, [-1])
  logits = tf.reshape(logits, [-1, num_classes])
  weights = label_weights(labels, num_classes, ignore_label, class_weights)
  keep = tf.cast(tf.not_equal(labels, ignore_label), tf.float32)
  # Ignored ids may be out of range for the sparse op; their loss is multiplied by 0 anyway.
  safe_labels = tf.where(keep > 0, labels, tf.zeros_like(labels))
  pixel_losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=safe_labels, logits=logits)
  weighted = pixel_losses * weights
  if top_k_percent_pixels == 1.0:
    return _div_maybe_zero(tf.reduce_sum(weighted), tf.reduce_sum(keep))
  num_pixels = tf.shape(weighted)[0]
  fraction = top_k_fraction(step, top_k_percent_pixels, hard_example_mining_step)
  k = tf.cast(fraction * tf.cast(num_pixels, tf.float32), tf.int32)
  # The original's `tf.nn.top_k(losses, k)` has a data-dependent output shape whenever k ramps with
  # the step; sorting every pixel loss and masking all but the first k keeps static shapes (XLA, TPU)
  # and sums the same k values.
  ranked = tf.sort(weighted, direction="DESCENDING")
  in_top_k = tf.range(num_pixels) < k
  top_losses = tf.where(in_top_k, ranked, tf.zeros_like(ranked))
  count = tf.reduce_sum(tf.cast(tf.not_equal(top_losses, 0.0), tf.float32))
  return _div_maybe_zero(tf.reduce_sum(top_losses), count)


class SoftmaxCrossEntropyLoss(keras.losses.Loss):
  """`softmax_cross_entropy_loss` as a Keras loss, for `model.compile(loss=...)` and `model.fit`.

  The same value as the project's training loss on the same batch (without weight decay, which
  `deeplab_train` adds separately): the class-weighted cross-entropy summed over the non-ignored
  pixels and divided by their number. `y_true` is the label `[b, H, W, 1]` (or `[b, H, W]`) holding
  `ignore_label` where nothing is counted (`deeplab_tf.data.keras_dataset` yields such batches),
  `y_pred` the logits `[b, h, w, num_classes]`. Hard pixel mining keeps a fixed fraction
  (`top_k_percent_pixels`); the original's ramp over `hard_example_mining_step` needs the step, which
  a Keras loss does not see.

  Args:
    num_classes: number of classes.
    ignore_label: label of pixels left out.
    class_weights: optional per-class weights (see `label_weights`).
    upsample_logits: resize the logits to the label size (True, the paper's) or the labels to the logits.
    top_k_percent_pixels: fraction in (0, 1] of the highest pixel losses counted.
    name: the loss's name.
  """

  def __init__(self, num_classes: int, ignore_label: int = 255,
               class_weights: Optional[Sequence[float]] = None, upsample_logits: bool = True,
               top_k_percent_pixels: float = 1.0, name: str = "softmax_cross_entropy", **kwargs):
    super().__init__(name=name, **kwargs)
    if not 0.0 < top_k_percent_pixels <= 1.0:
      raise ValueError(f"top_k_percent_pixels={top_k_percent_pixels}: expected a value in (0, 1].")
    self.num_classes, self.ignore_label = int(num_classes), int(ignore_label)
    self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
    self.upsample_logits, self.top_k_percent_pixels = bool(upsample_logits), float(top_k_percent_pixels)

  def call(self, y_true, y_pred):
    return softmax_cross_entropy_loss(
        y_pred, y_true, num_classes=self.num_classes, ignore_label=self.ignore_label,
        class_weights=self.class_weights, upsample_logits=self.upsample_logits,
        top_k_percent_pixels=self.top_k_percent_pixels)

  def get_config(self):
    return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label,
            "class_weights": self.class_weights, "upsample_logits": self.upsample_logits,
            "top_k_percent_pixels": self.top_k_percent_pixels}


def l2_weight_decay(kernels: Sequence, weight_decay: float):
  """slim's `l2_regularizer`: `weight_decay * sum(w ** 2) / 2` over `kernels` (float32 scalar)."""
  if not kernels or weight_decay == 0:
    return tf.constant(0.0, tf.float32)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32)) for k in kernels])
