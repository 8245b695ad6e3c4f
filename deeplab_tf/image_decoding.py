"""How an image file becomes the uint8 RGB image the network sees: one rule for every path.

Three paths decode images: the TFRecord converters (`deeplab_tf.data.writer.read_image`), `deeplab_predict`
(`read_rgb`) and the SavedModel export's `serving_default` (`decode_image_bytes`, inside the graph).
They agree on every pixel:

- 8-bit images (JPEG, 8-bit PNG, GIF, BMP, palette, grey, RGBA, ...): their RGB pixels; grey is
  replicated to RGB, an alpha channel dropped, a palette expanded.
- Grey images of more than 8 bits per sample (16-bit PNG or TIFF, Pillow modes `I;16`, `I`, `F`):
  `rescale_to_uint8`, a linear min-max stretch over the whole image, then replicated to RGB. This is
  the converter's rule (16-bit microscopy, 11-bit satellite imagery), so a model sees at prediction
  time what it was trained on. research/deeplab handles 8-bit photographs only.
- 16-bit RGB PNGs: their 8 high bits (what Pillow and `tf.io.decode_png` both read).

EXIF orientation (a camera's "rotate 90 degrees" tag) is applied by `read_rgb` (`deeplab_predict`), as
photo viewers do, through Pillow's `ImageOps.exif_transpose`. The converters store the pixels as
encoded (as the original's `build_data.py`, so that images and their label masks stay aligned), and the
SavedModel's `tf.io.decode_image` does not read EXIF: a serving client sends upright pixels.
"""

from __future__ import annotations

import io

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps

# Pillow modes of 8 bits per sample, converted to RGB by Pillow itself.
EIGHT_BIT_MODES = ("1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "RGBX", "PA")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rescale_to_uint8(image):
  """Maps an image of more than 8 bits per sample to uint8 by a linear min-max stretch (THE rule).

  `round((x - min) * 255 / (max - min))` with min and max over the whole image (all channels; ties of
  the rounding go to even, as `np.round`), computed in float64; a constant image maps to 0; uint8 is
  returned unchanged. Used by the converters (over each source image, before tiling, so that all tiles
  of one image share one mapping), by `deeplab_predict` and inside the SavedModel export.

  Args:
    image: `[height, width]` or `[height, width, channels]` tensor or numpy array of any integer or
      float dtype.

  Returns:
    uint8 tensor of the same shape (`.numpy()` for numpy callers).
  """
  image = tf.convert_to_tensor(image)
  if image.dtype == tf.uint8:
    return image
  x = tf.cast(image, tf.float64)
  lo, hi = tf.reduce_min(x), tf.reduce_max(x)
  stretched = tf.round((x - lo) * (255.0 / tf.where(hi > lo, hi - lo, 1.0)))
  return tf.cast(tf.where(hi > lo, stretched, tf.zeros_like(x)), tf.uint8)


def pillow_to_rgb(picture: Image.Image) -> np.ndarray:
  """uint8 `[height, width, 3]` RGB of a decoded Pillow image, by the module's rule.

  Raises:
    ValueError: the image has neither 1 nor 3 channels after dropping alpha (naming Pillow's mode).
  """
  if picture.mode in EIGHT_BIT_MODES:
    return np.asarray(picture.convert("RGB"))
  array = np.asarray(picture)
  if array.ndim == 3:
    array = array[..., :3]
  array = rescale_to_uint8(array).numpy()
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.shape[-1] != 3:
    raise ValueError(f"{array.shape[-1]} channels (Pillow mode {picture.mode}); expected grey or RGB.")
  return np.ascontiguousarray(array)


def read_rgb(data: bytes) -> np.ndarray:
  """uint8 `[height, width, 3]` RGB of an image file's bytes (any format Pillow reads), upright.

  The EXIF orientation tag, when present, is applied (`ImageOps.exif_transpose`): a portrait photo
  stored sideways with orientation 6 or 8 comes out portrait.

  Raises:
    OSError, ValueError: the bytes are not an image Pillow can decode.
  """
  with Image.open(io.BytesIO(data)) as picture:
    picture.load()
    return pillow_to_rgb(ImageOps.exif_transpose(picture))


def decode_image_bytes(encoded):
  """uint8 `[height, width, 3]` of a JPEG, PNG, GIF or BMP file's bytes, inside a TF graph.

  `tf.io.decode_image` to 3 channels, except grey PNGs of 16 bits per sample (IHDR bit depth 16,
  colour type 0), which are decoded to uint16 and mapped by `rescale_to_uint8`, as the converters and
  `deeplab_predict` do.

  Args:
    encoded: scalar string tensor, the file's bytes (already checked to be one of the four formats).

  Returns:
    uint8 tensor `[height, width, 3]`.
  """
  head = tf.strings.substr(encoded + b"\0" * 26, 0, 26)
  is_png = tf.equal(tf.strings.substr(head, 0, len(_PNG_MAGIC)), _PNG_MAGIC)
  depth_and_type = tf.io.decode_raw(tf.strings.substr(head, 24, 2), tf.uint8)
  grey16 = is_png & tf.equal(depth_and_type[0], 16) & tf.equal(depth_and_type[1], 0)

  def sixteen_bit():
    grey = tf.io.decode_png(encoded, channels=1, dtype=tf.uint16)
    return tf.tile(rescale_to_uint8(grey), [1, 1, 3])

  def eight_bit():
    return tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)

  image = tf.cond(grey16, sixteen_bit, eight_bit)
  image.set_shape([None, None, 3])
  return image
