"""One evaluation pass over a split: predictions of every batch streamed into one confusion matrix.

research/deeplab `eval.py`: the whole split goes through one `mean_iou` metric; images are padded to
`eval_crop_size` by the input pipeline and their labels with `ignore_label`, so padding never counts.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable, Iterable, Mapping, Optional, Sequence

from deeplab_tf.evaluation.crf import CrfOptions, dense_crf_labels
from deeplab_tf.evaluation.inference import predict_labels, predict_probabilities
from deeplab_tf.evaluation.metrics import ConfusionMatrix, SegmentationMetrics
from deeplab_tf.options import EvalOptions


def evaluate_dataset(model, batches: Iterable[Mapping], eval_options: EvalOptions, *, num_classes: int,
                     ignore_label: int, class_names: Optional[Sequence[str]] = None,
                     mean_pixel: Optional[Sequence[float]] = None,
                     crf_options: Optional[CrfOptions] = None,
                     on_batch: Optional[Callable[[Mapping, object], None]] = None) -> SegmentationMetrics:
  """mIoU of `model` over every batch of `batches`.

  Args:
    model: a `build_deeplab` Keras model.
    batches: dicts as `deeplab_tf.data.pipeline.build_dataset(is_training=False)` yields them:
      "image" float32 `[b, h, w, 3]` in [0, 255] and "label" int32 `[b, h, w, 1]` (padding labelled
      `ignore_label`); any iterable (e.g. wrapped in a progress bar by the caller).
    eval_options: scales, flipping, eval crop, sliding window.
    num_classes: classes of the dataset (the model's output channels).
    ignore_label: label excluded from the metric.
    class_names: names for the result.
    mean_pixel: padding value for `predict_labels`; None takes the model's.
    crf_options: refine each image's probabilities with DeepLabv2's dense CRF
      (`deeplab_tf.evaluation.crf`) before the argmax, on the image inside its padding (the batch's
      "height" and "width"); None (the default) takes the plain argmax.

  Returns:
    The `SegmentationMetrics` of the whole split.

  Raises:
    ValueError: a label outside [0, num_classes) other than ignore_label (see `ConfusionMatrix.update`).
  """
  matrix = ConfusionMatrix(num_classes, ignore_label, class_names)
  for batch in batches:
    if crf_options is None:
      labels = predict_labels(model, batch["image"], eval_options, mean_pixel=mean_pixel)
    else:
      probabilities = predict_probabilities(model, batch["image"], eval_options, mean_pixel=mean_pixel)
      labels = dense_crf_labels(batch["image"], probabilities, crf_options, batch.get("height"),
                                batch.get("width"))
    matrix.update(batch["label"], labels)
    if on_batch is not None:
      on_batch(batch, labels)
  return matrix.result()


@dataclasses.dataclass(frozen=True)
class OversizedImage:
  """An image larger than the evaluation crop, as named by the input pipeline's error."""

  name: str
  height: int
  width: int
  crop_height: int
  crop_width: int


# The assertion of `deeplab_tf.data.preprocess.preprocess_for_eval`, as TensorFlow prints its data.
_OVERSIZED = re.compile(r"\[Image\] \[(.*?)\] \[of height, width\] \[(\d+)\] \[(\d+)\] "
                        r"\[is larger than the eval crop_size\] \[(\d+)\] \[(\d+)\]")


def oversized_image(error: BaseException) -> Optional[OversizedImage]:
  """The image named by a `tf.errors.InvalidArgumentError` from the evaluation pipeline's "image
  larger than the eval crop_size" check (`preprocess_for_eval`), or None for any other error."""
  match = _OVERSIZED.search(str(getattr(error, "message", error)))
  if match is None:
    return None
  name, *sizes = match.groups()
  return OversizedImage(name, *(int(v) for v in sizes))
