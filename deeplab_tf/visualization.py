"""Pictures of segmentations: coloured overlays, label PNGs and image|label|prediction panels (Pillow).

research/deeplab `vis.py` and `utils/save_annotation.py` write each image as `{i:06d}_image.png` and its
prediction as `{i:06d}_prediction.png` coloured by the dataset colormap, and optionally the raw class
ids. We write label maps as palette PNGs: the pixel values are the class ids (what the original's
`add_colormap=False` kept) and the palette is the dataset colormap (what `add_colormap=True` showed),
so one file serves both; VOC's own ground truth is stored the same way. Every file is written through
`tf.io.gfile` (any filesystem: local, `gs://`, ...) to a temporary name in the destination folder and
renamed when complete.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import tensorflow as tf
from PIL import Image

from deeplab_tf.io_utils import atomic_open
from deeplab_tf.data.colormaps import get_colormap, label_to_color_image

# Gap in pixels between the panels of `side_by_side`, filled with white.
PANEL_GAP = 4


def _as_rgb_uint8(image, what: str = "image") -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"{what} must be [height, width, 3] RGB, got shape {image.shape}.")
  if image.dtype != np.uint8:
    image = np.clip(np.round(image.astype(np.float64)), 0, 255).astype(np.uint8)
  return image


def _as_label(label, what: str = "label") -> np.ndarray:
  label = np.asarray(label)
  if label.ndim == 3 and label.shape[-1] == 1:
    label = label[..., 0]
  if label.ndim != 2 or not np.issubdtype(label.dtype, np.integer):
    raise ValueError(f"{what} must be an integer [height, width] map of class ids, got shape "
                     f"{label.shape} and dtype {label.dtype}.")
  return label


def _atomic_save(picture: Image.Image, path: str) -> str:
  """Saves a Pillow image as PNG through a temporary file in the same folder and a rename."""
  with atomic_open(path) as f:
    picture.save(f, format="PNG")
  return path


def overlay(image, label, colormap: str, alpha: float = 0.5,
            ignore_label: Optional[int] = None) -> np.ndarray:
  """Blends an image with the colours of its label map: `(1 - alpha) * image + alpha * colour`.

  Args:
    image: `[height, width, 3]` RGB in [0, 255] (uint8 or float).
    label: integer `[height, width]` (or `[height, width, 1]`) class ids.
    colormap: colormap name (see `deeplab_tf.data.colormaps.get_colormap`).
    alpha: weight in [0, 1] of the label colours.
    ignore_label: pixels with this label show the image unchanged; None colours every pixel.

  Returns:
    uint8 `[height, width, 3]`.

  Raises:
    ValueError: mismatched shapes, alpha outside [0, 1], or labels outside the colormap.
  """
  image = _as_rgb_uint8(image)
  label = _as_label(label)
  if image.shape[:2] != label.shape:
    raise ValueError(f"image is {image.shape[:2]} but label {label.shape}; expected the same size.")
  if not 0.0 <= alpha <= 1.0:
    raise ValueError(f"alpha={alpha}: expected a value in [0, 1].")
  keep = np.zeros(label.shape, bool) if ignore_label is None else label == ignore_label
  colours = label_to_color_image(np.where(keep, 0, label), colormap).astype(np.float64)
  blended = (1.0 - alpha) * image + alpha * colours
  blended = np.where(keep[..., None], image, blended)
  return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def side_by_side(image, label, prediction, colormap: str, gap: int = PANEL_GAP) -> np.ndarray:
  """One picture `image | label | prediction`, labels in colormap colours, separated by white gaps.

  Args:
    image: `[height, width, 3]` RGB in [0, 255].
    label: integer `[height, width]` ground truth (ignore pixels get the colormap's colour for them,
      e.g. VOC's cream boundary colour for 255), or None to leave that panel out.
    prediction: integer `[height, width]` predicted class ids.
    colormap: colormap name.
    gap: white pixels between panels.

  Returns:
    uint8 `[height, panels * width + (panels - 1) * gap, 3]`.

  Raises:
    ValueError: mismatched shapes or labels outside the colormap.
  """
  image = _as_rgb_uint8(image)
  panels = [image]
  for what, values in (("label", label), ("prediction", prediction)):
    if values is None:
      continue
    values = _as_label(values, what)
    if values.shape != image.shape[:2]:
      raise ValueError(f"{what} is {values.shape} but image {image.shape[:2]}; expected the same size.")
    panels.append(label_to_color_image(values, colormap))
  white = np.full((image.shape[0], gap, 3), 255, np.uint8)
  pieces = []
  for i, panel in enumerate(panels):
    if i:
      pieces.append(white)
    pieces.append(panel)
  return np.concatenate(pieces, axis=1)


def save_image_png(image, path: str) -> str:
  """Writes a `[height, width, 3]` RGB image (uint8, or float in [0, 255]) as an RGB PNG; returns path."""
  return _atomic_save(Image.fromarray(_as_rgb_uint8(image)), path)


def save_label_png(label, path: str, colormap: Optional[str] = "pascal") -> str:
  """Writes class ids as a PNG whose pixel values are the ids (research/deeplab `save_annotation`).

  Args:
    label: integer `[height, width]` class ids in [0, 255].
    path: destination `.png`.
    colormap: palette of the PNG (the file shows in colour, its values stay the ids); None writes an
      8-bit greyscale PNG instead.

  Returns:
    `path`.

  Raises:
    ValueError: a label outside [0, 255] (a PNG pixel is one byte), naming the file.
  """
  label = _as_label(label)
  if label.size and (label.min() < 0 or label.max() > 255):
    raise ValueError(f"{path}: label values must lie in [0, 255] for an 8-bit PNG, got "
                     f"[{label.min()}, {label.max()}].")
  picture = Image.fromarray(label.astype(np.uint8))  # mode 'L'
  if colormap is not None:
    picture.putpalette(get_colormap(colormap).reshape(-1).tolist())  # turns it into mode 'P'
  return _atomic_save(picture, path)


def read_label_png(path: str) -> np.ndarray:
  """Reads the class ids of a palette or greyscale label PNG as uint8 `[height, width]`.

  Raises:
    ValueError: if the PNG is RGB (its colours would have to be mapped back to ids), naming the file.
  """
  with tf.io.gfile.GFile(path, "rb") as f, Image.open(f) as picture:
    if picture.mode not in ("P", "L"):
      raise ValueError(f"{path}: label PNGs must be palette ('P') or greyscale ('L') images whose pixel "
                       f"values are class ids, got mode {picture.mode!r}.")
    return np.array(picture, dtype=np.uint8)
