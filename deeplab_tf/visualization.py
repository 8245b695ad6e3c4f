"""Pictures of segmentations: coloured overlays, label PNGs and image|label|prediction panels (Pillow).

research/deeplab `vis.py` and `utils/save_annotation.py` write each image as `{i:06d}_image.png` and its
prediction as `{i:06d}_prediction.png` coloured by the dataset colormap, and optionally the raw class
ids. We write label maps as palette PNGs: the pixel values are the class ids (what the original's
`add_colormap=False` kept) and the palette is the dataset colormap (what `add_colormap=True` showed),
so one file serves both; VOC's own ground truth is stored the same way. Every file is written through
`tf.io.gfile` (any filesystem: local, `gs://`, ...) to a temporary name in the destination folder and
renamed when complete.

Given `class_names`, overlays and panels get a legend strip below them (a colour swatch and the name of
each class present in the picture, drawn with Pillow). Evaluation's charts, a row-normalised confusion
matrix and a per-class IoU bar chart, are drawn with matplotlib (its Agg backend, imported only when a
chart is drawn) as figures (`plot_confusion_matrix`, `plot_class_iou`, for notebooks) or RGB arrays
(`confusion_matrix_image`, `class_iou_image`, for PNG files and TensorBoard).
"""

from __future__ import annotations

import os
import re
from typing import Optional, Sequence, Set, Union

import numpy as np
import tensorflow as tf
from PIL import Image, ImageDraw, ImageFont

from deeplab_tf.io_utils import atomic_open
from deeplab_tf.data.colormaps import get_colormap, label_to_color_image

# Gap in pixels between the panels of `side_by_side`, filled with white.
PANEL_GAP = 4
# Legend text size in pixels: at least this, larger on large pictures (their height / 40, at most 32).
LEGEND_FONT_SIZE = 12


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


def picture_stem(image_name: Union[str, bytes], index: int, used: Set[str]) -> str:
  """The file-name stem of an image's pictures: its name without folder and extension.

  research/deeplab's vis.py numbers its files (`000000_image.png`); ours are named after the image
  (the TFRecord's `image/filename`, e.g. `2007_000033`), with the index as a prefix only where it is
  needed: `{index:06d}_{stem}` when the stem is already in `used` (two images of one name), and
  `{index:06d}` when the image has no name.

  Args:
    image_name: the image's file name or path (str or UTF-8 bytes).
    index: the image's position in the split, from 0.
    used: the stems given so far in this run; the one returned is added to it.

  Returns:
    A stem of letters, digits, `_`, `-` and `.` only.
  """
  if isinstance(image_name, bytes):
    image_name = image_name.decode("utf-8", errors="replace")
  stem = os.path.splitext(str(image_name).replace("\\", "/").rsplit("/", 1)[-1])[0]
  stem = re.sub(r"[^\w.\-]+", "_", stem).strip(".")
  if not stem:
    stem = f"{index:06d}"
  elif stem in used:
    stem = f"{index:06d}_{stem}"
  used.add(stem)
  return stem


def _atomic_save(picture: Image.Image, path: str) -> str:
  """Saves a Pillow image as PNG through a temporary file in the same folder and a rename."""
  with atomic_open(path) as f:
    picture.save(f, format="PNG")
  return path


def overlay(image, label, colormap: str, alpha: float = 0.5,
            ignore_label: Optional[int] = None,
            class_names: Optional[Sequence[str]] = None) -> np.ndarray:
  """Blends an image with the colours of its label map: `(1 - alpha) * image + alpha * colour`.

  Args:
    image: `[height, width, 3]` RGB in [0, 255] (uint8 or float).
    label: integer `[height, width]` (or `[height, width, 1]`) class ids.
    colormap: colormap name (see `deeplab_tf.data.colormaps.get_colormap`).
    alpha: weight in [0, 1] of the label colours.
    ignore_label: pixels with this label show the image unchanged; None colours every pixel.
    class_names: name of each class id; when given, a legend of the classes present in `label`
      (other than `ignore_label`) is added below the picture (see `add_legend`).

  Returns:
    uint8 `[height, width, 3]`; with `class_names`, `[height + legend height, max(width, legend
    width), 3]`, the blended image at the top left.

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
  blended = np.clip(np.round(blended), 0, 255).astype(np.uint8)
  if class_names is None:
    return blended
  return add_legend(blended, np.unique(label[~keep]), colormap, class_names, ignore_label)


def side_by_side(image, label, prediction, colormap: str, gap: int = PANEL_GAP,
                 class_names: Optional[Sequence[str]] = None,
                 ignore_label: Optional[int] = None) -> np.ndarray:
  """One picture `image | label | prediction`, labels in colormap colours, separated by white gaps.

  Args:
    image: `[height, width, 3]` RGB in [0, 255].
    label: integer `[height, width]` ground truth (ignore pixels get the colormap's colour for them,
      e.g. VOC's cream boundary colour for 255), or None to leave that panel out.
    prediction: integer `[height, width]` predicted class ids.
    colormap: colormap name.
    gap: white pixels between panels.
    class_names: name of each class id; when given, a legend of the classes present in the label and
      prediction panels is added below (see `add_legend`).
    ignore_label: the legend calls this id "ignore" (its pixels keep their colormap colour).

  Returns:
    uint8 `[height, panels * width + (panels - 1) * gap, 3]`; with `class_names` the legend adds rows
    at the bottom (and widens the picture if it is wider).

  Raises:
    ValueError: mismatched shapes or labels outside the colormap.
  """
  image = _as_rgb_uint8(image)
  panels = [image]
  present = []
  for what, values in (("label", label), ("prediction", prediction)):
    if values is None:
      continue
    values = _as_label(values, what)
    if values.shape != image.shape[:2]:
      raise ValueError(f"{what} is {values.shape} but image {image.shape[:2]}; expected the same size.")
    panels.append(label_to_color_image(values, colormap))
    present.append(np.unique(values))
  white = np.full((image.shape[0], gap, 3), 255, np.uint8)
  pieces = []
  for i, panel in enumerate(panels):
    if i:
      pieces.append(white)
    pieces.append(panel)
  picture = np.concatenate(pieces, axis=1)
  if class_names is None:
    return picture
  return add_legend(picture, np.unique(np.concatenate(present)) if present else [], colormap, class_names,
                    ignore_label)


def _font(size: int = LEGEND_FONT_SIZE):
  try:
    return ImageFont.load_default(size)  # Pillow's bundled scalable font (Pillow >= 10.1 with FreeType)
  except (TypeError, OSError, ImportError):
    return ImageFont.load_default()  # its bitmap font otherwise


def class_display_name(class_id: int, class_names: Sequence[str], ignore_label: Optional[int] = None) -> str:
  """The name shown for `class_id`: `class_names[class_id]`, "ignore" for `ignore_label`, else the id."""
  class_id = int(class_id)
  if 0 <= class_id < len(class_names):
    return str(class_names[class_id])
  return "ignore" if ignore_label is not None and class_id == ignore_label else str(class_id)


def legend(class_ids, colormap: str, class_names: Sequence[str], width: int = 0,
           ignore_label: Optional[int] = None, font_size: int = LEGEND_FONT_SIZE) -> np.ndarray:
  """A white strip with one entry per class id: a swatch of its colormap colour and its name.

  Entries flow left to right, wrapping to a new row at `width` (a single entry wider than `width`
  widens the strip).

  Args:
    class_ids: the class ids to list, in order (e.g. `np.unique(label)`).
    colormap: colormap name (see `deeplab_tf.data.colormaps.get_colormap`).
    class_names: name of each class id (ids past them show as the id, `ignore_label` as "ignore").
    width: width of the strip in pixels; 0 puts every entry on one row.
    ignore_label: see `class_display_name`.
    font_size: text height in pixels; the swatches are as high, the rows 1.5 times.

  Returns:
    uint8 `[rows * row height + margins, max(width, widest row), 3]`; `[0, width, 3]` when
    `class_ids` is empty.

  Raises:
    ValueError: a class id outside the colormap.
  """
  ids = [int(c) for c in np.asarray(class_ids).reshape(-1)]
  if not ids:
    return np.full((0, width, 3), 255, np.uint8)
  colours = label_to_color_image(np.asarray([ids]), colormap)[0]
  font = _font(font_size)
  swatch, row_height = font_size, int(round(1.5 * font_size))
  margin, entry_gap = max(4, font_size // 3), font_size + 2
  probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
  entries = []
  for class_id, colour in zip(ids, colours):
    text = class_display_name(class_id, class_names, ignore_label)
    text_width = int(np.ceil(probe.textlength(text, font=font)))
    entries.append((text, tuple(int(v) for v in colour), swatch + 4 + text_width))
  rows, row, used = [], [], margin
  limit = width if width > 0 else None
  for entry in entries:
    if row and limit is not None and used + entry[2] + margin > limit:
      rows.append(row)
      row, used = [], margin
    row.append(entry)
    used += entry[2] + entry_gap
  rows.append(row)
  needed = max(margin + sum(e[2] for e in r) + entry_gap * (len(r) - 1) + margin for r in rows)
  strip = Image.new("RGB", (max(width, needed), len(rows) * row_height + 2 * margin), (255, 255, 255))
  draw = ImageDraw.Draw(strip)
  for r, entries_of_row in enumerate(rows):
    x, y = margin, margin + r * row_height + (row_height - swatch) // 2
    for text, colour, entry_width in entries_of_row:
      draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=colour, outline=(64, 64, 64))
      draw.text((x + swatch + 4, y + swatch // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
      x += entry_width + entry_gap
  return np.asarray(strip, dtype=np.uint8)


def add_legend(picture, class_ids, colormap: str, class_names: Sequence[str],
               ignore_label: Optional[int] = None) -> np.ndarray:
  """`picture` with `legend(class_ids, ...)` below it, both on white, as wide as the wider of the two;
  the text is `LEGEND_FONT_SIZE` pixels high, or the picture's height / 40 (at most 32) when larger.

  Args:
    picture: uint8 `[height, width, 3]`.
    class_ids: the ids to list (nothing is added when empty).
    colormap: colormap name.
    class_names: name of each class id.
    ignore_label: see `class_display_name`.

  Returns:
    uint8 `[height + legend height, max(width, legend width), 3]`.
  """
  picture = _as_rgb_uint8(picture)
  font_size = int(np.clip(picture.shape[0] // 40, LEGEND_FONT_SIZE, 32))
  strip = legend(class_ids, colormap, class_names, width=picture.shape[1], ignore_label=ignore_label,
                 font_size=font_size)
  width = max(picture.shape[1], strip.shape[1])
  out = np.full((picture.shape[0] + strip.shape[0], width, 3), 255, np.uint8)
  out[:picture.shape[0], :picture.shape[1]] = picture
  out[picture.shape[0]:, :strip.shape[1]] = strip
  return out


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


# Largest side of a chart in inches (at `_DPI` dots per inch): 150 classes stay about 2000 pixels.
_MAX_INCHES = 20.0
_DPI = 100


def _names(class_names: Optional[Sequence[str]], num_classes: int) -> list:
  names = [str(i) for i in range(num_classes)] if class_names is None else [str(n) for n in class_names]
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} classes.")
  return names


def _label_font_size(num_classes: int) -> float:
  return float(np.clip(300.0 / max(num_classes, 1), 3.0, 9.0))


def _new_figure(width_inches: float, height_inches: float):
  """A matplotlib Figure drawn by the Agg backend (no pyplot, no display, no global state)."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=import-outside-toplevel
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  figure = Figure(figsize=(width_inches, height_inches), dpi=_DPI)
  FigureCanvasAgg(figure)
  return figure


def figure_to_array(figure) -> np.ndarray:
  """Renders a matplotlib figure (Agg) to uint8 `[height, width, 3]` RGB."""
  figure.canvas.draw()
  return np.asarray(figure.canvas.buffer_rgba(), dtype=np.uint8)[..., :3].copy()


def normalize_confusion_matrix(confusion_matrix) -> np.ndarray:
  """Each row divided by its sum (the fraction of a true class's pixels given each prediction);
  rows of a class absent from the labels stay 0. float64 `[num_classes, num_classes]`."""
  cm = np.asarray(confusion_matrix, dtype=np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f"confusion_matrix must be square [num_classes, num_classes], got {cm.shape}.")
  totals = cm.sum(axis=1, keepdims=True)
  return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def plot_confusion_matrix(confusion_matrix, class_names: Optional[Sequence[str]] = None, title: str = ""):
  """The row-normalised confusion matrix as a heat map (matplotlib Figure, Agg backend).

  Rows are the ground truth, columns the prediction (`deeplab_tf.evaluation.metrics`' convention),
  both labelled with the class names; cell (i, j) is the fraction of class i's pixels predicted as j,
  coloured from white (0) to dark blue (1) with matplotlib's "Blues" colormap, and printed in percent
  when there are at most 30 classes. The axes are `figure.axes[0]`, in data coordinates cell (i, j)
  is centred at (x=j, y=i).

  Args:
    confusion_matrix: integer `[num_classes, num_classes]` pixel counts.
    class_names: `num_classes` names; None names them by id.
    title: the figure's title.

  Returns:
    A `matplotlib.figure.Figure`.

  Raises:
    ValueError: the matrix is not square, or the number of names differs.
  """
  fraction = normalize_confusion_matrix(confusion_matrix)
  num_classes = fraction.shape[0]
  names = _names(class_names, num_classes)
  side = float(np.clip(2.5 + 0.45 * num_classes, 4.0, _MAX_INCHES))
  figure = _new_figure(side + 1.0, side)
  axes = figure.add_subplot(1, 1, 1)
  shown = axes.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
  figure.colorbar(shown, ax=axes, fraction=0.046, pad=0.04)
  size = _label_font_size(num_classes)
  axes.set_xticks(range(num_classes), labels=names, rotation=90, fontsize=size)
  axes.set_yticks(range(num_classes), labels=names, fontsize=size)
  axes.set_xlabel("predicted class")
  axes.set_ylabel("true class")
  axes.set_title(title or "confusion matrix (each row sums to 100%)")
  if num_classes <= 30:
    for i in range(num_classes):
      for j in range(num_classes):
        if fraction[i, j] > 0:
          axes.text(j, i, f"{100 * fraction[i, j]:.0f}", ha="center", va="center", fontsize=size,
                    color="white" if fraction[i, j] > 0.5 else "black")
  figure.tight_layout()
  return figure


def plot_class_iou(per_class_iou: Sequence[Optional[float]], class_names: Optional[Sequence[str]] = None,
                   miou: Optional[float] = None, colormap: Optional[str] = None, title: str = ""):
  """Per-class IoU as horizontal bars, one row per class (matplotlib Figure, Agg backend).

  Args:
    per_class_iou: IoU in [0, 1] of each class, None (or NaN) for a class absent from labels and
      predictions (written "absent", no bar).
    class_names: one name per class; None names them by id.
    miou: drawn as a dashed vertical line, when given and finite.
    colormap: bars in the dataset's class colours (see `deeplab_tf.data.colormaps`); None: one blue.
    title: the figure's title.

  Returns:
    A `matplotlib.figure.Figure` whose `axes[0]` has x in percent [0, 100] and class i at y=i
    (the first class at the top).

  Raises:
    ValueError: the number of names differs from the number of IoUs.
  """
  values = [None if v is None or not np.isfinite(v) else float(v) for v in per_class_iou]
  num_classes = len(values)
  names = _names(class_names, num_classes)
  figure = _new_figure(7.0, float(np.clip(1.2 + 0.3 * num_classes, 2.5, _MAX_INCHES)))
  axes = figure.add_subplot(1, 1, 1)
  colours = (get_colormap(colormap)[:num_classes] / 255.0 if colormap else
             np.tile([[0.27, 0.51, 0.71]], (num_classes, 1)))
  heights = [100 * v if v is not None else 0.0 for v in values]
  axes.barh(range(num_classes), heights, color=colours, edgecolor="0.25", linewidth=0.5)
  size = _label_font_size(num_classes)
  for i, value in enumerate(values):
    axes.text((100 * value if value is not None else 0.0) + 1.0, i,
              "absent" if value is None else f"{100 * value:.1f}%", va="center", fontsize=size)
  if miou is not None and np.isfinite(miou):
    axes.axvline(100 * miou, color="0.2", linestyle="--", linewidth=1.0, label=f"mIoU {100 * miou:.1f}%")
    axes.legend(loc="lower right", fontsize=8)
  axes.set_yticks(range(num_classes), labels=names, fontsize=size)
  axes.set_ylim(num_classes - 0.5, -0.5)
  axes.set_xlim(0, 110)
  axes.set_xlabel("IoU (%)")
  axes.set_title(title or "per-class IoU")
  figure.tight_layout()
  return figure


def confusion_matrix_image(confusion_matrix, class_names: Optional[Sequence[str]] = None,
                           title: str = "") -> np.ndarray:
  """`plot_confusion_matrix` rendered to uint8 `[height, width, 3]` RGB."""
  return figure_to_array(plot_confusion_matrix(confusion_matrix, class_names, title))


def class_iou_image(per_class_iou: Sequence[Optional[float]], class_names: Optional[Sequence[str]] = None,
                    miou: Optional[float] = None, colormap: Optional[str] = None,
                    title: str = "") -> np.ndarray:
  """`plot_class_iou` rendered to uint8 `[height, width, 3]` RGB."""
  return figure_to_array(plot_class_iou(per_class_iou, class_names, miou, colormap, title))
