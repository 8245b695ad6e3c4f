"""build_dataset over shards written at test time, and over a tiny tensorflow-datasets dataset."""
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from deeplab_tf.data import pipeline, writer


def _write_shards(tmp_path, sizes=((20, 30), (24, 16), (18, 18), (10, 12))):
  records = []
  for i, (h, w) in enumerate(sizes):
    label = np.full((h, w), i, np.uint8)
    image = writer.ImageData(np.full((h, w, 3), i, np.uint8))
    records.append(writer.make_example(f"img{i}", image, label, num_classes=5, ignore_label=255,
                                       image_path="x", label_path="y").serialized)
  writer.write_split(records, output_dir=str(tmp_path), split="train", num_examples=len(records), num_shards=2)
  return str(tmp_path / "train-*.tfrecord")


def test_training_batches(tmp_path):
  ds = pipeline.build_dataset(_write_shards(tmp_path), is_training=True, crop_size=(16, 16), batch_size=3,
                              ignore_label=255, seed=3)
  batch = next(iter(ds))
  assert batch["image"].shape == (3, 16, 16, 3) and batch["image"].dtype == tf.float32
  assert batch["label"].shape == (3, 16, 16, 1) and batch["label"].dtype == tf.int32
  assert batch["image_name"].shape == (3,) and batch["height"].dtype == tf.int32
  for k in range(3):
    index = int(batch["image_name"][k].numpy().decode()[3:])
    labels = set(np.unique(batch["label"][k].numpy()))
    assert labels <= {index, 255}
    image, label = batch["image"][k].numpy()[..., 0], batch["label"][k].numpy()[..., 0]
    np.testing.assert_array_equal(image[label == index], index)
  def first_batches():
    ds = pipeline.build_dataset(str(tmp_path / "train-*"), is_training=True, crop_size=(16, 16),
                                batch_size=3, ignore_label=255, seed=3)
    return [(b["image_name"].numpy().tolist(), b["label"].numpy()) for b in ds.take(3)]

  first, again = first_batches(), first_batches()
  assert [n for n, _ in first] == [n for n, _ in again]  # a seed makes it reproducible
  for (_, a), (_, b) in zip(first, again):
    np.testing.assert_array_equal(a, b)


def test_eval_with_and_without_crop(tmp_path):
  pattern = _write_shards(tmp_path)
  batches = list(pipeline.build_dataset(pattern, is_training=False, crop_size=(25, 33), batch_size=3,
                                        ignore_label=255))
  assert [b["image"].shape[0] for b in batches] == [3, 1]
  assert batches[0]["image_name"].numpy().tolist() == [b"img0", b"img1", b"img2"]
  np.testing.assert_array_equal(batches[0]["height"], [20, 24, 18])
  assert batches[0]["label"].shape == (3, 25, 33, 1) and batches[0]["label"][0, 20, 0, 0] == 255
  single = list(pipeline.build_dataset(pattern, is_training=False, crop_size=None, batch_size=1,
                                       ignore_label=255))
  assert [tuple(b["label"].shape[1:3]) for b in single] == [(20, 30), (24, 16), (18, 18), (10, 12)]
  with pytest.raises(ValueError, match="batch_size 1"):
    pipeline.build_dataset(pattern, is_training=False, crop_size=None, batch_size=2, ignore_label=255)
  with pytest.raises(tf.errors.InvalidArgumentError, match="img0"):
    list(pipeline.build_dataset(pattern, is_training=False, crop_size=(16, 40), batch_size=1, ignore_label=255))
  with pytest.raises(ValueError, match="No file matches"):
    pipeline.build_dataset(str(tmp_path / "val-*"), is_training=False, crop_size=None, batch_size=1,
                           ignore_label=255)


def test_each_input_pipeline_reads_its_own_part(tmp_path):
  pattern = _write_shards(tmp_path)
  names = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    ds = pipeline.build_dataset(pattern, is_training=False, crop_size=(33, 33), batch_size=4,
                                ignore_label=255, input_context=context)
    batches = list(ds)
    assert all(b["image"].shape[0] <= 2 for b in batches)  # per-replica batch of the global 4
    names.append({n for b in batches for n in b["image_name"].numpy().tolist()})
  assert names[0].isdisjoint(names[1]) and names[0] | names[1] == {b"img0", b"img1", b"img2", b"img3"}


class TinySegmentation(tfds.core.GeneratorBasedBuilder):
  """A tfds dataset built at test time, with scene_parse150's feature layout."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "annotation": tfds.features.Image(shape=(None, None, 1))}))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples()}

  def _generate_examples(self):
    for i in range(3):
      yield i, {"image": np.full((12 + i, 10, 3), 10 * i, np.uint8),
                "annotation": np.full((12 + i, 10, 1), i, np.uint8)}


def test_reads_a_prepared_tfds_dataset(tmp_path):
  TinySegmentation(data_dir=str(tmp_path)).download_and_prepare()
  ds = pipeline.build_dataset(None, tfds_name="tiny_segmentation", tfds_split="train",
                              tfds_data_dir=str(tmp_path), tfds_keys=("image", "annotation"),
                              is_training=False, crop_size=(16, 16), batch_size=3, ignore_label=255)
  batch = next(iter(ds))
  assert batch["image"].shape == (3, 16, 16, 3) and batch["label"].shape == (3, 16, 16, 1)
  for k in range(3):
    i = int(batch["image"][k, 0, 0, 0].numpy()) // 10
    assert batch["height"][k] == 12 + i
    assert set(np.unique(batch["label"][k].numpy())) == {i, 255}
  train = pipeline.build_dataset(None, tfds_name="tiny_segmentation", tfds_split="train",
                                 tfds_data_dir=str(tmp_path), tfds_keys=("image", "annotation"),
                                 is_training=True, crop_size=(8, 8), batch_size=2, ignore_label=255, seed=1)
  assert next(iter(train))["label"].shape == (2, 8, 8, 1)


def test_labels_outside_num_classes_stop_with_the_split_flag_and_value(tmp_path):
  pattern = _write_shards(tmp_path)  # img<i> is labelled i everywhere, i = 0..3
  # In range: 4 classes; ignore_label 255 (the training padding) passes too.
  ds = pipeline.build_dataset(pattern, is_training=False, crop_size=None, batch_size=1, ignore_label=255,
                              num_classes=4)
  assert sorted(int(b["label"].numpy().max()) for b in ds) == [0, 1, 2, 3]
  train = pipeline.build_dataset(pattern, is_training=True, crop_size=(32, 32), batch_size=4,
                                 ignore_label=255, seed=1, num_classes=4)
  assert 255 in np.unique(next(iter(train))["label"].numpy())
  # Label 3 with 3 classes: stopped at img3's batch, naming the split, the flag, the value and the image.
  ds = pipeline.build_dataset(pattern, is_training=False, crop_size=None, batch_size=1, ignore_label=255,
                              num_classes=3)
  seen = []
  with pytest.raises(tf.errors.InvalidArgumentError) as error:
    for batch in ds:
      seen.append(batch["image_name"][0].numpy())
  message = str(error.value)
  assert "Labels of the train split (shards " in message and "num_classes=3 (flag --num_classes)" in message, message
  assert "ignore_label=255" in message and "Offending label values:] [3]" in message, message
  assert "img3" in message and b"img3" not in seen and len(seen) == 3, message
  # Without num_classes nothing is checked.
  ds = pipeline.build_dataset(pattern, is_training=False, crop_size=None, batch_size=1, ignore_label=255)
  assert len(list(ds)) == 4


def test_eval_resizes_to_range_and_keeps_the_original_size(tmp_path):
  pattern = _write_shards(tmp_path)
  batches = list(pipeline.build_dataset(pattern, is_training=False, crop_size=None, batch_size=1,
                                        ignore_label=255, min_resize_value=12, max_resize_value=20))
  # 20x30 -> 12x18; 24x16 -> 18x12; 18x18 -> 12x12; 10x12 -> 12x14 (12 * 12/10 = 14.4)
  assert [tuple(b["label"].shape[1:3]) for b in batches] == [(12, 18), (18, 12), (12, 12), (12, 14)]
  np.testing.assert_array_equal([int(b["height"][0]) for b in batches], [20, 24, 18, 10])
  with pytest.raises(ValueError, match="--min_resize_value"):
    pipeline.build_dataset(pattern, is_training=False, crop_size=None, batch_size=1, ignore_label=255,
                           max_resize_value=20)


def test_training_resizes_to_range_before_cropping(tmp_path):
  # every image resized so that its smaller side is 12 (at most 18 on the larger): 20x30 -> 12x18,
  # 24x16 -> 18x12, 18x18 -> 12x12, 10x12 -> 12x14; without random scaling a 12x12 crop never pads
  ds = pipeline.build_dataset(_write_shards(tmp_path), is_training=True, crop_size=(12, 12), batch_size=4,
                              ignore_label=255, seed=1, min_scale_factor=1.0, max_scale_factor=1.0,
                              min_resize_value=12, max_resize_value=18)
  batch = next(iter(ds))
  assert not np.any(batch["label"].numpy() == 255)
