"""Converts PASCAL VOC 2012 segmentation (and SBD for train_aug) to TFRecord shards.

research/deeplab `datasets/build_voc2012_data.py`, same flags: every `*.txt` in --list_folder is a split
(train, val, trainval) listing image names, one a line; the image is `--image_folder/<name>.<image_format>`
and its label `--semantic_segmentation_folder/<name>.<label_format>`. VOC's `SegmentationClass` palette
PNGs are read as their palette indices, which are the class ids (0..20, 255 = boundary/ignore), so the
original's separate `remove_gt_colormap.py` step is not needed (`SegmentationClassRaw` works too).
A colour-decoded (RGB) mask is refused unless --convert_rgb_masks maps its colours back through the VOC
palette.

With --sbd_folder (SBD's `benchmark_RELEASE/dataset`), also writes `train_aug` (DeepLabv3 section 4.1,
10582 images): every SBD `cls/*.mat` image plus VOC train, minus VOC val. Labels come from VOC's PNG
where VOC has one, else from SBD's `GTcls.Segmentation`.

  python datasets/build_voc2012_data.py \
    --image_folder=VOCdevkit/VOC2012/JPEGImages \
    --semantic_segmentation_folder=VOCdevkit/VOC2012/SegmentationClass \
    --list_folder=VOCdevkit/VOC2012/ImageSets/Segmentation \
    --sbd_folder=benchmark_RELEASE/dataset --output_dir=tfrecord
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Optional, Sequence

import tensorflow as tf
from absl import app, flags

from datasets import build_data
from datasets.build_data import ConversionReport, InputError
from deeplab_tf.bin import entry
from deeplab_tf.data import colormaps, descriptors, writer
from deeplab_tf.io_utils import read_text

FLAGS = flags.FLAGS

NUM_CLASSES = 21
IGNORE_LABEL = 255
TRAIN_AUG = "train_aug"
_LABEL_FIX = ("VOC labels are palette PNGs whose indices are class ids 0..20 (255 = ignore): check this "
              "is a SegmentationClass mask of this image (--convert_rgb_masks for colour-decoded masks).")


def read_split_list(path: str) -> List[str]:
  """Image names of a VOC split list, one a line.

  Raises:
    InputError: if the list is empty.
  """
  names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
  if not names:
    raise InputError(f"Split list {path} is empty; it must name one image per line (e.g. 2007_000032). "
                     "Fill it or remove it from --list_folder.")
  return names


def _split_lists(list_folder: str) -> Dict[str, str]:
  if not tf.io.gfile.isdir(list_folder):
    raise InputError(f"--list_folder {list_folder} is not a directory; point it at "
                     "VOCdevkit/VOC2012/ImageSets/Segmentation.")
  lists = sorted(tf.io.gfile.glob(os.path.join(list_folder, "*.txt")))
  if not lists:
    raise InputError(f"--list_folder {list_folder} holds no split list (*.txt); point it at "
                     "VOCdevkit/VOC2012/ImageSets/Segmentation or write train.txt/val.txt there.")
  return {os.path.splitext(os.path.basename(p))[0]: p for p in lists}


def convert(*, image_folder: str, semantic_segmentation_folder: str, list_folder: str, output_dir: str,
            image_format: str = "jpg", label_format: str = "png", num_shards: int = 4,
            sbd_folder: Optional[str] = None, convert_rgb_masks: bool = False,
            splits: Optional[Sequence[str]] = None, num_workers: int = 2, check_only: bool = False,
            skip_bad_inputs: bool = False, progress: bool = True) -> ConversionReport:
  """Converts the VOC splits listed in `list_folder` (and train_aug from SBD). See the module docstring.

  Args:
    image_folder: VOC JPEGImages.
    semantic_segmentation_folder: VOC SegmentationClass (or SegmentationClassRaw).
    list_folder: VOC ImageSets/Segmentation: one `<split>.txt` per split.
    output_dir: where shards go.
    image_format: image file extension.
    label_format: label file extension.
    num_shards: shards per split (the original writes 4).
    sbd_folder: SBD's benchmark_RELEASE/dataset (with cls/*.mat); adds the train_aug split.
    convert_rgb_masks: convert colour masks through the VOC palette instead of refusing them.
    splits: only these splits (default: every list, plus train_aug with sbd_folder).
    num_workers: encoding threads.
    check_only: validate, write nothing.
    skip_bad_inputs: skip and report bad inputs instead of refusing.
    progress: show progress bars.

  Returns:
    `ConversionReport`.

  Raises:
    InputError: on a missing or empty list, an unwritable output_dir, or missing SBD files.
    ConversionError: if an example was bad (each problem names its file and list).
  """
  lists = _split_lists(list_folder)
  palette = colormaps.get_colormap("pascal") if convert_rgb_masks else None
  read_label = functools.partial(writer.read_label, palette=palette)
  common = dict(num_classes=NUM_CLASSES, ignore_label=IGNORE_LABEL, label_fix=_LABEL_FIX, read_label=read_label)

  def image_path(name):
    return os.path.join(image_folder, f"{name}.{image_format}")

  def voc_label_path(name):
    return os.path.join(semantic_segmentation_folder, f"{name}.{label_format}")

  items: Dict[str, List[build_data.Item]] = {}
  for split, list_path in lists.items():
    if splits and split not in splits:
      continue
    items[split] = [
        build_data.pair_item(name, image_path(name), voc_label_path(name),
                             context=f"{list_path} line {line_no} names {name!r}: ", **common)
        for line_no, name in enumerate(read_split_list(list_path), start=1)]

  if sbd_folder and (not splits or TRAIN_AUG in splits):
    mats = sorted(tf.io.gfile.glob(os.path.join(sbd_folder, "cls", "*.mat")))
    if not mats:
      raise InputError(f"--sbd_folder {sbd_folder} has no cls/*.mat; point it at SBD's "
                       "benchmark_RELEASE/dataset.")
    for needed in ("train", "val"):
      if needed not in lists:
        raise InputError(f"train_aug needs {needed}.txt in --list_folder {list_folder} (VOC train is added, "
                         "VOC val removed).")
    sbd = {build_data.stem(m): m for m in mats}
    val = set(read_split_list(lists["val"]))
    names = sorted((set(sbd) | set(read_split_list(lists["train"]))) - val)
    aug = []
    for name in names:
      label = voc_label_path(name)
      if name in sbd and not tf.io.gfile.exists(label):
        label = sbd[name]
      aug.append(build_data.pair_item(name, image_path(name), label,
                                      context=f"train_aug example {name!r}: ", **common))
    items[TRAIN_AUG] = aug
  if not items:
    raise InputError(f"No split of {sorted(lists)} matches --splits {list(splits or [])}.")
  return build_data.convert_splits(items, output_dir=output_dir, num_shards=num_shards,
                                   num_workers=num_workers, check_only=check_only,
                                   skip_bad_inputs=skip_bad_inputs, progress=progress)


def define_flags() -> None:
  """research/deeplab's flags plus --sbd_folder, --convert_rgb_masks, --splits and the common ones."""
  if "image_folder" in FLAGS:
    return
  flags.DEFINE_string("image_folder", "./VOCdevkit/VOC2012/JPEGImages", "Folder of the images.")
  flags.DEFINE_string("semantic_segmentation_folder", "./VOCdevkit/VOC2012/SegmentationClass",
                      "Folder of the semantic segmentation annotations (palette or index PNGs).")
  flags.DEFINE_string("list_folder", "./VOCdevkit/VOC2012/ImageSets/Segmentation",
                      "Folder of the split lists (<split>.txt).")
  flags.DEFINE_enum("image_format", "jpg", ["jpg", "jpeg", "png"], "Image file extension.")
  flags.DEFINE_enum("label_format", "png", ["png"], "Label file extension.")
  flags.DEFINE_string("sbd_folder", None, "SBD benchmark_RELEASE/dataset (cls/*.mat): adds train_aug.")
  flags.DEFINE_boolean("convert_rgb_masks", False,
                       "Convert colour-decoded (RGB) masks through the VOC palette instead of refusing them.")
  flags.DEFINE_list("splits", None, "Only these splits (default: every list in --list_folder).")
  build_data.define_common_flags(default_num_shards=4)


def main(argv):
  del argv
  return build_data.run_main(lambda: convert(
      image_folder=FLAGS.image_folder, semantic_segmentation_folder=FLAGS.semantic_segmentation_folder,
      list_folder=FLAGS.list_folder, image_format=FLAGS.image_format, label_format=FLAGS.label_format,
      sbd_folder=FLAGS.sbd_folder, convert_rgb_masks=FLAGS.convert_rgb_masks, splits=FLAGS.splits,
      **build_data.common_kwargs()), descriptors.get_descriptor("pascal_voc_seg").class_names)


def run():
  define_flags()
  entry.run(main)


if __name__ == "__main__":
  run()
