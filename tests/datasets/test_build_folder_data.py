"""build_folder_data: tiling, the region split, 16-bit images and label mapping, on the shipped samples."""
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import SAMPLES, save
from datasets import build_folder_data
from datasets.build_data import ConversionError
from deeplab_tf.data import descriptors, features, pipeline


@pytest.mark.parametrize("tile, stride, region", [
    (None, None, (0.75, 0, 1, 1)), ((64, 64), (48, 48), (0.3, 0.2, 0.7, 0.6)), ((100, 80), None, (0, 0.5, 1, 1))])
def test_region_split_never_shares_pixels(tile, stride, region):
  height, width = 250, 310
  plan = build_folder_data.plan_tiles(height, width, tile_size=tile, tile_stride=stride, val_region=region)
  cover = {split: np.zeros((height, width), bool) for split in plan}
  for split, boxes in plan.items():
    for y0, x0, y1, x1 in boxes:
      assert 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width
      if tile:
        assert y1 - y0 <= tile[0] and x1 - x0 <= tile[1]
      cover[split][y0:y1, x0:x1] = True
  vy0, vx0, vy1, vx1 = build_folder_data.region_box(region, height, width)
  expected_val = np.zeros((height, width), bool)
  expected_val[vy0:vy1, vx0:vx1] = True
  np.testing.assert_array_equal(cover["val"], expected_val)
  np.testing.assert_array_equal(cover["train"], ~expected_val)  # everything else is train, nothing shared


def test_tile_positions_end_at_the_border():
  assert build_folder_data.tile_positions(10, 4, 4) == [0, 4, 6]
  assert build_folder_data.tile_positions(3, 4, 4) == [0]


def test_nuclei_16bit_instances_tiled_and_split(tmp_path):
  folder = os.path.join(SAMPLES, "nuclei_dsb2018")
  out = str(tmp_path / "out")
  report = build_folder_data.convert(
      pairs=[(os.path.join(folder, "img2d.tif"), os.path.join(folder, "mask2d.tif"))], binarize_labels=True,
      tile_size=128, val_region=(0.75, 0, 1, 1), class_names=["background", "nucleus"],
      dataset_name="nuclei", output_dir=out, num_workers=2, progress=False)
  assert report.splits["train"].num_examples == 12 and report.splits["val"].num_examples == 4
  descriptor = descriptors.get_descriptor(report.descriptor_path)
  assert (descriptor.num_classes, descriptor.splits_to_sizes) == (2, {"train": 12, "val": 4})
  # every val tile lies in x >= 384, every train tile in x < 384, and labels are {0, 1}
  for split in ("train", "val"):
    for record in tf.data.TFRecordDataset(report.splits[split].shards):
      example = features.parse_example(record)
      name = example["image_name"].numpy().decode()
      x0 = int(name.split("_x")[1].split("_")[0])
      width = int(example["width"])
      assert (x0 >= 384) if split == "val" else (x0 + width <= 384), name
      assert set(np.unique(example["label"].numpy())) <= {0, 1}
  batch = next(iter(pipeline.build_dataset(os.path.join(out, "train-*"), is_training=True, crop_size=(96, 96),
                                           batch_size=2, ignore_label=255, seed=0)))
  assert batch["image"].shape == (2, 96, 96, 3)


def test_folder_matching_label_map_and_refusals(tmp_path):
  rng = np.random.default_rng(0)
  for i in range(2):
    save(str(tmp_path / "img" / f"a{i}.png"), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
    save(str(tmp_path / "lab" / f"a{i}_mask.png"), np.where(rng.random((20, 24)) > 0.5, 255, 0).astype(np.uint8))
  kwargs = dict(image_folder=str(tmp_path / "img"), label_folder=str(tmp_path / "lab"), label_suffix="_mask",
                output_dir=str(tmp_path / "out"), num_workers=1, progress=False)
  report = build_folder_data.convert(label_map="0:0,255:1", **kwargs)
  assert report.splits["train"].num_examples == 2 and set(report.splits["train"].class_pixel_counts) == {0, 1}
  with pytest.raises(ConversionError, match=r"a0_mask.png has value\(s\) \[255\] that are neither .*--label_map"):
    build_folder_data.convert(num_classes=2, ignore_label=100, **kwargs)
  save(str(tmp_path / "img" / "a2.png"), rng.integers(0, 255, (20, 24, 3), dtype=np.uint8))
  with pytest.raises(ConversionError, match=r"Missing label file .*a2_mask\.\*"):
    build_folder_data.convert(label_map="0:0,255:1", **kwargs)
  report = build_folder_data.convert(label_map="0:0,255:1", skip_bad_inputs=True, **kwargs)
  assert [name for name, _ in report.splits["train"].skipped] == ["a2"]
  save(str(tmp_path / "lab" / "a2_mask.png"), np.zeros((20, 23), np.uint8))
  with pytest.raises(ConversionError, match=r"(?s)a2.png is 24x20 .*/a2_mask.png is 23x20: they must be the same size"):
    build_folder_data.convert(label_map="0:0,255:1", check_only=True, **kwargs)
