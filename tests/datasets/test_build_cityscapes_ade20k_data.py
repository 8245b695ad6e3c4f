"""Cityscapes and ADE20K converters on fixture trees laid out as the real datasets."""
import json
import os

import numpy as np
import pytest

from conftest import VOC_NAMES, save, voc_crop
from datasets import build_ade20k_data, build_cityscapes_data
from datasets.build_data import ConversionError, InputError
from deeplab_tf.data import pipeline


def test_cityscapes_tree_with_train_ids_and_polygons(tmp_path, convert_kwargs):
  root = tmp_path / "cityscapes"
  image, _ = voc_crop(VOC_NAMES[0], (32, 64))
  for split, city, n in (("train", "aachen", 2), ("val", "frankfurt", 1)):
    for i in range(n):
      prefix = f"{city}_000000_{i:06d}"
      save(str(root / "leftImg8bit" / split / city / f"{prefix}_leftImg8bit.png"), image)
      if split == "train" and i == 1:  # labelTrainIds missing: made from the polygons
        polygons = {"imgHeight": 32, "imgWidth": 64, "objects": [
            {"label": "road", "polygon": [[0, 16], [63, 16], [63, 31], [0, 31]]},
            {"label": "car", "polygon": [[10, 20], [20, 20], [20, 28], [10, 28]]}]}
        (root / "gtFine" / split / city / f"{prefix}_gtFine_polygons.json").write_text(json.dumps(polygons))
      else:
        save(str(root / "gtFine" / split / city / f"{prefix}_gtFine_labelTrainIds.png"),
             np.full((32, 64), 255 if split == "val" else 8, np.uint8))
  report = build_cityscapes_data.convert(cityscapes_root=str(root), splits=("train", "val"), **convert_kwargs)
  assert {s: r.num_examples for s, r in report.splits.items()} == {"train_fine": 2, "val_fine": 1}
  counts = report.splits["train_fine"].class_pixel_counts
  assert counts[13] == 11 * 9 and counts[0] == 64 * 16 - 99 and counts[8] == 32 * 64  # car, road, vegetation
  assert "1 label map(s) were made" in report.notes[0]
  ds = pipeline.build_dataset(os.path.join(convert_kwargs["output_dir"], "val_fine-*"), is_training=False,
                              crop_size=None, batch_size=1, ignore_label=255)
  batch = next(iter(ds))
  assert batch["image_name"].numpy().tolist() == [b"frankfurt_000000_000000"]
  assert batch["image"].shape == (1, 32, 64, 3)
  with pytest.raises(InputError, match="No .*leftImg8bit/test/"):
    build_cityscapes_data.convert(cityscapes_root=str(root), splits=("test",), **convert_kwargs)


def _ade_tree(tmp_path):
  root = tmp_path / "ADEChallengeData2016"
  for split, folder, names in (("train", "training", VOC_NAMES[:2]), ("val", "validation", VOC_NAMES[2:])):
    for i, name in enumerate(names):
      image, label = voc_crop(name)
      save(str(root / "images" / folder / f"ADE_{split}_{i:08d}.jpg"), image)
      save(str(root / "annotations" / folder / f"ADE_{split}_{i:08d}.png"),
           np.where(label == 255, 0, label + 130).astype(np.uint8))  # ids 130..150, 0 = other
  return {f"{s}_image{k}folder": str(root / d / f) for s, f in (("train", "training"), ("val", "validation"))
          for k, d in (("_", "images"), ("_label_", "annotations"))}


def test_ade20k_keeps_151_classes_or_reduces_zero_label(tmp_path, convert_kwargs):
  folders = _ade_tree(tmp_path)
  report = build_ade20k_data.convert(**folders, **convert_kwargs)
  assert {s: r.num_examples for s, r in report.splits.items()} == {"train": 2, "val": 1}
  assert set(report.splits["val"].class_pixel_counts) <= {0} | set(range(130, 151))
  reduced = build_ade20k_data.convert(**folders, reduce_zero_label=True, check_only=True, **convert_kwargs)
  original = report.splits["train"].class_pixel_counts
  assert reduced.splits["train"].class_pixel_counts == {
      (255 if v == 0 else v - 1): c for v, c in original.items()}
  os.remove(os.path.join(folders["train_image_label_folder"], "ADE_train_00000001.png"))
  with pytest.raises(ConversionError, match=r"Missing label file .*ADE_train_00000001.png"):
    build_ade20k_data.convert(**folders, **convert_kwargs)
