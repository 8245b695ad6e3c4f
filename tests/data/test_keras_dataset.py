"""keras_dataset + SoftmaxCrossEntropyLoss: `model.fit` straight on the pipeline, the project's loss."""
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_tf.data.features import encode_example
from deeplab_tf.data.keras_dataset import keras_dataset
from deeplab_tf.training import losses
from deeplab_tf.data.writer import encode_png

PHOTO = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples", "voc2012_sample",
                     "JPEGImages", "2011_000006.jpg")
NUM_CLASSES = 3


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
  root = tmp_path_factory.mktemp("keras")
  photo = np.array(Image.open(PHOTO).convert("RGB"))
  rng = np.random.RandomState(0)
  with tf.io.TFRecordWriter(str(root / "train-00000-of-00001.tfrecord")) as writer:
    for i in range(4):
      image = photo[20 * i:20 * i + 30, 40:70]
      label = rng.randint(0, NUM_CLASSES, (30, 30)).astype(np.uint8)
      label[:4] = 255
      writer.write(encode_example(encode_png(image), encode_png(label), filename=f"{i}.jpg", height=30, width=30,
                                  image_format="png"))
  return str(root / "train-*.tfrecord")


def _tiny_model():
  images = keras.Input((33, 33, 3))
  x = keras.layers.Rescaling(1 / 127.5, offset=-1)(images)
  x = keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu")(x)
  return keras.Model(images, keras.layers.Conv2D(NUM_CLASSES, 1)(x))  # logits at half resolution


def test_fit_on_keras_dataset_reports_the_project_loss(shards):
  # Padded to 33x33 (padding labelled 255), in file order: the batches fit sees are known.
  dataset = keras_dataset(shards, is_training=False, crop_size=(33, 33), batch_size=2, ignore_label=255)
  image, label = next(iter(dataset))
  assert image.shape == (2, 33, 33, 3) and image.dtype == tf.float32 and label.shape == (2, 33, 33, 1)
  keras.utils.set_random_seed(0)
  model = _tiny_model()
  loss = losses.SoftmaxCrossEntropyLoss(num_classes=NUM_CLASSES, ignore_label=255)
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=loss)  # weights stay: same batches
  steps = []
  count = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: steps.append(batch))
  history = model.fit(dataset.repeat(), steps_per_epoch=2, epochs=1, verbose=0, shuffle=False,
                      callbacks=[count])
  assert steps == [0, 1]
  expected = np.mean([losses.softmax_cross_entropy_loss(model(x, training=True), y, num_classes=NUM_CLASSES,
                                                        ignore_label=255).numpy() for x, y in dataset])
  assert np.isfinite(history.history["loss"][0])
  # rtol: the same float32 sums, in a compiled tf.function (fit) and eagerly (here).
  np.testing.assert_allclose(history.history["loss"][0], expected, rtol=1e-5)
  # It learns with a learning rate: two more steps lower the loss on these batches.
  model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.5), loss=loss)
  model.fit(dataset.repeat(), steps_per_epoch=2, epochs=1, verbose=0, shuffle=False)
  assert model.evaluate(dataset, verbose=0) < expected
  restored = losses.SoftmaxCrossEntropyLoss.from_config(loss.get_config())
  assert restored.num_classes == NUM_CLASSES and restored.ignore_label == 255


def test_sample_weight_form_zeroes_the_ignored_pixels(shards):
  dataset = keras_dataset(shards, is_training=False, crop_size=(33, 33), batch_size=2, ignore_label=255,
                          sample_weight=True)
  _, label, weight = next(iter(dataset))
  plain = next(iter(keras_dataset(shards, is_training=False, crop_size=(33, 33), batch_size=2,
                                  ignore_label=255)))[1]
  ignored = plain.numpy()[..., 0] == 255
  assert weight.shape == (2, 33, 33) and ignored.any()
  np.testing.assert_array_equal(weight.numpy(), (~ignored).astype(np.float32))
  np.testing.assert_array_equal(label.numpy()[..., 0], np.where(ignored, 0, plain.numpy()[..., 0]))
