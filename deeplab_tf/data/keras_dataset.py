"""The input pipeline in the form Keras' `Model.fit` / `evaluate` take: `(image, label)` batches.

`deeplab_tf.data.pipeline.build_dataset` yields dicts (image, label, image name, size), what the
project's own training and evaluation loops read; `keras_dataset` gives the same batches as tuples, so
that a `build_deeplab` model trains with `model.compile(loss=deeplab_tf.training.losses.
SoftmaxCrossEntropyLoss(...))` and `model.fit(dataset)` directly:

  train = keras_dataset("/data/tfrecord/train-*.tfrecord", is_training=True, crop_size=(513, 513),
                        batch_size=8, ignore_label=255)
  model.compile(optimizer=keras.optimizers.SGD(0.007, momentum=0.9),
                loss=SoftmaxCrossEntropyLoss(num_classes=21, ignore_label=255))
  model.fit(train, steps_per_epoch=30000, epochs=1)
"""

from __future__ import annotations

from typing import Union

import tensorflow as tf

from deeplab_tf.data import pipeline


def as_keras_batches(dataset: tf.data.Dataset, ignore_label: int, sample_weight: bool = False) -> tf.data.Dataset:
  """Maps `build_dataset`'s dict batches to Keras' tuples.

  Args:
    dataset: batches of dicts with "image" float32 `[b, h, w, 3]` and "label" int32 `[b, h, w, 1]`.
    ignore_label: the label of pixels left out of the loss.
    sample_weight: False: `(image, label)`, the label keeping `ignore_label` (for
      `SoftmaxCrossEntropyLoss`, which leaves those pixels out itself). True: `(image, label,
      weight)` with the ignored pixels' label set to 0 and float32 weight `[b, h, w]` 1 for the other
      pixels and 0 for them, for Keras' own losses (e.g. `SparseCategoricalCrossentropy(
      from_logits=True)`; note that Keras' default reduction then divides by every pixel, ignored ones
      included, where research/deeplab's loss divides by the counted pixels only).

  Returns:
    The mapped dataset.
  """
  def pairs(batch):
    if not sample_weight:
      return batch["image"], batch["label"]
    keep = tf.not_equal(batch["label"], ignore_label)
    return (batch["image"], tf.where(keep, batch["label"], tf.zeros_like(batch["label"])),
            tf.cast(keep[..., 0], tf.float32))
  return dataset.map(pairs, num_parallel_calls=tf.data.AUTOTUNE)


def keras_dataset(file_pattern: Union[str, None], *, ignore_label: int, sample_weight: bool = False,
                  **kwargs) -> tf.data.Dataset:
  """`build_dataset(file_pattern, ignore_label=ignore_label, **kwargs)` as Keras batches.

  Args:
    file_pattern: glob(s) of `{split}-*.tfrecord` shards (None with `tfds_name`).
    ignore_label: label of padded and "don't care" pixels.
    sample_weight: see `as_keras_batches`.
    **kwargs: the other arguments of `deeplab_tf.data.pipeline.build_dataset` (`is_training`,
      `crop_size`, `batch_size` are required; `mean_pixel` should be the model's,
      `deeplab_tf.evaluation.inference.model_mean_pixel(model)`, so that padding becomes 0).

  Returns:
    A dataset of `(image float32 [b, h, w, 3] in [0, 255], label int32 [b, h, w, 1])`, or with
    `sample_weight` `(image, label, weight float32 [b, h, w])`; repeated and shuffled when training,
    as `build_dataset`.

  Raises:
    ValueError: as `build_dataset`.
  """
  dataset = pipeline.build_dataset(file_pattern, ignore_label=ignore_label, **kwargs)
  return as_keras_batches(dataset, ignore_label, sample_weight).prefetch(tf.data.AUTOTUNE)
