"""Built-in dataset descriptors and custom ones from JSON."""
import json

import numpy as np
import pytest

from deeplab_tf.data import descriptors


def test_builtin_descriptors_match_the_original():
  voc = descriptors.get_descriptor("pascal_voc_seg")
  assert (voc.num_classes, voc.ignore_label, voc.splits_to_sizes["train_aug"]) == (21, 255, 10582)
  assert len(voc.class_names) == 21 and voc.class_names[15] == "person"
  cs = descriptors.get_descriptor("cityscapes")
  assert (cs.num_classes, cs.ignore_label, cs.splits_to_sizes["train_fine"]) == (19, 255, 2975)
  assert cs.class_names[0] == "road" and cs.class_names[18] == "bicycle"
  ade = descriptors.get_descriptor("ade20k")
  assert (ade.num_classes, ade.ignore_label, ade.splits_to_sizes) == (151, 0, {"train": 20210, "val": 2000})
  assert len(ade.class_names) == 151 and ade.class_names[1] == "wall" and ade.class_names[150] == "flag"
  assert ade.class_names[45] == "chest of drawers"


def test_custom_descriptor_round_trip(tmp_path):
  path = tmp_path / "roads.json"
  path.write_text(json.dumps({"name": "roads", "num_classes": 2, "ignore_label": 255,
                              "splits_to_sizes": {"train": 3}, "class_names": ["bg", "road"]}))
  d = descriptors.get_descriptor(str(path))
  assert (d.name, d.num_classes, d.colormap, d.class_names) == ("roads", 2, "custom", ("bg", "road"))
  out = tmp_path / "copy.json"
  descriptors.write_descriptor(d, str(out))
  assert descriptors.get_descriptor(str(out)) == d
  descriptors.write_descriptor(d, "ram://descriptors_test/roads.json")
  assert descriptors.get_descriptor("ram://descriptors_test/roads.json") == d


def test_bad_descriptors_name_the_file(tmp_path):
  path = tmp_path / "bad.json"
  path.write_text(json.dumps({"name": "x", "num_classes": 3, "ignore_label": 255, "class_names": ["a"]}))
  with pytest.raises(ValueError, match="bad.json has 1 class_names for num_classes 3"):
    descriptors.get_descriptor(str(path))
  with pytest.raises(ValueError, match="Unknown dataset 'nope'"):
    descriptors.get_descriptor("nope")


def test_cityscapes_train_ids_map_to_the_label_ids_the_benchmark_scores():
  # research/deeplab vis.py _CITYSCAPES_TRAIN_ID_TO_EVAL_ID
  original = [7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33]
  assert list(descriptors.CITYSCAPES_TRAIN_ID_TO_LABEL_ID) == original
  np.testing.assert_array_equal(
      descriptors.cityscapes_train_ids_to_label_ids(np.array([[0, 18], [5, 0]], np.uint8)), [[7, 33], [17, 7]])
  with pytest.raises(ValueError, match="train ids must lie in"):
    descriptors.cityscapes_train_ids_to_label_ids(np.array([19]))
