"""One rule for 16-bit images through the converter, deeplab_predict and the SavedModel export.

The shipped DSB2018 nuclei image is a 16-bit grey TIFF whose values span 0..235: the converter stretches
it min-max to 0..255; before the shared rule, deeplab_predict clipped it (values above 255 white) and
the export divided by 257 (all black).
"""
import io
import os

import numpy as np
import tensorflow as tf
from PIL import Image

import reference_case as rc

from deeplab_tf import ModelOptions, build_deeplab, export, image_decoding
from deeplab_tf.bin import predict as predict_bin
from deeplab_tf.data import writer

NUCLEI = os.path.join(os.path.dirname(__file__), "..", "datasets", "samples", "nuclei_dsb2018", "img2d.tif")
OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=4, output_stride=16, depth_multiplier=0.5)


def test_16_bit_grey_is_one_image_through_converter_predict_and_export(tmp_path):
  grey16 = np.asarray(Image.open(NUCLEI))[150:215, 100:181]  # a 65x81 crop holding nuclei
  assert grey16.dtype == np.uint16 and grey16.max() < 256  # 16 bits that use 8: /257 would be black
  path = tmp_path / "nuclei16.png"
  path.write_bytes(tf.io.encode_png(grey16[..., None]).numpy())
  assert Image.open(path).mode == "I;16"
  # The rule, by hand: round((x - min) * 255 / (max - min)), grey replicated to RGB.
  lo, hi = float(grey16.min()), float(grey16.max())
  expected = np.repeat(np.round((grey16 - lo) * (255.0 / (hi - lo))).astype(np.uint8)[..., None], 3, axis=-1)
  assert expected.max() == 255 and expected.min() == 0

  converted = writer.read_image(str(path)).pixels                    # datasets/build_*_data.py
  predicted = predict_bin.read_image(str(path))                      # deeplab_predict
  decoded = tf.function(image_decoding.decode_image_bytes)(path.read_bytes()).numpy()  # inside the export
  for pixels in (converted, predicted, decoded):
    np.testing.assert_array_equal(pixels, expected)

  # The export end to end: the 16-bit PNG is served exactly as the 8-bit PNG of the converter's pixels.
  model = rc.assign_reference_weights(build_deeplab(OPTIONS))
  signature = tf.saved_model.load(export.export_saved_model(model, str(tmp_path / "export"), OPTIONS)
                                  ).signatures["probabilities"]
  eight_bit = io.BytesIO()
  Image.fromarray(converted).save(eight_bit, "PNG")
  served16 = signature(image_bytes=tf.constant([path.read_bytes()]))["probabilities"].numpy()
  served8 = signature(image_bytes=tf.constant([eight_bit.getvalue()]))["probabilities"].numpy()
  np.testing.assert_array_equal(served16, served8)  # same graph, same pixels: bit for bit
  black = io.BytesIO()
  Image.fromarray(np.zeros_like(converted)).save(black, "PNG")
  assert not np.allclose(signature(image_bytes=tf.constant([black.getvalue()]))["probabilities"].numpy(),
                         served16, atol=1e-4)  # the outputs do depend on the pixels


def test_rescale_rule_edge_cases():
  np.testing.assert_array_equal(image_decoding.rescale_to_uint8(np.full((2, 3), 700, np.uint16)).numpy(), 0)
  eight = np.arange(6, dtype=np.uint8).reshape(2, 3)
  np.testing.assert_array_equal(image_decoding.rescale_to_uint8(eight).numpy(), eight)  # uint8 unchanged
  # Ties round to even, as numpy's np.round in the converter did: 0.5 -> 0, 1.5 -> 2.
  values = np.array([0, 1, 3, 510], np.uint16)  # * 255 / 510 -> 0, 0.5, 1.5, 255
  np.testing.assert_array_equal(image_decoding.rescale_to_uint8(values).numpy(), [0, 0, 2, 255])
