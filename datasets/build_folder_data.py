"""Converts any folder of images and index masks to TFRecord shards, optionally tiled and split by region.

Inputs: --image_folder with --label_folder (image and mask matched by file stem, the mask's stem plus
--label_suffix), or explicit --pairs `image:mask,image:mask`. Images may be 8-bit or 16-bit, gray or RGB:
gray is replicated to RGB and more than 8 bits are mapped to 8 by a linear min-max stretch over each source
image (`deeplab_tf.data.writer.rescale_to_uint8`). Mask values become class ids through --label_map
(`0:0,255:1`; a value it does not name is an error), or --binarize_labels (instance masks: > 0 is class
1), or are class ids already (checked against --num_classes).

Large images can be cut into --tile_size crops every --tile_stride pixels (the last tile of a row or
column is moved back to end at the border, so tiles are full-size where the area allows). --val_region
`x0,y0,x1,y1` (fractions of width and height) holds out a rectangle of every image for the val split:
val tiles are cut from inside it, train tiles from the up to four rectangles around it (above, below,
left, right), so no tile straddles the boundary and no val pixel, image or label, is ever in train.

A descriptor `<output_dir>/<dataset_name>.json` is written for `deeplab_tf.data.descriptors.get_descriptor`.

  # installed (deeplab_build_folder_data) or, from a checkout, python -m datasets.build_folder_data
  deeplab_build_folder_data \
    --pairs=datasets/samples/spacenet_roads/road_mask_input.tif:datasets/samples/spacenet_roads/sample_road_raster_mask.tif \
    --label_map=0:0,255:1 --class_names=background,road --tile_size=256 --tile_stride=256 \
    --val_region=0.75,0,1,1 --dataset_name=spacenet_roads --output_dir=/tmp/roads
"""

from __future__ import annotations

import functools
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from absl import app, flags
from PIL import Image

from . import build_data
from .build_data import ConversionReport, InputError
from deeplab_tf.bin import entry
from deeplab_tf.data import descriptors, writer

FLAGS = flags.FLAGS

Box = Tuple[int, int, int, int]  # (y0, x0, y1, x1), pixels, end exclusive


def tile_positions(length: int, size: int, stride: int) -> List[int]:
  """Start offsets of tiles of `size` every `stride` covering [0, length); the last ends at `length`."""
  if length <= size:
    return [0]
  starts = list(range(0, length - size + 1, stride))
  if starts[-1] + size < length:
    starts.append(length - size)
  return starts


def tile_box(box: Box, tile_size: Optional[Tuple[int, int]], tile_stride: Optional[Tuple[int, int]]
             ) -> List[Box]:
  """Tiles inside `box` (the box itself without tile_size); tiles never leave the box."""
  y0, x0, y1, x1 = box
  if y1 <= y0 or x1 <= x0:
    return []
  if tile_size is None:
    return [box]
  (th, tw), (sh, sw) = tile_size, tile_stride or tile_size
  return [(y0 + y, x0 + x, y0 + y + min(th, y1 - y0), x0 + x + min(tw, x1 - x0))
          for y in tile_positions(y1 - y0, th, sh) for x in tile_positions(x1 - x0, tw, sw)]


def region_box(val_region: Sequence[float], height: int, width: int) -> Box:
  """Pixel box of a fractional region (x0, y0, x1, y1).

  Raises:
    InputError: (a ValueError) if the fractions are not 0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1 or the box is empty.
  """
  fx0, fy0, fx1, fy1 = val_region
  if not (0 <= fx0 < fx1 <= 1 and 0 <= fy0 < fy1 <= 1):
    raise InputError(f"--val_region {','.join(map(str, val_region))} must be x0,y0,x1,y1 fractions of the "
                     "image with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, e.g. 0.75,0,1,1.")
  box = (round(fy0 * height), round(fx0 * width), round(fy1 * height), round(fx1 * width))
  if box[2] <= box[0] or box[3] <= box[1]:
    raise InputError(f"--val_region {val_region} is less than a pixel of a {width}x{height} image.")
  return box


def plan_tiles(height: int, width: int, *, tile_size: Optional[Tuple[int, int]] = None,
               tile_stride: Optional[Tuple[int, int]] = None,
               val_region: Optional[Sequence[float]] = None) -> Dict[str, List[Box]]:
  """The crops of one image per split: {"train": boxes} or, with val_region, {"train": ..., "val": ...}.

  Train boxes are tiled from the bands above, below, left and right of the val region, val boxes from
  inside it (see the module docstring), so a pixel belongs to at most one split.
  """
  full = (0, 0, height, width)
  if val_region is None:
    return {"train": tile_box(full, tile_size, tile_stride)}
  vy0, vx0, vy1, vx1 = region_box(val_region, height, width)
  bands = [(0, 0, vy0, width), (vy1, 0, height, width), (vy0, 0, vy1, vx0), (vy0, vx1, vy1, width)]
  train = [t for band in bands for t in tile_box(band, tile_size, tile_stride)]
  return {"train": train, "val": tile_box((vy0, vx0, vy1, vx1), tile_size, tile_stride)}


def _label_transform(label_map: Optional[Mapping[int, int]], binarize: bool):
  if binarize:
    return lambda label, path: (label > 0).astype(np.uint8)
  if label_map:
    return lambda label, path: writer.apply_label_map(label, label_map, path)
  return lambda label, path: label


def _match_pairs(image_folder: str, label_folder: str, label_suffix: str) -> List[Tuple[str, str]]:
  labels = {}
  if tf.io.gfile.isdir(label_folder):
    for f in build_data.listdir(label_folder, "--label_folder"):
      labels.setdefault(os.path.splitext(f)[0], os.path.join(label_folder, f))
  pairs = []
  for image in build_data.list_images(image_folder, "--image_folder"):
    key = build_data.stem(image) + label_suffix
    pairs.append((image, labels.get(key, os.path.join(label_folder, key + ".*"))))
  return pairs


def _parse_size(value: Union[None, int, str, Sequence[int]]) -> Optional[Tuple[int, int]]:
  if value is None or value == "" or value == 0:
    return None
  if isinstance(value, int):
    sizes = (value, value)
  elif isinstance(value, str):
    parts = [int(v) for v in value.lower().replace("x", ",").split(",")]
    sizes = (parts[0], parts[-1])
  else:
    sizes = tuple(int(v) for v in value)
  if len(sizes) != 2 or min(sizes) < 1:
    raise InputError(f"Tile size/stride {value!r} must be N or HxW with positive integers.")
  return sizes


def convert(*, output_dir: str, image_folder: Optional[str] = None, label_folder: Optional[str] = None,
            pairs: Optional[Sequence[Tuple[str, str]]] = None, label_suffix: str = "",
            label_map: Union[None, str, Mapping[int, int]] = None, binarize_labels: bool = False,
            num_classes: Optional[int] = None, ignore_label: int = 255,
            class_names: Optional[Sequence[str]] = None, tile_size=None, tile_stride=None,
            val_region: Optional[Sequence[float]] = None, train_split_name: str = "train",
            val_split_name: str = "val", dataset_name: str = "custom", num_shards: int = 1,
            num_workers: int = 2, check_only: bool = False, skip_bad_inputs: bool = False,
            progress: bool = True) -> ConversionReport:
  """Converts a folder (or list) of image/mask pairs; see the module docstring.

  Args:
    output_dir: where shards and the descriptor go.
    image_folder: folder of images (with label_folder).
    label_folder: folder of masks, matched by stem (+ label_suffix).
    pairs: explicit (image path, mask path) pairs instead of the folders.
    label_suffix: the mask's stem is the image's stem plus this (e.g. "_mask").
    label_map: {raw value: class id} or its "0:0,255:1" spelling.
    binarize_labels: class 1 where the mask is > 0 (instance masks), else 0.
    num_classes: number of classes; default 2 with binarize_labels, else 1 + the largest class id of
      label_map (excluding ignore_label); required otherwise.
    ignore_label: the "don't care" value (<= 255).
    class_names: num_classes names for the descriptor.
    tile_size: N or (H, W): cut images into tiles of this size; None keeps them whole.
    tile_stride: N or (H, W) between tiles; default tile_size.
    val_region: (x0, y0, x1, y1) fractions: that rectangle of every image goes to the val split.
    train_split_name: name of the split outside val_region.
    val_split_name: name of the held-out split.
    dataset_name: name of the descriptor (and its file name).
    num_shards: shards per split.
    num_workers: encoding threads.
    check_only: validate, write nothing.
    skip_bad_inputs: skip and report bad inputs instead of refusing.
    progress: show progress bars.

  Returns:
    `ConversionReport` (its `descriptor_path` names the descriptor written).

  Raises:
    InputError: (a ValueError) on inconsistent arguments (named, with the fix).
    InputError: if no input is found, or output_dir is not writable.
    ConversionError: if an input was bad.
  """
  if (pairs is None) == (image_folder is None):
    raise InputError("Give either --pairs or --image_folder (with --label_folder), not both or neither.")
  if image_folder is not None and not label_folder:
    raise InputError("--image_folder needs --label_folder (masks matched by stem).")
  if binarize_labels and label_map:
    raise InputError("--binarize_labels and --label_map exclude each other; give one.")
  if not 0 <= ignore_label <= 255:
    raise InputError(f"--ignore_label {ignore_label} must be in [0, 255] (labels are 8-bit PNG).")
  if isinstance(label_map, str):
    label_map = writer.parse_label_map(label_map)
  if num_classes is None:
    if binarize_labels:
      num_classes = 2
    elif label_map:
      num_classes = 1 + max(v for v in label_map.values() if v != ignore_label)
    else:
      raise InputError("--num_classes is required when masks hold class ids directly (no --label_map "
                       "or --binarize_labels).")
  tile_size, tile_stride = _parse_size(tile_size), _parse_size(tile_stride)
  if tile_stride is not None and tile_size is None:
    raise InputError("--tile_stride needs --tile_size.")
  if val_region is not None:
    val_region = tuple(float(v) for v in val_region)
    region_box(val_region, 100, 100)  # validates the fractions before any file is read
    if len(val_region) != 4:
      raise InputError(f"--val_region {val_region} must have 4 numbers x0,y0,x1,y1.")
  if pairs is None:
    pairs = _match_pairs(image_folder, label_folder, label_suffix)
  if not pairs:
    raise InputError("No image/mask pair to convert: --pairs is empty.")
  transform = _label_transform(label_map, binarize_labels)
  fix = ("Map them with --label_map value:class_id (or --binarize_labels for instance masks), or raise "
         "--num_classes.")

  @functools.lru_cache(maxsize=max(2, num_workers + 1))
  def load(image_path: str, label_path: str):
    image = writer.read_image(image_path).pixels
    label = transform(writer.read_label(label_path), label_path)
    writer.check_same_size(image, label, image_path, label_path)
    writer.check_label_values(label, num_classes=num_classes, ignore_label=ignore_label, path=label_path,
                              fix=fix)
    return image, label

  def encode(name, image_path, label_path, box):
    image, label = load(image_path, label_path)  # raises InputError for a bad file
    return writer.make_example(name, writer.ImageData(writer.crop(image, box)), writer.crop(label, box),
                               num_classes=num_classes, ignore_label=ignore_label, image_path=image_path,
                               label_path=label_path, label_fix=fix)

  split_names = {"train": train_split_name, "val": val_split_name}
  items: Dict[str, List[build_data.Item]] = {split_names["train"]: []}
  if val_region is not None:
    items[split_names["val"]] = []
  for image_path, label_path in pairs:
    base = build_data.stem(image_path)
    try:
      with tf.io.gfile.GFile(image_path, "rb") as f, Image.open(f) as img:
        width, height = img.size
    except (OSError, SyntaxError, ValueError, tf.errors.OpError):
      # Missing or unreadable: encoding reports it in full.
      items[split_names["train"]].append(
          build_data.Item(base, functools.partial(encode, base, image_path, label_path, None)))
      continue
    for split, boxes in plan_tiles(height, width, tile_size=tile_size, tile_stride=tile_stride,
                                   val_region=val_region).items():
      for box in boxes:
        whole = box == (0, 0, height, width)
        name = base if whole else f"{base}_y{box[0]}_x{box[1]}_{box[2] - box[0]}x{box[3] - box[1]}"
        items[split_names[split]].append(build_data.Item(
            name, functools.partial(encode, name, image_path, label_path, box)))
  report = build_data.convert_splits(items, output_dir=output_dir, num_shards=num_shards,
                                     num_workers=num_workers, check_only=check_only,
                                     skip_bad_inputs=skip_bad_inputs, progress=progress)
  descriptor = descriptors.descriptor_from_dict(dict(
      name=dataset_name, num_classes=num_classes, ignore_label=ignore_label,
      splits_to_sizes={s: r.num_examples for s, r in report.splits.items()},
      class_names=list(class_names) if class_names else None), f"--dataset_name {dataset_name}")
  if not check_only:
    report.descriptor_path = os.path.join(output_dir, f"{dataset_name}.json")
    descriptors.write_descriptor(descriptor, report.descriptor_path)
    report.notes.append(f"descriptor written to {report.descriptor_path}")
  return report


def define_flags() -> None:
  if "pairs" in FLAGS:
    return
  flags.DEFINE_string("image_folder", None, "Folder of images (with --label_folder).")
  flags.DEFINE_string("label_folder", None, "Folder of index masks, matched to images by file stem.")
  flags.DEFINE_string("label_suffix", "", "A mask's stem is its image's stem plus this, e.g. _mask.")
  flags.DEFINE_list("pairs", None, "Explicit image:mask pairs, comma-separated (instead of folders).")
  flags.DEFINE_string("label_map", None, "Mask value -> class id, e.g. 0:0,255:1.")
  flags.DEFINE_boolean("binarize_labels", False, "Instance masks: class 1 where mask > 0, else 0.")
  flags.DEFINE_integer("num_classes", None, "Number of classes (default from --label_map/--binarize_labels).")
  flags.DEFINE_integer("ignore_label", 255, "The 'don't care' label value.")
  flags.DEFINE_list("class_names", None, "Class names for the descriptor, comma-separated.")
  flags.DEFINE_string("tile_size", None, "Cut images into tiles of N or HxW pixels.")
  flags.DEFINE_string("tile_stride", None, "Distance between tiles, N or HxW (default --tile_size).")
  flags.DEFINE_list("val_region", None, "x0,y0,x1,y1 fractions of each image held out as the val split.")
  flags.DEFINE_string("train_split_name", "train", "Split name of the (non held-out) examples.")
  flags.DEFINE_string("val_split_name", "val", "Split name of the --val_region examples.")
  flags.DEFINE_string("dataset_name", "custom", "Name of the dataset descriptor written to --output_dir.")
  build_data.define_common_flags(default_num_shards=1)


def _parse_pairs(values: Sequence[str]) -> List[Tuple[str, str]]:
  pairs = []
  for value in values:
    image, sep, label = value.rpartition(":")
    if not sep or not image or not label:
      raise InputError(f"--pairs entry {value!r} is not image_path:mask_path.")
    pairs.append((image, label))
  return pairs


def main(argv):
  del argv
  return build_data.run_main(lambda: convert(
      image_folder=FLAGS.image_folder, label_folder=FLAGS.label_folder, label_suffix=FLAGS.label_suffix,
      pairs=_parse_pairs(FLAGS.pairs) if FLAGS.pairs else None, label_map=FLAGS.label_map,
      binarize_labels=FLAGS.binarize_labels, num_classes=FLAGS.num_classes, ignore_label=FLAGS.ignore_label,
      class_names=FLAGS.class_names, tile_size=FLAGS.tile_size, tile_stride=FLAGS.tile_stride,
      val_region=FLAGS.val_region, train_split_name=FLAGS.train_split_name,
      val_split_name=FLAGS.val_split_name, dataset_name=FLAGS.dataset_name,
      **build_data.common_kwargs()), FLAGS.class_names)


def run():
  define_flags()
  entry.run(main)


if __name__ == "__main__":
  run()
