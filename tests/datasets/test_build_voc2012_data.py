"""build_voc2012_data on a VOC tree (with an SBD folder) made from the real samples."""
import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
import tensorflow as tf
from PIL import Image

from conftest import VOC, VOC_NAMES, save, voc_crop
from datasets import build_voc2012_data
from datasets.build_data import ConversionError, InputError
from deeplab_tf.data import colormaps, descriptors, pipeline, writer
from ram_fs import copy_to_ram


def _sample_kwargs(list_folder):
  return dict(image_folder=os.path.join(VOC, "JPEGImages"),
              semantic_segmentation_folder=os.path.join(VOC, "SegmentationClass"), list_folder=list_folder)


def test_samples_convert_and_read_back(convert_kwargs):
  report = build_voc2012_data.convert(**_sample_kwargs(os.path.join(VOC, "ImageSets", "Segmentation")),
                                      **convert_kwargs)
  assert {s: r.num_examples for s, r in report.splits.items()} == {"train": 2, "trainval": 3, "val": 1}
  assert set(report.splits["val"].class_pixel_counts) == {0, 6, 7}  # background, bus, car
  ds = pipeline.build_dataset(os.path.join(convert_kwargs["output_dir"], "val-*"), is_training=False,
                              crop_size=(513, 513), batch_size=1, ignore_label=255)
  batch = next(iter(ds))
  assert batch["image_name"].numpy().tolist() == [b"2011_000025"]
  label = np.asarray(Image.open(os.path.join(VOC, "SegmentationClass", "2011_000025.png")))
  h, w = label.shape
  np.testing.assert_array_equal(batch["label"][0, :h, :w, 0], label)
  assert (int(batch["height"][0]), int(batch["width"][0])) == (h, w)


def _tree(tmp_path, train, val, rgb_label=None):
  root = tmp_path / "VOCdevkit" / "VOC2012"
  for name in (set(train) | set(val)) & set(VOC_NAMES):
    image, label = voc_crop(name)
    save(str(root / "JPEGImages" / f"{name}.jpg"), image)
    save(str(root / "SegmentationClass" / f"{name}.png"), label)
  lists = root / "ImageSets" / "Segmentation"
  lists.mkdir(parents=True)
  (lists / "train.txt").write_text("\n".join(train) + "\n")
  (lists / "val.txt").write_text("\n".join(val) + "\n")
  return dict(image_folder=str(root / "JPEGImages"), semantic_segmentation_folder=str(root / "SegmentationClass"),
              list_folder=str(lists)), root


def test_sbd_train_aug_is_sbd_plus_train_minus_val(tmp_path, convert_kwargs):
  kwargs, root = _tree(tmp_path, ["2011_000003"], ["2011_000025"])
  sbd = tmp_path / "benchmark_RELEASE" / "dataset"
  (sbd / "cls").mkdir(parents=True)
  image, label = voc_crop("2011_000006")
  save(str(root / "JPEGImages" / "2011_000006.jpg"), image)  # an SBD-only image: no VOC label
  for name, seg in (("2011_000006", label), ("2011_000025", voc_crop("2011_000025")[1])):
    scipy.io.savemat(str(sbd / "cls" / f"{name}.mat"), {"GTcls": {"Segmentation": seg.astype(np.uint8)}})
  report = build_voc2012_data.convert(**kwargs, sbd_folder=str(sbd), **convert_kwargs)
  assert report.splits["train_aug"].num_examples == 2  # 000003 (VOC train) + 000006 (SBD), not val 000025
  records = tf.data.TFRecordDataset(report.splits["train_aug"].shards)
  from deeplab_tf.data import features
  parsed = {p["image_name"].numpy(): p["label"].numpy()[..., 0] for p in map(features.parse_example, records)}
  assert set(parsed) == {b"2011_000003", b"2011_000006"}
  np.testing.assert_array_equal(parsed[b"2011_000006"], label)


def test_refused_inputs_name_list_and_file(tmp_path, convert_kwargs):
  kwargs, root = _tree(tmp_path, ["2011_000003", "2011_000099"], ["2011_000025"])
  with pytest.raises(ConversionError, match=r"train.txt line 2 names '2011_000099': Missing image file"):
    build_voc2012_data.convert(**kwargs, **convert_kwargs)
  assert not os.path.exists(os.path.join(convert_kwargs["output_dir"], "train-00000-of-00001.tfrecord"))
  (root / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
  with pytest.raises(InputError, match=r"Split list .*val.txt is empty"):
    build_voc2012_data.convert(**kwargs, **convert_kwargs)


def test_rgb_masks_refused_or_converted(tmp_path, convert_kwargs):
  from deeplab_tf.data import colormaps
  kwargs, root = _tree(tmp_path, ["2011_000003"], ["2011_000025"])
  ids = np.asarray(Image.open(os.path.join(VOC, "SegmentationClass", "2011_000003.png")))
  save(str(root / "JPEGImages" / "2011_000003.jpg"),
       np.asarray(Image.open(os.path.join(VOC, "JPEGImages", "2011_000003.jpg"))))
  save(str(root / "SegmentationClass" / "2011_000003.png"), colormaps.get_colormap("pascal")[ids])
  with pytest.raises(ConversionError, match="2011_000003.png is a colour .*mask"):
    build_voc2012_data.convert(**kwargs, check_only=True, **convert_kwargs)
  report = build_voc2012_data.convert(**kwargs, convert_rgb_masks=True, **convert_kwargs)
  assert report.splits["train"].class_pixel_counts == writer.histogram_to_dict(np.bincount(ids.ravel()))


def test_binary_exits_non_zero_on_refused_input(tmp_path):
  kwargs, root = _tree(tmp_path, ["2011_000003"], ["2011_000025"])
  os.remove(root / "SegmentationClass" / "2011_000025.png")
  result = subprocess.run(
      [sys.executable, "-m", "datasets.build_voc2012_data", "--check_only", "--num_workers=1",
       f"--output_dir={tmp_path / 'out'}"] + [f"--{k}={v}" for k, v in kwargs.items()],
      capture_output=True, text=True, check=False, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
  assert result.returncode == 2  # entry.run's status for a user's mistake
  assert "Missing label file" in result.stderr and "2011_000025.png" in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("build_voc2012_data.py: error: Refused 1 bad input(s) in split 'val'"), last
  assert "Traceback" not in result.stderr
  assert not os.path.exists(tmp_path / "out" / "val-00000-of-00001.tfrecord")


def test_voc_with_sbd_from_and_to_the_ram_filesystem(tmp_path, monkeypatch):
  kwargs, root = _tree(tmp_path, ["2011_000003"], ["2011_000025"])
  sbd = tmp_path / "benchmark_RELEASE" / "dataset"
  (sbd / "cls").mkdir(parents=True)
  image, label = voc_crop("2011_000006")
  save(str(root / "JPEGImages" / "2011_000006.jpg"), image)
  scipy.io.savemat(str(sbd / "cls" / "2011_000006.mat"), {"GTcls": {"Segmentation": label}})
  ram = copy_to_ram(tmp_path, "ram://voc_test")
  ram_kwargs = {k: v.replace(str(tmp_path), ram) for k, v in kwargs.items()}
  monkeypatch.chdir(tmp_path)
  before = sorted(os.listdir(tmp_path))
  report = build_voc2012_data.convert(**ram_kwargs, sbd_folder=ram + "/benchmark_RELEASE/dataset",
                                      output_dir=ram + "/out", num_shards=1, num_workers=1, progress=False)
  assert {s: r.num_examples for s, r in report.splits.items()} == {"train": 1, "train_aug": 2, "val": 1}
  assert sorted(tf.io.gfile.listdir(ram + "/out")) == ["pascal_voc_seg.json"] + [
      f"{s}-00000-of-00001.tfrecord" for s in ("train", "train_aug", "val")]
  ds = pipeline.build_dataset(ram + "/out/train_aug-*", is_training=False, crop_size=None, batch_size=1,
                              ignore_label=255)
  labels = {b["image_name"].numpy()[0]: b["label"][0, ..., 0].numpy() for b in ds}
  np.testing.assert_array_equal(labels[b"2011_000006"], label)  # read from the SBD .mat on ram://
  assert sorted(os.listdir(tmp_path)) == before  # Nothing written locally.


def _labelme_export(tmp_path, names=("a", "b", "c", "d", "e")):
  """A labelme2voc export: JPEGImages/, SegmentationClass/*.npy, SegmentationClassPNG/ (palette PNGs of
  class ids 0..2, 255 = __ignore__), class_names.txt; no split list."""
  root = tmp_path / "export"
  labels = {}
  for i, name in enumerate(names):
    image, voc_label = voc_crop(VOC_NAMES[i % len(VOC_NAMES)])
    label = np.where(voc_label == 255, 255, (voc_label > 0) * (1 + i % 2)).astype(np.uint8)
    label[:4, :4] = 2
    save(str(root / "JPEGImages" / f"{name}.jpg"), image)
    pil = Image.fromarray(label, "P")
    pil.putpalette(colormaps.get_colormap("pascal").ravel().tolist())
    (root / "SegmentationClassPNG").mkdir(parents=True, exist_ok=True)
    pil.save(str(root / "SegmentationClassPNG" / f"{name}.png"))
    (root / "SegmentationClass").mkdir(exist_ok=True)
    np.save(str(root / "SegmentationClass" / f"{name}.npy"), label.astype(np.int32))
    labels[name] = label
  (root / "class_names.txt").write_text("_background_\ncat\ndog")  # labelme writes no final newline
  return root, labels


def test_labelme_export_converts_with_its_classes_made_splits_and_a_descriptor(tmp_path):
  root, labels = _labelme_export(tmp_path)
  out = tmp_path / "out"
  # The original's defaults for the label and list folders: SegmentationClass holds labelme's .npy.
  report = build_voc2012_data.convert(
      image_folder=str(root / "JPEGImages"), semantic_segmentation_folder=str(root / "SegmentationClass"),
      list_folder=str(root / "ImageSets" / "Segmentation"), output_dir=str(out), val_fraction=0.4,
      split_seed=3, num_shards=2, num_workers=1, progress=False)
  train = (out / "train.txt").read_text().split()
  val = (out / "val.txt").read_text().split()
  assert (len(train), len(val)) == (3, 2) and sorted(train + val) == sorted(labels)
  assert build_voc2012_data.make_split_lists(sorted(labels), 0.4, 3) == {"train": train, "val": val}
  descriptor = descriptors.get_descriptor(report.descriptor_path)
  assert report.descriptor_path == str(out / "export.json")
  assert (descriptor.num_classes, descriptor.ignore_label, descriptor.class_names, descriptor.splits_to_sizes) == (
      3, 255, ("_background_", "cat", "dog"), {"train": 3, "val": 2})
  for split, names in (("train", train), ("val", val)):
    ds = pipeline.build_dataset(str(out / f"{split}-*"), is_training=False, crop_size=None, batch_size=1,
                                ignore_label=255)
    got = {b["image_name"].numpy()[0].decode(): b["label"][0, ..., 0].numpy() for b in ds}
    assert sorted(got) == sorted(names)
    for name in names:
      np.testing.assert_array_equal(got[name], labels[name])


def test_labelme_class_names_set_the_class_count(tmp_path):
  root, _ = _labelme_export(tmp_path, ("a", "b"))
  (root / "class_names.txt").write_text("__ignore__\n_background_\ncat\n")  # labelme's labels.txt form
  assert build_voc2012_data.read_class_names(str(root / "class_names.txt")) == ("_background_", "cat")
  with pytest.raises(ConversionError, match=r"value\(s\) \[2\] that are neither a class id in \[0, 2\)"):
    build_voc2012_data.convert(image_folder=str(root / "JPEGImages"),
                               semantic_segmentation_folder=str(root / "SegmentationClassPNG"), list_folder=None,
                               output_dir=str(tmp_path / "out"), check_only=True, num_workers=1, progress=False)
