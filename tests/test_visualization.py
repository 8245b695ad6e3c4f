"""Overlays, panels and label PNGs, read back with Pillow."""
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_tf import visualization


def test_label_png_round_trip_keeps_class_ids(tmp_path):
  label = np.array([[0, 1, 15], [20, 255, 3]], dtype=np.int32)
  path = visualization.save_label_png(label, str(tmp_path / "a" / "label.png"), colormap="pascal")
  with Image.open(path) as picture:
    assert picture.mode == "P"
    assert picture.getpalette()[3:6] == [128, 0, 0]          # class 1 shows as VOC's red
    assert picture.convert("RGB").getpixel((2, 0)) == (192, 128, 128)
  np.testing.assert_array_equal(visualization.read_label_png(path), label)
  grey = visualization.save_label_png(label, str(tmp_path / "grey.png"), colormap=None)
  assert Image.open(grey).mode == "L"
  np.testing.assert_array_equal(visualization.read_label_png(grey), label)
  assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["label.png"]  # no temporary left


def test_label_png_errors(tmp_path):
  with pytest.raises(ValueError, match=r"bad.png: label values must lie in \[0, 255\]"):
    visualization.save_label_png(np.array([[0, 256]]), str(tmp_path / "bad.png"))
  with pytest.raises(ValueError, match="integer"):
    visualization.save_label_png(np.zeros((2, 2), np.float32), str(tmp_path / "bad.png"))
  rgb = visualization.save_image_png(np.zeros((2, 2, 3), np.uint8), str(tmp_path / "rgb.png"))
  with pytest.raises(ValueError, match="rgb.png: label PNGs must be palette"):
    visualization.read_label_png(rgb)
  assert not (tmp_path / "bad.png").exists()


def test_overlay_blends_and_keeps_ignored_pixels():
  image = np.full((1, 3, 3), 100, np.uint8)
  label = np.array([[1, 0, 255]])
  out = visualization.overlay(image, label, "pascal", alpha=0.25, ignore_label=255)
  # class 1 = (128, 0, 0): 0.75 * 100 + 0.25 * (128, 0, 0) = (107, 75, 75); class 0 black: 75.
  assert out.tolist() == [[[107, 75, 75], [75, 75, 75], [100, 100, 100]]]
  with pytest.raises(ValueError, match="same size"):
    visualization.overlay(image, np.zeros((2, 3), np.int32), "pascal")
  with pytest.raises(ValueError, match="alpha"):
    visualization.overlay(image, label, "pascal", alpha=1.5)


def test_side_by_side_panels(tmp_path):
  image = np.full((2, 3, 3), 7, np.uint8)
  label = np.array([[0, 1, 1], [1, 1, 255]])
  prediction = np.ones((2, 3), np.int32)
  panel = visualization.side_by_side(image, label, prediction, "pascal", gap=2)
  assert panel.shape == (2, 3 * 3 + 2 * 2, 3)
  assert panel[0, 0].tolist() == [7, 7, 7]
  assert panel[0, 3].tolist() == [255, 255, 255]                # gap
  assert panel[1, 7].tolist() == [224, 224, 192]                # ignore 255 in VOC's boundary colour
  assert panel[0, 10].tolist() == [128, 0, 0]                   # prediction class 1
  path = visualization.save_image_png(panel, str(tmp_path / "panel.png"))
  np.testing.assert_array_equal(np.array(Image.open(path)), panel)
  assert visualization.side_by_side(image, None, prediction, "pascal").shape == (2, 10, 3)


def test_pngs_on_the_ram_filesystem():
  label = np.array([[0, 1, 2], [20, 255, 3]], np.uint8)
  path = visualization.save_label_png(label, "ram://visualization_test/a/label.png", colormap="pascal")
  np.testing.assert_array_equal(visualization.read_label_png(path), label)
  visualization.save_image_png(np.full((2, 3, 3), 7, np.uint8), "ram://visualization_test/a/image.png")
  assert sorted(tf.io.gfile.listdir("ram://visualization_test/a")) == ["image.png", "label.png"]
  with tf.io.gfile.GFile("ram://visualization_test/a/image.png", "rb") as f:
    assert np.asarray(Image.open(f)).tolist() == np.full((2, 3, 3), 7).tolist()
