"""Round trip of the TFRecord format on the real VOC samples: what is encoded is what is parsed."""
import glob
import os

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplab_tf.data import features, writer

VOC = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples", "voc2012_sample")


def test_round_trip_on_real_voc_samples_is_byte_exact():
  images = sorted(glob.glob(os.path.join(VOC, "JPEGImages", "*.jpg")))
  assert len(images) == 3
  for path in images:
    name = os.path.splitext(os.path.basename(path))[0]
    label_path = os.path.join(VOC, "SegmentationClass", name + ".png")
    image = writer.read_image(path)
    label = writer.read_label(label_path)
    example = writer.make_example(name, image, label, num_classes=21, ignore_label=255, image_path=path,
                                  label_path=label_path)
    with open(path, "rb") as f:
      file_bytes = f.read()
    parsed_proto = tf.train.Example.FromString(example.serialized).features.feature
    assert parsed_proto[features.IMAGE_ENCODED].bytes_list.value[0] == file_bytes  # JPEG kept as is
    parsed = features.parse_example(tf.constant(example.serialized))
    assert parsed["image_name"].numpy().decode() == name
    assert (parsed["height"].numpy(), parsed["width"].numpy()) == label.shape
    np.testing.assert_array_equal(parsed["image"].numpy(), tf.io.decode_jpeg(file_bytes).numpy())
    # The label is the palette PNG's indices (class ids), not its colours.
    palette_indices = np.asarray(Image.open(label_path))
    np.testing.assert_array_equal(parsed["label"].numpy()[..., 0], palette_indices)
    assert parsed["label"].dtype == tf.int32
    assert set(np.unique(palette_indices)) <= set(range(21)) | {255}
    np.testing.assert_array_equal(np.nonzero(example.class_pixel_counts)[0], np.unique(palette_indices))


def test_png_image_and_original_keys():
  image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
  label = np.array([[0, 1, 255], [2, 0, 1]], np.uint8)
  serialized = features.encode_example(writer.encode_png(image), writer.encode_png(label), filename="x",
                                       height=2, width=3, image_format="png")
  keys = set(tf.train.Example.FromString(serialized).features.feature)
  assert keys == {"image/encoded", "image/filename", "image/format", "image/height", "image/width",
                  "image/channels", "image/segmentation/class/encoded", "image/segmentation/class/format"}
  parsed = features.parse_example(tf.constant(serialized))
  np.testing.assert_array_equal(parsed["image"].numpy(), image)
  np.testing.assert_array_equal(parsed["label"].numpy()[..., 0], label)


def test_encode_example_rejects_unknown_format():
  try:
    features.encode_example(b"", b"", filename="a", height=1, width=1, image_format="gif")
  except ValueError as e:
    assert "gif" in str(e) and "'a'" in str(e)
  else:
    raise AssertionError("no error")
