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


def _colour_pixels(picture, colour):
  return int(np.all(picture == np.array(colour, np.uint8), axis=-1).sum())


def test_legend_lists_only_the_classes_present_with_their_colours():
  image = np.full((40, 120, 3), 200, np.uint8)
  label = np.zeros((40, 120), np.int32)
  label[:, 60:] = 15                                               # person: (192, 128, 128)
  names = [f"class{i}" for i in range(21)]
  out = visualization.overlay(image, label, "pascal", alpha=1.0, class_names=names)
  assert out.shape[0] > 40 and out.shape[1] == 120                 # a legend strip below, same width
  np.testing.assert_array_equal(out[:40], visualization.overlay(image, label, "pascal", alpha=1.0))
  strip = out[40:]
  assert _colour_pixels(strip, (192, 128, 128)) >= 100             # the person swatch (12x12 minus outline)
  assert _colour_pixels(strip, (128, 0, 0)) == 0                   # class 1 is absent: no swatch
  assert (strip < 100).any(axis=-1).sum() > 50                     # dark text pixels (the names)
  # Without class_names nothing changes (predict and vis callers of the old signature).
  assert visualization.overlay(image, label, "pascal").shape == image.shape
  # More classes, more entries: the legend grows.
  three = label.copy()
  three[:10] = 1
  assert visualization.legend(np.unique(three), "pascal", names, width=120).shape[0] >= \
      visualization.legend(np.unique(label), "pascal", names, width=120).shape[0]
  assert _colour_pixels(visualization.legend([0, 1, 15], "pascal", names, width=120), (128, 0, 0)) >= 100


def test_panel_legend_names_the_ignore_label():
  image = np.full((20, 20, 3), 9, np.uint8)
  label = np.array([[0] * 10 + [255] * 10] * 20)
  prediction = np.ones((20, 20), np.int32)
  panel = visualization.side_by_side(image, label, prediction, "pascal", class_names=["bg", "cat"],
                                     ignore_label=255)
  assert panel.shape[1] >= 3 * 20 + 2 * visualization.PANEL_GAP and panel.shape[0] > 20
  strip = panel[20:]
  for colour in ((0, 0, 0), (128, 0, 0), (224, 224, 192)):        # bg, cat and the ignore colour
    assert _colour_pixels(strip, colour) >= 80
  assert visualization.class_display_name(255, ["bg", "cat"], 255) == "ignore"
  assert visualization.class_display_name(1, ["bg", "cat"], 255) == "cat"


def _cell_pixel(figure, row, column, picture):
  """The picture's colour near (not at: the percentage is printed there) the centre of a heat-map cell."""
  x, y = figure.axes[0].transData.transform((column - 0.3, row - 0.3))
  return picture[int(round(picture.shape[0] - y)), int(round(x))]


def test_confusion_matrix_image_shows_the_row_normalised_matrix(tmp_path):
  from matplotlib import colormaps
  matrix = np.array([[90, 10, 0], [0, 0, 50], [0, 0, 0]])     # row 0: 90% right; row 1: all to class 2
  figure = visualization.plot_confusion_matrix(matrix, ["sky", "road", "car"])
  picture = visualization.figure_to_array(figure)
  blues = colormaps["Blues"]

  def rgb(fraction):
    return np.round(np.array(blues(fraction)[:3]) * 255)
  for (row, column), fraction in {(0, 0): 0.9, (0, 1): 0.1, (1, 2): 1.0, (1, 1): 0.0, (2, 2): 0.0}.items():
    np.testing.assert_allclose(_cell_pixel(figure, row, column, picture), rgb(fraction), atol=2,
                               err_msg=f"cell {row}, {column}")  # atol: Agg's anti-aliasing rounding
  tick_labels = [t.get_text() for t in figure.axes[0].get_yticklabels()]
  assert tick_labels == ["sky", "road", "car"]
  path = visualization.save_image_png(visualization.confusion_matrix_image(matrix, ["sky", "road", "car"]),
                                      str(tmp_path / "cm.png"))
  np.testing.assert_array_equal(np.array(Image.open(path)), picture)
  with pytest.raises(ValueError, match="2 class names for 3 classes"):
    visualization.plot_confusion_matrix(matrix, ["a", "b"])


def test_class_iou_chart_bars_follow_the_ious():
  low = visualization.class_iou_image([0.2, 0.5, None], ["a", "b", "c"], miou=0.35)
  high = visualization.class_iou_image([0.9, 0.5, None], ["a", "b", "c"], miou=0.7)
  assert low.shape == high.shape and not np.array_equal(low, high)
  figure = visualization.plot_class_iou([0.2, 0.9], ["a", "b"], colormap="pascal")
  picture = visualization.figure_to_array(figure)
  axes = figure.axes[0]

  def colour_at(x_percent, row):
    x, y = axes.transData.transform((x_percent, row))
    return picture[int(round(picture.shape[0] - y)), int(round(x))].tolist()
  assert colour_at(10, 0) == [0, 0, 0]          # class a (pascal black) has a bar to 20%
  assert colour_at(50, 0) == [255, 255, 255]    # ... and none at 50%
  assert colour_at(50, 1) == [128, 0, 0]        # class b (pascal red) reaches past 50%
