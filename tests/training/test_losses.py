"""Loss values against hand-computed numbers (research/deeplab train_utils normalisation)."""
import math

import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.training import losses


def _ce(logit_row, label):
  """-log softmax(logit_row)[label], by hand."""
  m = max(logit_row)
  log_z = m + math.log(sum(math.exp(v - m) for v in logit_row))
  return log_z - logit_row[label]


# 1x2x2 image, 3 classes; pixel losses computed by hand below.
LOGITS = np.array([[[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]],
                    [[0.0, 0.0, 3.0], [1.0, 1.0, 1.0]]]], np.float32)
LABELS = np.array([[[[0], [2]], [[255], [1]]]], np.int32)
PIXEL = [_ce([2, 0, 0], 0), _ce([0, 1, 0], 2), None, _ce([1, 1, 1], 1)]


def _loss(**kwargs):
  args = dict(num_classes=3, ignore_label=255)
  args.update(kwargs)
  return float(losses.softmax_cross_entropy_loss(LOGITS, LABELS, **args))


def test_ignore_label_is_weighted_zero_and_excluded_from_the_count():
  # ln(1 + 2e^-2) = 0.2395..., ln(2 + e) = 1.5514..., ln 3 = 1.0986...
  assert PIXEL[0] == pytest.approx(math.log(1 + 2 * math.exp(-2)))
  expected = (PIXEL[0] + PIXEL[1] + PIXEL[3]) / 3
  assert _loss() == pytest.approx(expected, rel=1e-6)


def test_class_weights_scale_pixels_but_not_the_count():
  expected = (0.5 * PIXEL[0] + 2.0 * PIXEL[1] + 1.0 * PIXEL[3]) / 3
  assert _loss(class_weights=[0.5, 1.0, 2.0]) == pytest.approx(expected, rel=1e-6)
  with pytest.raises(ValueError, match="class_weights"):
    _loss(class_weights=[1.0, 1.0])


def test_hard_pixel_mining_keeps_the_top_k_and_divides_by_their_nonzero_count():
  # 4 pixels (ignored one included), top 50% -> k = 2: the two largest of {0.2395, 1.5514, 0, 1.0986}.
  expected = (PIXEL[1] + PIXEL[3]) / 2
  assert _loss(top_k_percent_pixels=0.5) == pytest.approx(expected, rel=1e-6)
  # Ramp over 10 steps: at step 5 the fraction is 0.5 * 0.25 + 0.5 = 0.625 -> k = int(2.5) = 2.
  assert _loss(top_k_percent_pixels=0.25, hard_example_mining_step=10, step=5) == pytest.approx(
      expected, rel=1e-6)
  # At step 0 all 4 are kept, the ignored pixel's loss is 0 and is not counted.
  assert _loss(top_k_percent_pixels=0.25, hard_example_mining_step=10, step=0) == pytest.approx(
      (PIXEL[0] + PIXEL[1] + PIXEL[3]) / 3, rel=1e-6)
  # From step 10 on, 25%: k = 1, the largest.
  assert _loss(top_k_percent_pixels=0.25, hard_example_mining_step=10, step=20) == pytest.approx(
      PIXEL[1], rel=1e-6)


def test_all_pixels_ignored_gives_zero_not_nan():
  labels = np.full_like(LABELS, 255)
  assert float(losses.softmax_cross_entropy_loss(LOGITS, labels, num_classes=3,
                                                 ignore_label=255)) == 0.0


def test_upsampled_logits_versus_downsampled_labels():
  # Logits 1x2x2 constant per column; labels 3x3. Upsampling (align_corners) interpolates the middle
  # column to the mean logits; downsampling labels picks rows/cols 0 and 2.
  logits = np.zeros([1, 2, 2, 2], np.float32)
  logits[:, :, 0, 0] = 2.0
  logits[:, :, 1, 1] = 2.0
  labels = np.array([[0, 1, 1], [0, 1, 1], [0, 1, 1]], np.int32)[None, :, :, None]
  up = float(losses.softmax_cross_entropy_loss(logits, labels, num_classes=2, ignore_label=255))
  # Left column: ce([2,0],0); middle column logits [1,1] -> ln 2; right: ce([0,2],1).
  assert up == pytest.approx((3 * _ce([2, 0], 0) + 3 * math.log(2) + 3 * _ce([0, 2], 1)) / 9, rel=1e-6)
  down = float(losses.softmax_cross_entropy_loss(logits, labels, num_classes=2, ignore_label=255,
                                                 upsample_logits=False))
  assert down == pytest.approx(_ce([2, 0], 0), rel=1e-6)


def test_l2_weight_decay_is_slim_half_sum_of_squares():
  kernels = [tf.constant([[1.0, 2.0]]), tf.constant([3.0])]
  assert float(losses.l2_weight_decay(kernels, 0.1)) == pytest.approx(0.1 * (1 + 4 + 9) / 2)
