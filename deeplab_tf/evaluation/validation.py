"""Validation during training: mIoU of a model on the first images of a split.

research/deeplab ran `eval.py` beside `train.py` on the latest checkpoints; `deeplab_train
--validation_split` instead calls `validation_fn` after every checkpoint
(`deeplab_tf.training.callbacks.Validation`).
"""

from __future__ import annotations

from typing import Callable, Dict

import keras

from deeplab_tf.data.pipeline import build_dataset
from deeplab_tf.evaluation.evaluate import evaluate_dataset
from deeplab_tf.evaluation.inference import model_mean_pixel
from deeplab_tf.model.deeplab import build_deeplab
from deeplab_tf.options import EvalOptions, ModelOptions


def validation_fn(model_options: ModelOptions, file_pattern: str, *, num_classes: int,
                  ignore_label: int, max_images: int = 50
                  ) -> Callable[[keras.Model], Dict[str, float]]:
  """`validate(model) -> {"miou", "pixel_accuracy"}` over the first `max_images` images (0 = all).

  Images are predicted one at a time at their own size. A trainer's model has the training crop as
  its static input shape, so validation runs a twin built for any input size (once), with the
  trained weights copied in.
  """
  twin = []

  def validate(model: keras.Model) -> Dict[str, float]:
    if not twin:
      twin.append(build_deeplab(model_options))
    twin[0].set_weights(model.get_weights())
    dataset = build_dataset(file_pattern, is_training=False, crop_size=None, batch_size=1,
                            ignore_label=ignore_label, mean_pixel=model_mean_pixel(twin[0]))
    if max_images > 0:
      dataset = dataset.take(max_images)
    metrics = evaluate_dataset(twin[0], dataset, EvalOptions(), num_classes=num_classes,
                               ignore_label=ignore_label)
    return {"miou": metrics.miou, "pixel_accuracy": metrics.pixel_accuracy}

  return validate
