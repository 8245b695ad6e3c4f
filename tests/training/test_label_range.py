"""deeplab_train on shards whose labels exceed --num_classes stops at the input, with a clear message.

Without the pipeline's check (`deeplab_tf.data.pipeline.check_label_range`) a label 5 with 3 classes
stopped only inside the loss with TensorFlow's raw error on CPU, and gave NaN silently on GPU.
"""
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from deeplab_tf.bin import train as train_bin
from deeplab_tf.data import writer
from deeplab_tf.errors import UserError


def test_label_5_with_3_classes_names_the_split_flag_and_value(tmp_path):
  rng = np.random.default_rng(0)
  records = []
  for i in range(2):
    label = rng.choice(np.array([0, 1, 5, 255], np.uint8), size=(40, 40))
    image = writer.ImageData(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    records.append(writer.make_example(f"img{i}", image, label, num_classes=6, ignore_label=255,
                                       image_path="x", label_path="y").serialized)
  writer.write_split(records, output_dir=str(tmp_path / "data"), split="train", num_examples=2,
                     num_shards=1)
  flags.FLAGS(["deeplab_train", f"--dataset_dir={tmp_path / 'data'}", f"--train_logdir={tmp_path / 'log'}",
               "--dataset=pascal_voc_seg", "--num_classes=3", "--train_split=train",
               "--model_variant=mobilenet_v2", "--train_crop_size=33,33", "--train_batch_size=2",
               "--training_number_of_steps=2", "--seed=1"])
  try:
    with pytest.raises(UserError) as error:  # one line at the binary's edge
      train_bin.main([])
  finally:
    flags.FLAGS.unparse_flags()
  message = str(error.value)
  assert "\n" not in message, message
  assert "Labels of the train split (shards " in message, message
  assert "num_classes=3 (flag --num_classes)" in message and "ignore_label=255" in message, message
  assert "Offending label values: 5 in images: img" in message, message
  assert tf.train.latest_checkpoint(str(tmp_path / "log")) is None  # stopped before any step


def test_a_bad_label_outside_every_crop_is_found_in_the_whole_label(tmp_path):
  """Label 7 on one corner pixel of a 120x120 label with 3 classes: 17x17 crops (seeded) never hold
  it, so a check of the crops let 4 batches through; the whole label is checked once, when parsed."""
  from deeplab_tf.data import pipeline
  rng = np.random.default_rng(0)
  label = rng.integers(0, 3, (120, 120), dtype=np.uint8)
  label[0, 0] = 7
  image = writer.ImageData(rng.integers(0, 256, (120, 120, 3), dtype=np.uint8))
  record = writer.make_example("corner7", image, label, num_classes=8, ignore_label=255,
                               image_path="x", label_path="y").serialized
  writer.write_split([record], output_dir=str(tmp_path), split="train", num_examples=1, num_shards=1)
  dataset = pipeline.build_dataset(str(tmp_path / "train-*.tfrecord"), is_training=True,
                                   crop_size=(17, 17), batch_size=1, ignore_label=255,
                                   min_scale_factor=1.0, max_scale_factor=1.0,
                                   scale_factor_step_size=0.0, seed=3, num_classes=3)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"Offending label values:\] \[7\]"):
    for batch in dataset.take(4):
      assert int(batch["label"].numpy().max()) < 3  # the crops themselves hold no 7
