"""Colormaps against the datasets' published colours (research/deeplab get_dataset_colormap.py)."""
import numpy as np
import pytest

from deeplab_tf.data import colormaps


def test_pascal_known_colours():
  cmap = colormaps.get_colormap("pascal")
  assert cmap.shape == (256, 3) and cmap.dtype == np.uint8
  assert cmap[0].tolist() == [0, 0, 0]
  assert cmap[1].tolist() == [128, 0, 0]          # aeroplane
  assert cmap[15].tolist() == [192, 128, 128]     # person
  assert cmap[20].tolist() == [0, 64, 128]        # tv/monitor
  assert cmap[255].tolist() == [224, 224, 192]    # VOC's boundary ("void") colour
  assert len({tuple(c) for c in cmap}) == 256     # the bit interleaving is a bijection


def test_cityscapes_and_ade20k_known_colours():
  city = colormaps.get_colormap("cityscapes")
  assert city[0].tolist() == [128, 64, 128]        # road
  assert city[18].tolist() == [119, 11, 32]        # bicycle
  assert city[19:].max() == 0
  ade = colormaps.get_colormap("ade20k")
  assert ade[0].tolist() == [0, 0, 0]
  assert ade[1].tolist() == [120, 120, 120]        # wall
  assert ade[150].tolist() == [92, 0, 255]
  assert colormaps.num_entries("ade20k") == 151


def test_aliases_and_custom_use_pascal_colours():
  np.testing.assert_array_equal(colormaps.get_colormap("pascal_voc_seg"), colormaps.get_colormap("pascal"))
  np.testing.assert_array_equal(colormaps.get_colormap("custom"), colormaps.get_colormap("pascal"))


def test_label_to_color_image():
  label = np.array([[0, 1], [15, 255]], dtype=np.uint8)
  colored = colormaps.label_to_color_image(label, "pascal")
  assert colored.dtype == np.uint8
  assert colored.tolist() == [[[0, 0, 0], [128, 0, 0]], [[192, 128, 128], [224, 224, 192]]]


@pytest.mark.parametrize("label, name, match", [
    (np.array([[151]]), "ade20k", r"\[0, 151\)"),
    (np.array([[-1]]), "pascal", "got values in"),
    (np.array([[0]]), "no_such_map", "not known"),
    (np.zeros((2, 2, 1), np.int32), "pascal", "2-D"),
    (np.zeros((2, 2), np.float32), "pascal", "integer"),
])
def test_label_to_color_image_errors(label, name, match):
  with pytest.raises(ValueError, match=match):
    colormaps.label_to_color_image(label, name)
