"""Converts ADE20K (MIT SceneParsing, ADEChallengeData2016) to TFRecord shards.

research/deeplab `datasets/build_ade20k_data.py`, same flags. Images `images/{training,validation}/*.jpg`
are paired by file stem with annotations `annotations/{training,validation}/*.png` (grayscale, 0 = "other",
1..150 = the benchmark's classes), written as splits `train` and `val`.

Labels are kept as the original keeps them: 151 classes with 0 ignored (`ignore_label=0`, the
`ade20k` descriptor). --reduce_zero_label instead maps 0 to 255 and v to v - 1: 150 classes with
ignore_label 255 (the convention of later code bases); train and evaluate such shards with a custom
descriptor `{"name": "ade20k_150", "num_classes": 150, "ignore_label": 255, "colormap": "custom"}`.

  # installed (deeplab_build_ade20k_data) or, from a checkout, python -m datasets.build_ade20k_data
  deeplab_build_ade20k_data \
    --train_image_folder=ADEChallengeData2016/images/training \
    --train_image_label_folder=ADEChallengeData2016/annotations/training \
    --val_image_folder=ADEChallengeData2016/images/validation \
    --val_image_label_folder=ADEChallengeData2016/annotations/validation --output_dir=tfrecord
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional

import numpy as np
from absl import app, flags

from . import build_data
from .build_data import ConversionReport
from deeplab_tf.bin import entry
from deeplab_tf.data import descriptors

FLAGS = flags.FLAGS

NUM_CLASSES = 151
IGNORE_LABEL = 0
REDUCED_IGNORE_LABEL = 255


def shift_zero_label(label: np.ndarray) -> np.ndarray:
  """0 ("other") -> 255, v -> v - 1: ADE20K's 151 ids to 150 classes + ignore 255."""
  label = label.astype(np.int64)
  return np.where(label == 0, REDUCED_IGNORE_LABEL, label - 1)


def convert(*, train_image_folder: Optional[str], train_image_label_folder: Optional[str],
            val_image_folder: Optional[str], val_image_label_folder: Optional[str], output_dir: str,
            num_shards: int = 4, reduce_zero_label: bool = False, num_workers: int = 2,
            check_only: bool = False, skip_bad_inputs: bool = False, progress: bool = True
            ) -> ConversionReport:
  """Converts the ADE20K train and val folders (a split whose image folder is None is left out).

  Args:
    train_image_folder: images/training.
    train_image_label_folder: annotations/training.
    val_image_folder: images/validation.
    val_image_label_folder: annotations/validation.
    output_dir: where shards go.
    num_shards: shards per split (the original writes 4).
    reduce_zero_label: write 150 classes + ignore 255 instead of 151 with 0 ignored.
    num_workers: encoding threads.
    check_only: validate, write nothing.
    skip_bad_inputs: skip and report bad inputs instead of refusing.
    progress: show progress bars.

  Returns:
    `ConversionReport`.

  Raises:
    InputError: if a folder is missing or empty, or output_dir is not writable.
    ConversionError: if an example was bad (missing annotation, size mismatch, value > 150, ...).
  """
  if reduce_zero_label:
    common = dict(num_classes=NUM_CLASSES - 1, ignore_label=REDUCED_IGNORE_LABEL, transform=shift_zero_label)
  else:
    common = dict(num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL)
  common["label_fix"] = ("ADE20K annotations hold 0..150 (0 = other); check it is an annotations/*.png "
                         "of ADEChallengeData2016.")
  items: Dict[str, List[build_data.Item]] = {}
  for split, image_folder, label_folder in (("train", train_image_folder, train_image_label_folder),
                                            ("val", val_image_folder, val_image_label_folder)):
    if not image_folder:
      continue
    images = build_data.list_images(image_folder, f"ADE20K {split} image folder", (".jpg", ".jpeg"))
    items[split] = [
        build_data.pair_item(build_data.stem(p), p,
                             os.path.join(label_folder or "", build_data.stem(p) + ".png"), **common)
        for p in images]
  if not items:
    raise build_data.InputError("No ADE20K split to convert: give --train_image_folder and/or "
                                "--val_image_folder.")
  return build_data.convert_splits(items, output_dir=output_dir, num_shards=num_shards,
                                   num_workers=num_workers, check_only=check_only,
                                   skip_bad_inputs=skip_bad_inputs, progress=progress)


def define_flags() -> None:
  if "train_image_folder" in FLAGS:
    return
  root = "./ADEChallengeData2016"
  flags.DEFINE_string("train_image_folder", f"{root}/images/training", "Folder of training images.")
  flags.DEFINE_string("train_image_label_folder", f"{root}/annotations/training",
                      "Folder of training annotations.")
  flags.DEFINE_string("val_image_folder", f"{root}/images/validation", "Folder of validation images.")
  flags.DEFINE_string("val_image_label_folder", f"{root}/annotations/validation",
                      "Folder of validation annotations.")
  flags.DEFINE_boolean("reduce_zero_label", False,
                       "Write 150 classes with ignore_label 255 (0 -> 255, v -> v-1) instead of the "
                       "original's 151 classes with 0 ignored.")
  build_data.define_common_flags(default_num_shards=4)


def main(argv):
  del argv
  names = descriptors.get_descriptor("ade20k").class_names
  return build_data.run_main(lambda: convert(
      train_image_folder=FLAGS.train_image_folder, train_image_label_folder=FLAGS.train_image_label_folder,
      val_image_folder=FLAGS.val_image_folder, val_image_label_folder=FLAGS.val_image_label_folder,
      reduce_zero_label=FLAGS.reduce_zero_label, **build_data.common_kwargs()),
      names[1:] if FLAGS.reduce_zero_label else names)


def run():
  define_flags()
  entry.run(main)


if __name__ == "__main__":
  run()
