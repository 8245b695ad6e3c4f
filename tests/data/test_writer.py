"""Input validation and atomic sharded writing: each bad input gives an error naming the file and the fix."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from deeplab_tf.data import colormaps, writer

VOC = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples", "voc2012_sample")
JPG = os.path.join(VOC, "JPEGImages", "2011_000003.jpg")
PNG = os.path.join(VOC, "SegmentationClass", "2011_000003.png")


def test_truncated_jpeg_and_png_are_refused(tmp_path):
  for source, name in ((JPG, "cut.jpg"), (PNG, "cut.png")):
    data = open(source, "rb").read()
    path = tmp_path / name
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(writer.InputError, match=f"Unreadable .* file {path}.*truncated"):
      (writer.read_image if name.endswith("jpg") else writer.read_label)(str(path))


def test_missing_label_file_is_refused(tmp_path):
  with pytest.raises(writer.InputError, match=f"Missing label file {tmp_path}/none.png: it does not exist"):
    writer.read_label(str(tmp_path / "none.png"))


def test_rgb_mask_refused_unless_converted_through_the_palette(tmp_path):
  ids = np.asarray(Image.open(PNG))
  rgb = colormaps.get_colormap("pascal")[ids]
  path = tmp_path / "colour.png"
  Image.fromarray(rgb).save(path)
  with pytest.raises(writer.InputError, match=f"Label file {path} is a colour .*--convert_rgb_masks"):
    writer.read_label(str(path))
  np.testing.assert_array_equal(writer.read_label(str(path), palette=colormaps.get_colormap("pascal")), ids)


def test_size_mismatch_and_bad_label_values_are_refused():
  image = writer.read_image(JPG)
  label = writer.read_label(PNG)
  with pytest.raises(writer.InputError, match="is 500x338 .* but its label lab.png is 499x338"):
    writer.make_example("a", image, label[:, :-1], num_classes=21, ignore_label=255, image_path=JPG,
                        label_path="lab.png")
  bad = label.copy()
  bad[0, 0] = 37
  with pytest.raises(writer.InputError, match=r"lab.png has value\(s\) \[37\] .*ignore_label 255. Use X"):
    writer.make_example("a", image, bad, num_classes=21, ignore_label=255, image_path=JPG,
                        label_path="lab.png", label_fix="Use X.")


def test_16bit_gray_is_stretched_and_replicated(tmp_path):
  values = np.array([[100, 1100], [2100, 600]], np.uint16)
  path = tmp_path / "g16.png"
  Image.fromarray(values).save(path)
  image = writer.read_image(str(path))
  assert image.encoded is None and image.pixels.dtype == np.uint8 and image.pixels.shape == (2, 2, 3)
  np.testing.assert_array_equal(image.pixels[..., 0], [[0, 128], [255, 64]])  # round((v-100)*255/2000)
  np.testing.assert_array_equal(image.pixels[..., 0], image.pixels[..., 2])


def test_label_map():
  assert writer.parse_label_map("0:0,255:1") == {0: 0, 255: 1}
  np.testing.assert_array_equal(writer.apply_label_map(np.array([[0, 255]]), {0: 0, 255: 1}, "m"), [[0, 1]])
  with pytest.raises(writer.InputError, match=r"m has value\(s\) \[7\] that --label_map 0:0,255:1"):
    writer.apply_label_map(np.array([[0, 7]]), {0: 0, 255: 1}, "m")
  with pytest.raises(ValueError, match="'0-1'"):
    writer.parse_label_map("0-1")


def test_output_directory_that_is_not_writable(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  with pytest.raises(writer.InputError, match=f"Output directory {blocker}/out is not writable"):
    writer.write_split([b"r"], output_dir=str(blocker / "out"), split="train", num_examples=1, num_shards=1)


def test_interrupted_write_leaves_no_shard_and_a_rerun_completes(tmp_path):
  def records(fail_at):
    for i in range(10):
      if i == fail_at:
        raise KeyboardInterrupt
      yield f"record {i}".encode()

  with pytest.raises(KeyboardInterrupt):
    writer.write_split(records(5), output_dir=str(tmp_path), split="train", num_examples=10, num_shards=3)
  assert os.listdir(tmp_path) == []
  paths = writer.write_split(records(None), output_dir=str(tmp_path), split="train", num_examples=10,
                             num_shards=3)
  assert sorted(os.listdir(tmp_path)) == [f"train-0000{i}-of-00003.tfrecord" for i in range(3)]
  assert [writer.count_records([p]) for p in paths] == [4, 4, 2]
  # a re-run with fewer shards replaces the old ones
  writer.write_split(records(None), output_dir=str(tmp_path), split="train", num_examples=10, num_shards=2)
  assert sorted(os.listdir(tmp_path)) == ["train-00000-of-00002.tfrecord", "train-00001-of-00002.tfrecord"]


def test_read_and_write_on_the_ram_filesystem():
  folder = "ram://writer_test"
  tf.io.gfile.makedirs(folder)
  tf.io.gfile.copy(JPG, folder + "/a.jpg", overwrite=True)
  tf.io.gfile.copy(PNG, folder + "/a.png", overwrite=True)
  image = writer.read_image(folder + "/a.jpg")
  assert image.encoded == open(JPG, "rb").read() and image.image_format == "jpeg"
  np.testing.assert_array_equal(writer.read_label(folder + "/a.png"), np.asarray(Image.open(PNG)))
  with pytest.raises(writer.InputError, match=f"Missing label file {folder}/none.png"):
    writer.read_label(folder + "/none.png")
  out = folder + "/out"
  paths = writer.write_split([b"r0", b"r1", b"r2"], output_dir=out, split="val", num_examples=3,
                             num_shards=2)
  assert sorted(tf.io.gfile.listdir(out)) == ["val-00000-of-00002.tfrecord", "val-00001-of-00002.tfrecord"]
  assert [writer.count_records([p]) for p in paths] == [2, 1]
  writer.write_split([b"r0"], output_dir=out, split="val", num_examples=1, num_shards=1)
  assert tf.io.gfile.listdir(out) == ["val-00000-of-00001.tfrecord"]  # Stale shards removed.
