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

Any tree in VOC layout converts too, e.g. a labelme export (`labelme2voc.py`: JPEGImages/,
SegmentationClassPNG/, class_names.txt, no split lists):
- classes: a `class_names.txt` beside the image folder (or --class_names_file) gives the class names,
  one a line, line 1 = class 0 (labelme's `_background_`); a `__ignore__` line, as in labelme's
  labels.txt, is not a class: its pixels are the ignore label 255 (labelme writes them as 255). Without
  one, VOC's 21 classes.
- labels: `SegmentationClassPNG/` beside the images is used when --semantic_segmentation_folder holds no
  label file (labelme's `SegmentationClass/` holds .npy files).
- splits: with no split list in --list_folder (nor in `ImageSets/Segmentation` beside the images), every
  image that has a label goes to `train` or, a seeded random --val_fraction of them, to `val`; the lists
  are written beside the shards (`<output_dir>/train.txt`, `val.txt`).
A dataset descriptor `<output_dir>/<dataset_name>.json` (`deeplab_tf.data.descriptors`, as
build_folder_data writes) records the classes, ignore label and split sizes for training and evaluation.

  # installed (deeplab_build_voc_data) or, from a checkout, python -m datasets.build_voc2012_data
  deeplab_build_voc_data \
    --image_folder=VOCdevkit/VOC2012/JPEGImages \
    --semantic_segmentation_folder=VOCdevkit/VOC2012/SegmentationClass \
    --list_folder=VOCdevkit/VOC2012/ImageSets/Segmentation \
    --sbd_folder=benchmark_RELEASE/dataset --output_dir=tfrecord
"""

from __future__ import annotations

import functools
import os
import random
from typing import Dict, List, Optional, Sequence, Tuple

import tensorflow as tf
from absl import app, flags

from . import build_data
from .build_data import ConversionReport, InputError
from deeplab_tf.bin import entry
from deeplab_tf.data import colormaps, descriptors, writer
from deeplab_tf.io_utils import atomic_write_text, read_text

FLAGS = flags.FLAGS

NUM_CLASSES = 21
IGNORE_LABEL = 255
TRAIN_AUG = "train_aug"
CLASS_NAMES_FILE = "class_names.txt"
LABELME_IGNORE = "__ignore__"
LABELME_LABEL_FOLDER = "SegmentationClassPNG"
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
  """{split: list file} of the `*.txt` in `list_folder` ({} when it is missing or holds none)."""
  if not list_folder or not tf.io.gfile.isdir(list_folder):
    return {}
  lists = sorted(build_data.glob(os.path.join(list_folder, "*.txt"), "--list_folder"))
  return {os.path.splitext(os.path.basename(p))[0]: p for p in lists}


def read_class_names(path: str) -> Tuple[str, ...]:
  """Class names of a `class_names.txt` (labelme's), one a line: line 1 is class 0.

  A `__ignore__` line (labelme's labels.txt starts with one) names the ignore label, not a class, and is
  dropped; labelme writes its pixels as 255.

  Raises:
    InputError: if the file is empty or names a class twice.
  """
  names = [line.strip() for line in read_text(path).splitlines() if line.strip()]
  names = [n for n in names if n != LABELME_IGNORE]
  if not names:
    raise InputError(f"{path} names no class; write one class name a line, class 0 first (e.g. "
                     "_background_).")
  if len(set(names)) != len(names):
    twice = sorted({n for n in names if names.count(n) > 1})
    raise InputError(f"{path} names {twice} more than once; give each class one line.")
  if len(names) > IGNORE_LABEL:
    raise InputError(f"{path} names {len(names)} classes; at most {IGNORE_LABEL} fit 8-bit labels beside "
                     f"ignore label {IGNORE_LABEL}.")
  return tuple(names)


def _label_folder(semantic_segmentation_folder: str, image_folder: str, label_format: str) -> str:
  """The label folder: as given, or labelme's SegmentationClassPNG beside it or the images."""
  def has_labels(folder):
    return tf.io.gfile.isdir(folder) and bool(
        build_data.glob(os.path.join(folder, f"*.{label_format}"), "--semantic_segmentation_folder"))
  if has_labels(semantic_segmentation_folder):
    return semantic_segmentation_folder
  for parent in (os.path.dirname(semantic_segmentation_folder.rstrip("/")),
                 os.path.dirname(image_folder.rstrip("/"))):
    candidate = os.path.join(parent, LABELME_LABEL_FOLDER)
    if has_labels(candidate):
      return candidate
  return semantic_segmentation_folder


def make_split_lists(names: Sequence[str], val_fraction: float, seed: int) -> Dict[str, List[str]]:
  """{"train": names, "val": names}: a seeded random `val_fraction` of `names` (at least one when there
  are two or more and val_fraction > 0) held out as val, each list sorted.

  Raises:
    InputError: if val_fraction is not in [0, 1).
  """
  if not 0 <= val_fraction < 1:
    raise InputError(f"--val_fraction {val_fraction} must be in [0, 1): the share of the images held out "
                     "for validation.")
  shuffled = sorted(names)
  random.Random(seed).shuffle(shuffled)
  num_val = round(len(shuffled) * val_fraction)
  if val_fraction > 0 and len(shuffled) >= 2:
    num_val = min(max(num_val, 1), len(shuffled) - 1)
  lists = {"train": sorted(shuffled[num_val:])}
  if num_val:
    lists["val"] = sorted(shuffled[:num_val])
  return lists


def convert(*, image_folder: str, semantic_segmentation_folder: str, list_folder: Optional[str],
            output_dir: str, image_format: str = "jpg", label_format: str = "png", num_shards: int = 4,
            sbd_folder: Optional[str] = None, convert_rgb_masks: bool = False,
            splits: Optional[Sequence[str]] = None, class_names_file: Optional[str] = None,
            val_fraction: float = 0.1, split_seed: int = 0, dataset_name: Optional[str] = None,
            num_workers: int = 2, check_only: bool = False, skip_bad_inputs: bool = False,
            progress: bool = True) -> ConversionReport:
  """Converts the VOC splits listed in `list_folder` (and train_aug from SBD). See the module docstring.

  Args:
    image_folder: VOC JPEGImages.
    semantic_segmentation_folder: VOC SegmentationClass (or SegmentationClassRaw, or labelme's
      SegmentationClassPNG, which is also found beside it or the images).
    list_folder: VOC ImageSets/Segmentation: one `<split>.txt` per split. Missing or empty (and no
      ImageSets/Segmentation beside the images): train/val lists are made (`val_fraction`).
    output_dir: where shards go.
    image_format: image file extension.
    label_format: label file extension.
    num_shards: shards per split (the original writes 4).
    sbd_folder: SBD's benchmark_RELEASE/dataset (with cls/*.mat); adds the train_aug split.
    convert_rgb_masks: convert colour masks through the VOC palette instead of refusing them.
    splits: only these splits (default: every list, plus train_aug with sbd_folder).
    class_names_file: class names, one a line, class 0 first (default: class_names.txt beside the image
      folder when present, else VOC's 21 classes).
    val_fraction: the share of the images held out as `val` when the split lists are made.
    split_seed: seed of that random choice.
    dataset_name: name of the descriptor written to output_dir (default `pascal_voc_seg` for VOC's
      classes, else the name of the folder above the images).
    num_workers: encoding threads.
    check_only: validate, write nothing.
    skip_bad_inputs: skip and report bad inputs instead of refusing.
    progress: show progress bars.

  Returns:
    `ConversionReport` (its `descriptor_path` names the descriptor written).

  Raises:
    InputError: on an empty list or class_names.txt, an unwritable output_dir, missing SBD files, or no
      labelled image to make split lists from.
    ConversionError: if an example was bad (each problem names its file and list).
  """
  root = os.path.dirname(image_folder.rstrip("/"))
  notes = []
  if class_names_file is None and tf.io.gfile.exists(os.path.join(root, CLASS_NAMES_FILE)):
    class_names_file = os.path.join(root, CLASS_NAMES_FILE)
  if class_names_file:
    class_names = read_class_names(class_names_file)
    notes.append(f"{len(class_names)} classes from {class_names_file}: {', '.join(class_names)}")
  else:
    class_names = descriptors.get_descriptor("pascal_voc_seg").class_names
  num_classes = len(class_names)
  if dataset_name is None:
    dataset_name = os.path.basename(root) if class_names_file and os.path.basename(root) else (
        "custom" if class_names_file else "pascal_voc_seg")
  label_folder = _label_folder(semantic_segmentation_folder, image_folder, label_format)
  if label_folder != semantic_segmentation_folder:
    notes.append(f"labels read from {label_folder} (--semantic_segmentation_folder "
                 f"{semantic_segmentation_folder} holds no *.{label_format})")
  semantic_segmentation_folder = label_folder
  lists = _split_lists(list_folder)
  if not lists and list_folder != os.path.join(root, "ImageSets", "Segmentation"):
    lists = _split_lists(os.path.join(root, "ImageSets", "Segmentation"))
  made_lists: Dict[str, List[str]] = {}
  if not lists:
    labelled = {build_data.stem(p) for p in build_data.glob(
        os.path.join(semantic_segmentation_folder, f"*.{label_format}"), "--semantic_segmentation_folder")}
    names = sorted(n for n in labelled if tf.io.gfile.exists(os.path.join(image_folder, f"{n}.{image_format}")))
    if not names:
      raise InputError(f"No split list (*.txt) in --list_folder {list_folder}, and no image of "
                       f"{image_folder}/*.{image_format} has a label {semantic_segmentation_folder}/"
                       f"<name>.{label_format} to make one from. Check the folder flags.")
    made_lists = make_split_lists(names, val_fraction, split_seed)
    notes.append(f"no split list in --list_folder {list_folder}: made " + ", ".join(
        f"{s} ({len(v)} images)" for s, v in made_lists.items()) + f" with --val_fraction {val_fraction} "
        f"and --split_seed {split_seed}" + ("" if check_only else f", written to {output_dir}/<split>.txt"))
  palette = colormaps.get_colormap("pascal") if convert_rgb_masks else None
  read_label = functools.partial(writer.read_label, palette=palette)
  label_fix = _LABEL_FIX if not class_names_file else (
      f"Labels must be palette or grayscale PNGs of class ids 0..{num_classes - 1} ({class_names_file}) "
      f"or {IGNORE_LABEL} (ignore); check the mask belongs to this export.")
  common = dict(num_classes=num_classes, ignore_label=IGNORE_LABEL, label_fix=label_fix,
                read_label=read_label)

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
  for split, names in made_lists.items():
    if splits and split not in splits:
      continue
    items[split] = [build_data.pair_item(name, image_path(name), voc_label_path(name),
                                         context=f"example {name!r}: ", **common) for name in names]

  if sbd_folder and (not splits or TRAIN_AUG in splits):
    mats = sorted(build_data.glob(os.path.join(sbd_folder, "cls", "*.mat"), "--sbd_folder"))
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
    raise InputError(f"No split of {sorted(lists or made_lists)} matches --splits {list(splits or [])}.")
  report = build_data.convert_splits(items, output_dir=output_dir, num_shards=num_shards,
                                     num_workers=num_workers, check_only=check_only,
                                     skip_bad_inputs=skip_bad_inputs, progress=progress)
  report.notes.extend(notes)
  report.class_names = class_names
  if check_only:
    return report
  skipped = {s: {name for name, _ in r.skipped} for s, r in report.splits.items()}
  for split, names in made_lists.items():
    if split in report.splits:
      kept = [n for n in names if n not in skipped[split]]
      atomic_write_text(os.path.join(output_dir, f"{split}.txt"), "\n".join(kept) + "\n")
  descriptor = descriptors.descriptor_from_dict(dict(
      name=dataset_name, num_classes=num_classes, ignore_label=IGNORE_LABEL,
      splits_to_sizes={s: r.num_examples for s, r in report.splits.items()},
      class_names=list(class_names), colormap=colormaps.PASCAL), f"--dataset_name {dataset_name}")
  report.descriptor_path = os.path.join(output_dir, f"{dataset_name}.json")
  descriptors.write_descriptor(descriptor, report.descriptor_path)
  report.notes.append(f"descriptor written to {report.descriptor_path}")
  return report


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
  flags.DEFINE_string("class_names_file", None, "Class names, one a line, class 0 first; a __ignore__ line "
                      "(labelme) is the ignore label. Default: class_names.txt beside --image_folder when "
                      "present, else VOC's 21 classes.")
  flags.DEFINE_float("val_fraction", 0.1, "With no split list in --list_folder: the share of the labelled "
                     "images held out as val (lists written to --output_dir).")
  flags.DEFINE_integer("split_seed", 0, "Seed of the --val_fraction choice.")
  flags.DEFINE_string("dataset_name", None, "Name of the dataset descriptor written to --output_dir "
                      "(default pascal_voc_seg, or the export's folder name with class_names.txt).")
  build_data.define_common_flags(default_num_shards=4)


def main(argv):
  del argv
  return build_data.run_main(lambda: convert(
      image_folder=FLAGS.image_folder, semantic_segmentation_folder=FLAGS.semantic_segmentation_folder,
      list_folder=FLAGS.list_folder, image_format=FLAGS.image_format, label_format=FLAGS.label_format,
      sbd_folder=FLAGS.sbd_folder, convert_rgb_masks=FLAGS.convert_rgb_masks, splits=FLAGS.splits,
      class_names_file=FLAGS.class_names_file, val_fraction=FLAGS.val_fraction,
      split_seed=FLAGS.split_seed, dataset_name=FLAGS.dataset_name, **build_data.common_kwargs()))


def run():
  define_flags()
  entry.run(main)


if __name__ == "__main__":
  run()
