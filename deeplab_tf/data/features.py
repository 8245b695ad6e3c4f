"""The TFRecord format of a segmentation example: research/deeplab's feature keys, encoding and parsing.

One `tf.train.Example` per image, with exactly the keys the original writes (`datasets/build_data.py`,
`image_seg_to_tfexample`) and reads (`datasets/data_generator.py`, `_parse_function`), so that shards
made by the original's converters and ours are interchangeable:

| key | value |
|---|---|
| `image/encoded` | JPEG or PNG bytes of the RGB image |
| `image/filename` | the example's name (file stem, or stem plus crop position for tiles) |
| `image/format` | `jpeg` or `png` |
| `image/height`, `image/width` | image size in pixels |
| `image/channels` | 3 |
| `image/segmentation/class/encoded` | PNG bytes of the single-channel label map (pixel = class id) |
| `image/segmentation/class/format` | `png` |
"""

from __future__ import annotations

from typing import Dict, Optional, Union

import tensorflow as tf

IMAGE_ENCODED = "image/encoded"
IMAGE_FILENAME = "image/filename"
IMAGE_FORMAT = "image/format"
IMAGE_HEIGHT = "image/height"
IMAGE_WIDTH = "image/width"
IMAGE_CHANNELS = "image/channels"
LABEL_ENCODED = "image/segmentation/class/encoded"
LABEL_FORMAT = "image/segmentation/class/format"

IMAGE_FORMATS = ("jpeg", "png")
LABEL_FORMATS = ("png",)

_FEATURE_SPEC = {
    IMAGE_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
    IMAGE_FILENAME: tf.io.FixedLenFeature((), tf.string, default_value=""),
    IMAGE_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="jpeg"),
    IMAGE_HEIGHT: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    IMAGE_WIDTH: tf.io.FixedLenFeature((), tf.int64, default_value=0),
    IMAGE_CHANNELS: tf.io.FixedLenFeature((), tf.int64, default_value=3),
    LABEL_ENCODED: tf.io.FixedLenFeature((), tf.string, default_value=""),
    LABEL_FORMAT: tf.io.FixedLenFeature((), tf.string, default_value="png"),
}


def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def encode_example(image_encoded: bytes, label_encoded: bytes, *, filename: str, height: int, width: int,
                   image_format: str = "jpeg", label_format: str = "png", channels: int = 3) -> bytes:
  """Serialises one image and its label map as research/deeplab's `tf.train.Example`.

  The bytes are stored as given: callers (see `deeplab_tf.data.writer`) validate and encode them.

  Args:
    image_encoded: JPEG or PNG bytes of an RGB image of `height` x `width` pixels.
    label_encoded: PNG bytes of a single-channel uint8 label map of the same size (pixel = class id).
    filename: the example's name, stored as UTF-8 in `image/filename`.
    height: image height in pixels.
    width: image width in pixels.
    image_format: `jpeg` or `png`, as the original writes it.
    label_format: `png` (the only label format the original reads).
    channels: image channels, 3 (the original always stores RGB).

  Returns:
    The serialised `tf.train.Example`.

  Raises:
    ValueError: if a format is not one of `IMAGE_FORMATS` / `LABEL_FORMATS` or a size is not positive.
  """
  if image_format not in IMAGE_FORMATS:
    raise ValueError(f"image_format {image_format!r} of example {filename!r} is not one of {IMAGE_FORMATS}.")
  if label_format not in LABEL_FORMATS:
    raise ValueError(f"label_format {label_format!r} of example {filename!r} is not one of {LABEL_FORMATS}.")
  if height <= 0 or width <= 0:
    raise ValueError(f"Example {filename!r} has size {height}x{width}; both must be positive.")
  example = tf.train.Example(features=tf.train.Features(feature={
      IMAGE_ENCODED: _bytes(image_encoded),
      IMAGE_FILENAME: _bytes(filename.encode("utf-8")),
      IMAGE_FORMAT: _bytes(image_format.encode("ascii")),
      IMAGE_HEIGHT: _int64(height),
      IMAGE_WIDTH: _int64(width),
      IMAGE_CHANNELS: _int64(channels),
      LABEL_ENCODED: _bytes(label_encoded),
      LABEL_FORMAT: _bytes(label_format.encode("ascii")),
  }))
  return example.SerializeToString()


REQUIRED_KEYS = (IMAGE_ENCODED, LABEL_ENCODED)

# The first words of the message of a record that lacks a required key; `deeplab_tf.bin.train` finds
# them in the error to print the message's one line.
MISSING_KEYS_MESSAGE = "Record lacks feature"


def parse_example(serialized: tf.Tensor, source: Union[str, tf.Tensor, None] = None
                  ) -> Dict[str, tf.Tensor]:
  """Parses and decodes one serialised example (research/deeplab `data_generator._parse_function`).

  Works eagerly and inside `tf.data.Dataset.map`. A record without `image/encoded` or
  `image/segmentation/class/encoded` (e.g. a shard written by another tool, with other feature keys)
  stops with a message naming `source` and the keys, instead of TensorFlow's "Input is empty
  [[DecodePng]]".

  Args:
    serialized: scalar string tensor, one record of a shard.
    source: the shard the record comes from (string or scalar string tensor), named in errors.

  Returns:
    A dict with "image" uint8 [height, width, 3] RGB, "label" int32 [height, width, 1] (class ids as
    stored), "image_name" string scalar, "height" and "width" int32 scalars (from the stored features).

  Raises:
    tf.errors.InvalidArgumentError (when run): if a required key is missing or empty (the message
    starts with `MISSING_KEYS_MESSAGE`), if the image or label bytes cannot be decoded, or the
    decoded sizes disagree with `image/height` / `image/width`.
  """
  features = tf.io.parse_single_example(serialized, _FEATURE_SPEC)
  present = [tf.strings.length(features[key]) > 0 for key in REQUIRED_KEYS]
  missing = tf.strings.reduce_join(
      tf.boolean_mask(tf.constant(REQUIRED_KEYS), tf.logical_not(tf.stack(present))), separator=", ")
  keys_check = tf.debugging.Assert(
      tf.reduce_all(tf.stack(present)),
      [f"{MISSING_KEYS_MESSAGE}(s)", missing, "in shard", "<unknown>" if source is None else source,
       f"(research/deeplab's TFRecord keys {', '.join(REQUIRED_KEYS)} are required): re-run the "
       "datasets/ converter that makes this split."], summarize=4)
  with tf.control_dependencies([keys_check]):
    features = {k: tf.identity(v) for k, v in features.items()}
  image = tf.io.decode_image(features[IMAGE_ENCODED], channels=3, dtype=tf.uint8, expand_animations=False)
  label = tf.io.decode_png(features[LABEL_ENCODED], channels=1, dtype=tf.uint8)
  height = tf.cast(features[IMAGE_HEIGHT], tf.int32)
  width = tf.cast(features[IMAGE_WIDTH], tf.int32)
  name = features[IMAGE_FILENAME]
  checks = [
      tf.debugging.assert_equal(tf.shape(image)[:2], tf.stack([height, width]), message=(
          "Decoded image size differs from image/height, image/width; re-convert the dataset.")),
      tf.debugging.assert_equal(tf.shape(label)[:2], tf.shape(image)[:2], message=(
          "Label and image sizes differ in a record; re-convert the dataset.")),
  ]
  with tf.control_dependencies(checks):
    image = tf.identity(image)
  image.set_shape([None, None, 3])
  label = tf.cast(label, tf.int32)
  label.set_shape([None, None, 1])
  return {"image": image, "label": label, "image_name": name, "height": height, "width": width}
