"""Streaming confusion matrix and mIoU against a hand-computed example."""
import json
import math

import numpy as np
import pytest

from deeplab_tf.evaluation.metrics import ConfusionMatrix, compute_metrics


def test_confusion_matrix_miou_with_absent_class_and_ignore():
  # 4 classes; class 3 appears in neither labels nor predictions at non-ignored pixels.
  cm = ConfusionMatrix(num_classes=4, ignore_label=255, class_names=["bg", "a", "b", "c"])
  # Two batches streamed; predictions at ignored pixels (3 and 9) must not count nor raise.
  cm.update(np.array([[0, 0, 0, 1]]), np.array([[0, 0, 1, 1]]))
  cm.update(np.array([[1, 2, 255, 255]])[..., None], np.array([[2, 2, 3, 9]]))
  np.testing.assert_array_equal(cm.matrix, [[2, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 0]])
  m = cm.result()
  # IoU = TP / (TP + FP + FN): bg 2/(2+0+1), a 1/(1+1+1), b 1/(1+1+0); c absent -> excluded.
  assert m.per_class_iou[:3] == pytest.approx([2 / 3, 1 / 3, 1 / 2])
  assert m.per_class_iou[3] is None
  assert m.miou == pytest.approx((2 / 3 + 1 / 3 + 1 / 2) / 3)
  assert m.pixel_accuracy == pytest.approx(4 / 6)
  d = json.loads(json.dumps(m.to_dict()))
  assert d["per_class_iou"]["c"] is None and d["per_class_iou"]["a"] == pytest.approx(1 / 3)
  assert d["num_pixels"] == 6


def test_ignore_label_inside_class_range_like_ade20k():
  cm = ConfusionMatrix(num_classes=3, ignore_label=0)
  cm.update(np.array([0, 1, 2, 2]), np.array([1, 1, 2, 1]))
  m = cm.result()
  assert m.per_class_iou == [None, pytest.approx(1 / 2), pytest.approx(1 / 2)]
  assert m.miou == pytest.approx(0.5)


def test_out_of_range_values_raise():
  cm = ConfusionMatrix(num_classes=3, ignore_label=255)
  with pytest.raises(ValueError, match=r"label values \[7\] lie outside \[0, 3\)"):
    cm.update(np.array([0, 7]), np.array([0, 0]))
  with pytest.raises(ValueError, match=r"prediction values \[-1\]"):
    cm.update(np.array([0, 1]), np.array([0, -1]))
  with pytest.raises(ValueError, match="same shape"):
    cm.update(np.array([0, 1]), np.array([0]))
  assert cm.matrix.sum() == 0


def test_empty_matrix_gives_nan():
  m = compute_metrics(np.zeros((2, 2), np.int64))
  assert math.isnan(m.miou) and m.per_class_iou == [None, None]
  assert m.to_dict()["miou"] is None
