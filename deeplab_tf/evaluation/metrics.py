"""Segmentation metrics: a confusion matrix accumulated over a whole split, per-class IoU and mIoU.

research/deeplab `eval.py` streams `tf.metrics.mean_iou` over the split: one confusion matrix for all
images, pixels labelled `ignore_label` weighted 0, IoU_c = TP_c / (TP_c + FP_c + FN_c), and the mean
over the classes whose denominator is non-zero (a class absent from both the labels and the
predictions of the whole split is left out of the mean, not counted as 0 or 1).
"""

from __future__ import annotations

import dataclasses
import math
from typing import List, Optional, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class SegmentationMetrics:
  """The metrics of one evaluation.

  Attributes:
    miou: mean IoU in [0, 1] over the classes present in labels or predictions (NaN if none is).
    per_class_iou: IoU of each class in [0, 1], None for a class absent from both labels and
      predictions.
    pixel_accuracy: fraction of the evaluated (non-ignored) pixels predicted correctly (NaN if none).
    class_names: one name per class.
    confusion_matrix: int64 `[num_classes, num_classes]`, rows ground truth, columns prediction.
  """

  miou: float
  per_class_iou: List[Optional[float]]
  pixel_accuracy: float
  class_names: List[str]
  confusion_matrix: np.ndarray

  @property
  def num_pixels(self) -> int:
    return int(self.confusion_matrix.sum())

  def to_dict(self) -> dict:
    """A JSON-serialisable dict (NaN written as None, the confusion matrix as nested lists)."""
    def finite(x):
      return None if x is None or math.isnan(x) else float(x)
    return {
        "miou": finite(self.miou),
        "pixel_accuracy": finite(self.pixel_accuracy),
        "num_pixels": self.num_pixels,
        "per_class_iou": {name: finite(iou) for name, iou in zip(self.class_names, self.per_class_iou)},
        "class_names": list(self.class_names),
        "confusion_matrix": self.confusion_matrix.tolist(),
    }


def compute_metrics(confusion_matrix: np.ndarray,
                    class_names: Optional[Sequence[str]] = None) -> SegmentationMetrics:
  """Per-class IoU, mIoU and pixel accuracy from a confusion matrix.

  Args:
    confusion_matrix: integer `[num_classes, num_classes]`, rows ground truth, columns prediction.
    class_names: `num_classes` names; None names them "0", "1", ...

  Returns:
    The `SegmentationMetrics`.

  Raises:
    ValueError: if the matrix is not square or the number of names differs from the number of classes.
  """
  cm = np.asarray(confusion_matrix, dtype=np.int64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion_matrix must be square [num_classes, num_classes], got {cm.shape}.")
  num_classes = cm.shape[0]
  names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for a {num_classes}-class confusion matrix.")
  true_positives = np.diag(cm).astype(np.float64)
  union = cm.sum(axis=0) + cm.sum(axis=1) - np.diag(cm)  # TP + FP + FN
  present = union > 0
  iou = np.where(present, true_positives / np.maximum(union, 1), np.nan)
  miou = float(iou[present].mean()) if present.any() else math.nan
  total = cm.sum()
  pixel_accuracy = float(true_positives.sum() / total) if total else math.nan
  per_class = [float(v) if ok else None for v, ok in zip(iou, present)]
  return SegmentationMetrics(miou, per_class, pixel_accuracy, names, cm)


class ConfusionMatrix:
  """A confusion matrix streamed over batches (research/deeplab eval.py's `tf.metrics.mean_iou`).

  Example:
    cm = ConfusionMatrix(num_classes=21, ignore_label=255, class_names=names)
    for batch in dataset:
      cm.update(batch["label"], predict_labels(model, batch["image"], eval_options))
    metrics = cm.result()
  """

  def __init__(self, num_classes: int, ignore_label: Optional[int] = None,
               class_names: Optional[Sequence[str]] = None):
    """Args:
      num_classes: number of classes; valid ids are [0, num_classes).
      ignore_label: label id excluded from the metrics (255 for VOC and Cityscapes, 0 for ADE20K);
        it may lie inside [0, num_classes) (ADE20K's 0), in which case that class is never counted.
      class_names: optional `num_classes` names for the result.

    Raises:
      ValueError: if num_classes < 1 or the number of class names is wrong.
    """
    if num_classes < 1:
      raise ValueError(f"num_classes={num_classes}: expected at least 1.")
    if class_names is not None and len(class_names) != num_classes:
      raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}.")
    self.num_classes = int(num_classes)
    self.ignore_label = ignore_label
    self.class_names = None if class_names is None else list(class_names)
    self.matrix = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

  def update(self, labels, predictions) -> None:
    """Adds a batch of pixels.

    Args:
      labels: integer ground truth of any shape, e.g. `[batch, height, width]` or `[..., 1]`
        (numpy or tf tensors); `ignore_label` marks pixels to skip.
      predictions: integer predicted class ids with as many elements as `labels`, e.g.
        `[batch, height, width]`; their value at ignored pixels does not matter.

    Raises:
      ValueError: if the sizes differ, or a label (other than ignore_label) or a prediction at a
        non-ignored pixel lies outside [0, num_classes).
    """
    labels = np.asarray(labels).reshape(-1).astype(np.int64)
    predictions = np.asarray(predictions).reshape(-1).astype(np.int64)
    if labels.size != predictions.size:
      raise ValueError(f"labels have {labels.size} pixels but predictions {predictions.size}; "
                       "expected the same shape.")
    if self.ignore_label is not None:
      keep = labels != self.ignore_label
      labels, predictions = labels[keep], predictions[keep]
    for what, values in (("label", labels), ("prediction", predictions)):
      bad = (values < 0) | (values >= self.num_classes)
      if bad.any():
        raise ValueError(
            f"{what} values {sorted(set(values[bad].tolist()))[:10]} lie outside [0, {self.num_classes}) "
            f"and are not ignore_label={self.ignore_label}.")
    self.matrix += np.bincount(labels * self.num_classes + predictions,
                               minlength=self.num_classes ** 2).reshape(self.num_classes, self.num_classes)

  def reset(self) -> None:
    self.matrix[:] = 0

  def result(self) -> SegmentationMetrics:
    """The metrics of everything added so far."""
    return compute_metrics(self.matrix.copy(), self.class_names)
