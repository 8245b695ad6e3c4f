"""What the model and evaluation need to know about a dataset: classes, ignore label, splits, colormap.

The three built-in descriptors are research/deeplab's (`datasets/data_generator.py`,
`_PASCAL_VOC_SEG_INFORMATION`, `_CITYSCAPES_INFORMATION`, `_ADE20K_INFORMATION`); any other dataset is
described by a small JSON file:

    {"name": "roads", "num_classes": 2, "ignore_label": 255,
     "splits_to_sizes": {"train": 36, "val": 9},
     "class_names": ["background", "road"], "colormap": "pascal"}

(`datasets/build_folder_data.py` writes one next to the shards it makes.)
"""

from __future__ import annotations

import dataclasses
import json
from typing import Dict, Tuple

import numpy as np
import tensorflow as tf

from deeplab_tf.data import colormaps
from deeplab_tf.io_utils import atomic_write_text, read_text


@dataclasses.dataclass(frozen=True)
class DatasetDescriptor:
  """A segmentation dataset's description.

  Attributes:
    name: dataset name (`pascal_voc_seg`, `cityscapes`, `ade20k`, or a custom one).
    num_classes: number of classes the model predicts; label ids are [0, num_classes).
    ignore_label: the label value that marks "don't care" pixels (weight 0 in the loss and the metric).
    splits_to_sizes: {split name: number of images}.
    class_names: `num_classes` names, index = class id.
    colormap: name of a `deeplab_tf.data.colormaps` colormap (`pascal`, `cityscapes`, `ade20k`, `custom`).
  """

  name: str
  num_classes: int
  ignore_label: int
  splits_to_sizes: Dict[str, int]
  class_names: Tuple[str, ...]
  colormap: str

  def to_json(self) -> str:
    values = dataclasses.asdict(self)
    values["class_names"] = list(self.class_names)
    return json.dumps(values, indent=2, sort_keys=True)


PASCAL_VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor")

# Cityscapes' 19 evaluated classes in train-id order, as the benchmark's own label table
# (cityscapesscripts/helpers/labels.py; tests/data/test_descriptors_cityscapes.py compares them, so the
# core install needs no cityscapesscripts).
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")

# Cityscapes' label id of each train id 0..18, from the same table (research/deeplab vis.py
# `_CITYSCAPES_TRAIN_ID_TO_EVAL_ID`): the benchmark server scores label ids.
CITYSCAPES_TRAIN_ID_TO_LABEL_ID = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)


def cityscapes_train_ids_to_label_ids(train_ids):
  """Maps Cityscapes train ids (what our models predict) to label ids (what its benchmark server scores).

  Args:
    train_ids: integer array of any shape with values in [0, 19).

  Returns:
    An array of the same shape and dtype (values 7..33).

  Raises:
    ValueError: a value outside [0, 19).
  """
  train_ids = np.asarray(train_ids)
  if train_ids.size and (train_ids.min() < 0 or train_ids.max() >= len(CITYSCAPES_TRAIN_ID_TO_LABEL_ID)):
    raise ValueError(f"Cityscapes train ids must lie in [0, {len(CITYSCAPES_TRAIN_ID_TO_LABEL_ID)}); got "
                     f"[{train_ids.min()}, {train_ids.max()}].")
  return np.asarray(CITYSCAPES_TRAIN_ID_TO_LABEL_ID, train_ids.dtype)[train_ids]


# ADE20K SceneParsing (objectInfo150.csv, first name of each entry), preceded by id 0 "other" which the
# original ignores (ignore_label 0, 151 classes).
_ADE20K_NAMES = (
    "wall building sky floor tree ceiling road bed windowpane grass cabinet sidewalk person earth door "
    "table mountain plant curtain chair car water painting sofa shelf house sea mirror rug field armchair "
    "seat fence desk rock wardrobe lamp bathtub railing cushion base box column signboard "
    "chest_of_drawers counter sand sink skyscraper fireplace refrigerator grandstand path stairs runway "
    "case pool_table pillow screen_door stairway river bridge bookcase blind coffee_table toilet flower "
    "book hill bench countertop stove palm kitchen_island computer swivel_chair boat bar arcade_machine "
    "hovel bus towel light truck tower chandelier awning streetlight booth television_receiver airplane "
    "dirt_track apparel pole land bannister escalator ottoman bottle buffet poster stage van ship "
    "fountain conveyer_belt canopy washer plaything swimming_pool stool barrel basket waterfall tent bag "
    "minibike cradle oven ball food step tank trade_name microwave pot animal bicycle lake dishwasher "
    "screen blanket sculpture hood sconce vase traffic_light tray ashcan fan pier crt_screen plate "
    "monitor bulletin_board shower radiator glass clock flag")
# Multi-word names are joined by "_" in the literal above.
ADE20K_CLASSES = ("other",) + tuple(n.replace("_", " ") for n in _ADE20K_NAMES.split())

_BUILTIN = {
    "pascal_voc_seg": DatasetDescriptor(
        "pascal_voc_seg", 21, 255,
        {"train": 1464, "train_aug": 10582, "trainval": 2913, "val": 1449}, PASCAL_VOC_CLASSES,
        colormaps.PASCAL),
    "cityscapes": DatasetDescriptor(
        "cityscapes", 19, 255,
        {"train_fine": 2975, "train_coarse": 22973, "trainval_fine": 3475, "trainval_coarse": 23473,
         "val_fine": 500, "test_fine": 1525}, CITYSCAPES_CLASSES, colormaps.CITYSCAPES),
    "ade20k": DatasetDescriptor(
        "ade20k", 151, 0, {"train": 20210, "val": 2000}, ADE20K_CLASSES, colormaps.ADE20K),
}

BUILTIN_NAMES = tuple(_BUILTIN)
_FIELDS = tuple(f.name for f in dataclasses.fields(DatasetDescriptor))


def descriptor_from_dict(values: dict, source: str = "<dict>") -> DatasetDescriptor:
  """Builds and checks a custom descriptor from a dict (the JSON format in the module docstring).

  `class_names` defaults to `class_0, class_1, ...`, `colormap` to `custom`, `splits_to_sizes` to {}.

  Raises:
    ValueError: naming `source`, if a field is unknown, missing or inconsistent.
  """
  unknown = sorted(set(values) - set(_FIELDS))
  if unknown:
    raise ValueError(f"Dataset descriptor {source} has unknown field(s) {unknown}; allowed: {list(_FIELDS)}.")
  for key in ("name", "num_classes", "ignore_label"):
    if key not in values:
      raise ValueError(f"Dataset descriptor {source} lacks {key!r}; add it (see "
                       "deeplab_tf/data/descriptors.py for the format).")
  num_classes, ignore_label = values["num_classes"], values["ignore_label"]
  if not isinstance(num_classes, int) or not 1 <= num_classes <= 256:
    raise ValueError(f"Dataset descriptor {source}: num_classes {num_classes!r} must be an int in [1, 256].")
  if not isinstance(ignore_label, int) or not 0 <= ignore_label <= 255:
    raise ValueError(f"Dataset descriptor {source}: ignore_label {ignore_label!r} must be an int in "
                     "[0, 255] (labels are stored as 8-bit PNG).")
  class_names = tuple(values.get("class_names") or (f"class_{i}" for i in range(num_classes)))
  if len(class_names) != num_classes:
    raise ValueError(f"Dataset descriptor {source} has {len(class_names)} class_names for num_classes "
                     f"{num_classes}; give one name per class.")
  colormap = values.get("colormap", colormaps.CUSTOM)
  if colormap not in colormaps.COLORMAP_ENTRIES:
    raise ValueError(f"Dataset descriptor {source}: colormap {colormap!r} is not one of "
                     f"{sorted(colormaps.COLORMAP_ENTRIES)}.")
  splits = {str(k): int(v) for k, v in dict(values.get("splits_to_sizes") or {}).items()}
  return DatasetDescriptor(str(values["name"]), num_classes, ignore_label, splits, class_names, colormap)


def get_descriptor(name_or_json_path: str) -> DatasetDescriptor:
  """The descriptor of a built-in dataset by name, or of a custom one from its JSON file.

  Args:
    name_or_json_path: `pascal_voc_seg`, `cityscapes`, `ade20k`, or the path of a JSON descriptor.

  Returns:
    `DatasetDescriptor`.

  Raises:
    ValueError: if the name is neither built in nor an existing file, or the JSON is malformed.
  """
  if name_or_json_path in _BUILTIN:
    return _BUILTIN[name_or_json_path]
  if not tf.io.gfile.exists(name_or_json_path) or tf.io.gfile.isdir(name_or_json_path):
    raise ValueError(f"Unknown dataset {name_or_json_path!r}: not one of {list(BUILTIN_NAMES)} and not a "
                     "JSON descriptor file. Give a built-in name or the path of a descriptor JSON.")
  try:
    values = json.loads(read_text(name_or_json_path))
  except json.JSONDecodeError as e:
    raise ValueError(f"Dataset descriptor {name_or_json_path} is not valid JSON: {e}.") from e
  if not isinstance(values, dict):
    raise ValueError(f"Dataset descriptor {name_or_json_path} must hold a JSON object.")
  return descriptor_from_dict(values, name_or_json_path)


# The descriptor deeplab_train writes beside its checkpoints, so that predict and export name the
# classes as the training data did.
CHECKPOINT_DESCRIPTOR_FILENAME = "dataset.json"


def write_descriptor(descriptor: DatasetDescriptor, path: str) -> None:
  """Writes `descriptor` as JSON to `path` (through a temporary file renamed when complete)."""
  atomic_write_text(path, descriptor.to_json() + "\n")
