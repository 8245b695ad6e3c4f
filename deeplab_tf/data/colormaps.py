"""Dataset colormaps: class id -> RGB colour, as research/deeplab `utils/get_dataset_colormap.py`.

Every colormap is a uint8 `[256, 3]` table indexed by class id, so that any uint8 label map (including
`ignore_label` 255) can be coloured with one lookup and a palette PNG can carry it. Only the first
`COLORMAP_ENTRIES[name]` rows are defined by the dataset; `label_to_color_image` rejects labels past them.

- 'pascal': the PASCAL VOC bit-interleaving colormap (class 1 = (128, 0, 0), 15 = (192, 128, 128),
  255 = (224, 224, 192), VOC's boundary colour). The original builds 512 entries; 256 cover every uint8 id.
- 'cityscapes': the 19 train-id colours of the Cityscapes benchmark; ids 19..255 (255 = ignore) are black.
- 'ade20k': the 151 colours of the ADE20K (SceneParsing) benchmark, id 0 ("other", ignored) black.
- 'custom': the PASCAL colours, the generic choice for datasets described by a JSON descriptor.

Dataset names (`pascal_voc_seg`) are accepted as aliases of their colormap names.
"""

from __future__ import annotations

from typing import Dict

import numpy as np

PASCAL = "pascal"
CITYSCAPES = "cityscapes"
ADE20K = "ade20k"
CUSTOM = "custom"

# Rows of each colormap that the dataset defines (research/deeplab `_DATASET_MAX_ENTRIES`, capped at 256).
COLORMAP_ENTRIES: Dict[str, int] = {PASCAL: 256, CITYSCAPES: 256, ADE20K: 151, CUSTOM: 256}

_ALIASES = {"pascal_voc_seg": PASCAL, "pascal_voc": PASCAL, "voc": PASCAL}

# The 19 Cityscapes train ids, in order (road, sidewalk, building, wall, fence, pole, traffic light,
# traffic sign, vegetation, terrain, sky, person, rider, car, truck, bus, train, motorcycle, bicycle).
_CITYSCAPES_COLORS = (
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32))

# ADE20K SceneParsing benchmark colours for ids 0..150 (research/deeplab
# `create_ade20k_label_colormap`), three numbers per class.
_ADE20K_COLORS = (
    0, 0, 0, 120, 120, 120, 180, 120, 120, 6, 230, 230, 80, 50, 50,
    4, 200, 3, 120, 120, 80, 140, 140, 140, 204, 5, 255, 230, 230, 230,
    4, 250, 7, 224, 5, 255, 235, 255, 7, 150, 5, 61, 120, 120, 70,
    8, 255, 51, 255, 6, 82, 143, 255, 140, 204, 255, 4, 255, 51, 7,
    204, 70, 3, 0, 102, 200, 61, 230, 250, 255, 6, 51, 11, 102, 255,
    255, 7, 71, 255, 9, 224, 9, 7, 230, 220, 220, 220, 255, 9, 92,
    112, 9, 255, 8, 255, 214, 7, 255, 224, 255, 184, 6, 10, 255, 71,
    255, 41, 10, 7, 255, 255, 224, 255, 8, 102, 8, 255, 255, 61, 6,
    255, 194, 7, 255, 122, 8, 0, 255, 20, 255, 8, 41, 255, 5, 153,
    6, 51, 255, 235, 12, 255, 160, 150, 20, 0, 163, 255, 140, 140, 140,
    250, 10, 15, 20, 255, 0, 31, 255, 0, 255, 31, 0, 255, 224, 0,
    153, 255, 0, 0, 0, 255, 255, 71, 0, 0, 235, 255, 0, 173, 255,
    31, 0, 255, 11, 200, 200, 255, 82, 0, 0, 255, 245, 0, 61, 255,
    0, 255, 112, 0, 255, 133, 255, 0, 0, 255, 163, 0, 255, 102, 0,
    194, 255, 0, 0, 143, 255, 51, 255, 0, 0, 82, 255, 0, 255, 41,
    0, 255, 173, 10, 0, 255, 173, 255, 0, 0, 255, 153, 255, 92, 0,
    255, 0, 255, 255, 0, 245, 255, 0, 102, 255, 173, 0, 255, 0, 20,
    255, 184, 184, 0, 31, 255, 0, 255, 61, 0, 71, 255, 255, 0, 204,
    0, 255, 194, 0, 255, 82, 0, 10, 255, 0, 112, 255, 51, 0, 255,
    0, 194, 255, 0, 122, 255, 0, 255, 163, 255, 153, 0, 0, 255, 10,
    255, 112, 0, 143, 255, 0, 82, 0, 255, 163, 255, 0, 255, 235, 0,
    8, 184, 170, 133, 0, 255, 0, 255, 92, 184, 0, 255, 255, 0, 31,
    0, 184, 255, 0, 214, 255, 255, 0, 112, 92, 255, 0, 0, 224, 255,
    112, 224, 255, 70, 184, 160, 163, 0, 255, 153, 0, 255, 71, 255, 0,
    255, 0, 163, 255, 204, 0, 255, 0, 143, 0, 255, 235, 133, 255, 0,
    255, 0, 235, 245, 0, 255, 255, 0, 122, 255, 245, 0, 10, 190, 212,
    214, 255, 0, 0, 204, 255, 20, 0, 255, 255, 255, 0, 0, 153, 255,
    0, 41, 255, 0, 255, 204, 41, 0, 255, 41, 255, 0, 173, 0, 255,
    0, 245, 255, 71, 0, 255, 122, 0, 255, 0, 255, 184, 0, 92, 255,
    184, 255, 0, 0, 133, 255, 255, 214, 0, 25, 194, 194, 102, 255, 0,
    92, 0, 255)


def _pascal_colormap() -> np.ndarray:
  """VOC's colormap: bit b of the class id's r/g/b bit triplets goes to bit 7-b of the channel.

  Class id bits (0, 1, 2) set the top bits of (red, green, blue), bits (3, 4, 5) the next ones, and so
  on (research/deeplab `create_pascal_label_colormap`; the VOC devkit's `VOClabelcolormap.m`).
  """
  colormap = np.zeros((256, 3), dtype=np.int64)
  ids = np.arange(256, dtype=np.int64)
  for shift in range(7, -1, -1):
    for channel in range(3):
      colormap[:, channel] |= ((ids >> channel) & 1) << shift
    ids >>= 3
  return colormap.astype(np.uint8)


def _canonical_name(name: str) -> str:
  key = _ALIASES.get(name, name)
  if key not in COLORMAP_ENTRIES:
    raise ValueError(f"colormap {name!r} is not known; expected one of {sorted(COLORMAP_ENTRIES)} "
                     f"or a dataset name {sorted(_ALIASES)}.")
  return key


def get_colormap(name: str) -> np.ndarray:
  """Returns the colormap `name` as a uint8 `[256, 3]` table of RGB colours indexed by class id.

  Args:
    name: 'pascal', 'cityscapes', 'ade20k', 'custom' (PASCAL colours), or a dataset alias such as
      'pascal_voc_seg'.

  Returns:
    A fresh (writable) uint8 array `[256, 3]`; rows past `COLORMAP_ENTRIES[name]` are black.

  Raises:
    ValueError: if `name` is not a known colormap.
  """
  key = _canonical_name(name)
  if key in (PASCAL, CUSTOM):
    return _pascal_colormap()
  colormap = np.zeros((256, 3), dtype=np.uint8)
  if key == CITYSCAPES:
    colormap[:len(_CITYSCAPES_COLORS)] = _CITYSCAPES_COLORS
  else:
    colormap[:COLORMAP_ENTRIES[ADE20K]] = np.asarray(_ADE20K_COLORS, dtype=np.uint8).reshape(-1, 3)
  return colormap


def num_entries(name: str) -> int:
  """Number of class ids the colormap `name` defines (labels must lie in [0, num_entries))."""
  return COLORMAP_ENTRIES[_canonical_name(name)]


def label_to_color_image(label, name: str) -> np.ndarray:
  """Colours a label map with the colormap `name` (research/deeplab `label_to_color_image`).

  Args:
    label: integer array `[height, width]` of class ids (int32, uint8, ...).
    name: colormap name, see `get_colormap`.

  Returns:
    uint8 `[height, width, 3]` RGB image.

  Raises:
    ValueError: if `label` is not 2-D or not integer, if a label is negative or not below the number of
      colours the colormap defines (`num_entries(name)`), or if `name` is unknown.
  """
  label = np.asarray(label)
  if label.ndim != 2:
    raise ValueError(f"label_to_color_image expects a 2-D [height, width] label, got shape {label.shape}.")
  if not np.issubdtype(label.dtype, np.integer):
    raise ValueError(f"label_to_color_image expects integer class ids, got dtype {label.dtype}.")
  entries = num_entries(name)
  if label.size:
    low, high = int(label.min()), int(label.max())
    if low < 0 or high >= entries:
      raise ValueError(f"label values must lie in [0, {entries}) for colormap {name!r}; got values in "
                       f"[{low}, {high}].")
  return get_colormap(name)[label]
