"""Converts Cityscapes (fine annotations) to TFRecord shards.

research/deeplab `datasets/build_cityscapes_data.py`: images
`<root>/leftImg8bit/<split>/<city>/<prefix>_leftImg8bit.png` with labels
`<root>/gtFine/<split>/<city>/<prefix>_gtFine_labelTrainIds.png` (19 classes, 255 = ignore), written as
`train_fine`, `val_fine`, `test_fine`. The original needs the label PNGs made beforehand with
cityscapesscripts' `createTrainIdLabelImgs.py`; here a missing `_labelTrainIds.png` is made in memory
from its `_gtFine_polygons.json` with the same package (`json2labelImg.createLabelImage`, "trainIds").

  deeplab_build_cityscapes_data --cityscapes_root=/data/cityscapes --output_dir=tfrecord
  (from a checkout: python -m datasets.build_cityscapes_data ...; polygons need deeplab_tf[cityscapes])
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np
import tensorflow as tf
from absl import app, flags

from . import build_data
from .build_data import ConversionReport, InputError
from deeplab_tf.bin import entry
from deeplab_tf.data import descriptors, writer
from deeplab_tf.errors import require_extra
from deeplab_tf.io_utils import read_text

FLAGS = flags.FLAGS

NUM_CLASSES = 19
IGNORE_LABEL = 255
IMAGE_SUFFIX = "_leftImg8bit.png"
LABEL_SUFFIX = "_gtFine_labelTrainIds.png"
POLYGON_SUFFIX = "_gtFine_polygons.json"


def read_train_ids(label_path: str) -> np.ndarray:
  """The train-id label map: the `_labelTrainIds.png` when present, else made from its polygons.

  Raises:
    InputError: if neither file exists, or the polygons cannot be drawn (e.g. an unknown label name).
  """
  if tf.io.gfile.exists(label_path):
    return writer.read_label(label_path)
  polygons = label_path[:-len(LABEL_SUFFIX)] + POLYGON_SUFFIX
  if not tf.io.gfile.exists(polygons):
    raise InputError(f"Missing label file {label_path}, and no {os.path.basename(polygons)} to make it "
                     "from: download gtFine_trainvaltest.zip into --cityscapes_root.")
  what = f"Drawing {os.path.basename(label_path)} from {os.path.basename(polygons)}"
  Annotation = require_extra("cityscapesscripts.helpers.annotation", "cityscapes", what).Annotation
  createLabelImage = require_extra("cityscapesscripts.preparation.json2labelImg", "cityscapes",
                                   what).createLabelImage
  try:
    annotation = Annotation()
    annotation.fromJsonText(read_text(polygons))  # fromJsonFile reads local files only.
    return np.asarray(createLabelImage(annotation, "trainIds"))
  except (SystemExit, Exception) as e:  # cityscapesscripts exits on an unknown label name.
    raise InputError(f"Cannot make train ids from {polygons}: {e!r}. Check the file is a Cityscapes "
                     "gtFine polygon annotation.") from e


def convert(*, cityscapes_root: str, output_dir: str, num_shards: int = 10,
            splits: Sequence[str] = ("train", "val", "test"), num_workers: int = 2,
            check_only: bool = False, skip_bad_inputs: bool = False, progress: bool = True
            ) -> ConversionReport:
  """Converts the Cityscapes fine splits under `cityscapes_root` to `<split>_fine` shards.

  Args:
    cityscapes_root: the folder holding leftImg8bit/ and gtFine/.
    output_dir: where shards go.
    num_shards: shards per split (the original writes 10).
    splits: Cityscapes split folders to convert.
    num_workers: encoding threads.
    check_only: validate, write nothing.
    skip_bad_inputs: skip and report bad inputs instead of refusing.
    progress: show progress bars.

  Returns:
    `ConversionReport`, with a note of how many labels were made from polygons.

  Raises:
    InputError: if a split has no image, or output_dir is not writable.
    ConversionError: if an example was bad.
  """
  items: Dict[str, List[build_data.Item]] = {}
  from_polygons = 0
  for split in splits:
    pattern = os.path.join(cityscapes_root, "leftImg8bit", split, "*", "*" + IMAGE_SUFFIX)
    images = sorted(build_data.glob(pattern, "--cityscapes_root"))
    if not images:
      raise InputError(f"No {pattern}: --cityscapes_root {cityscapes_root} must hold leftImg8bit/{split}/"
                       "<city>/*_leftImg8bit.png (unzip leftImg8bit_trainvaltest.zip there).")
    items[f"{split}_fine"] = split_items = []
    for image in images:
      prefix = os.path.basename(image)[:-len(IMAGE_SUFFIX)]
      city = os.path.basename(os.path.dirname(image))
      label = os.path.join(cityscapes_root, "gtFine", split, city, prefix + LABEL_SUFFIX)
      from_polygons += not tf.io.gfile.exists(label)
      split_items.append(build_data.pair_item(
          prefix, image, label, num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL, read_label=read_train_ids,
          label_fix="Cityscapes labelTrainIds hold 0..18 and 255; remake them with cityscapesscripts."))
  report = build_data.convert_splits(items, output_dir=output_dir, num_shards=num_shards,
                                     num_workers=num_workers, check_only=check_only,
                                     skip_bad_inputs=skip_bad_inputs, progress=progress)
  if from_polygons:
    report.notes.append(f"{from_polygons} label map(s) were made from *{POLYGON_SUFFIX} (no {LABEL_SUFFIX}).")
  return report


def define_flags() -> None:
  if "cityscapes_root" in FLAGS:
    return
  flags.DEFINE_string("cityscapes_root", "./cityscapes", "Folder holding leftImg8bit/ and gtFine/.")
  flags.DEFINE_list("splits", ["train", "val", "test"], "Cityscapes splits to convert.")
  build_data.define_common_flags(default_num_shards=10)


def main(argv):
  del argv
  return build_data.run_main(lambda: convert(
      cityscapes_root=FLAGS.cityscapes_root, splits=FLAGS.splits, **build_data.common_kwargs()),
      descriptors.get_descriptor("cityscapes").class_names)


def run():
  define_flags()
  entry.run(main)


if __name__ == "__main__":
  run()
