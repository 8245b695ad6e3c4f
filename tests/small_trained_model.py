"""A small DeepLab trained for a few dozen steps on crops of the shipped VOC photos, for tests whose
figures need the margins of a trained network (a randomly initialised MobileNetV2 DeepLab's activations
shrink to ~1e-11 by the logits, so every pixel is a near-tie).

The task is one a network learns in a few steps: class = brightness band of the pixel's grey level
(below 110 / above for two classes; below 90 / 90-160 / above for three).
"""
import os

import keras
import numpy as np
from PIL import Image

from deeplab_tf import build_deeplab

VOC = os.path.join(os.path.dirname(__file__), "..", "datasets", "samples", "voc2012_sample", "JPEGImages")
BANDS = {2: (110,), 3: (90, 160)}


def voc_crops(count, size, num_classes, seed):
  """`count` random `size` crops of the VOC photos (uint8 [n, h, w, 3]) and their int32 band labels."""
  rng = np.random.RandomState(seed)
  photos = [np.asarray(Image.open(os.path.join(VOC, name)).convert("RGB")) for name in sorted(os.listdir(VOC))]
  images = []
  for i in range(count):
    photo = photos[i % len(photos)]
    top, left = rng.randint(0, photo.shape[0] - size[0]), rng.randint(0, photo.shape[1] - size[1])
    images.append(photo[top:top + size[0], left:left + size[1]])
  images = np.stack(images)
  return images, np.digitize(images.mean(-1), BANDS[num_classes]).astype(np.int32)


def train_small_model(options, size=(65, 65), count=64, epochs=12, seed=0):
  """`build_deeplab(options)` after `epochs` passes over `count` crops, batch 8 (96 steps by default).

  BatchNorm momentum is 0.5 so that the moving statistics follow these few steps (the original's
  decay would leave them at their initial values).

  Returns:
    (model, crop images, crop labels).
  """
  keras.utils.set_random_seed(seed)
  model = build_deeplab(options)
  for layer in model.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
      layer.momentum = 0.5
  images, labels = voc_crops(count, size, options.num_classes, seed)
  model.compile(optimizer=keras.optimizers.Adam(2e-3),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  model.fit(images.astype(np.float32), labels, batch_size=8, epochs=epochs, verbose=0)
  return model, images, labels
