"""deeplab_train and deeplab_eval at the edge: a user's mistake or a data fault is one `error:` line
(no traceback), and the dataset descriptor beside the shards gives the classes (issues 21 and 22)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags

from deeplab_tf.bin import train as train_bin
from deeplab_tf.data import writer
from deeplab_tf.errors import UserError

import helpers

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def _write_data(folder, descriptor=True):
  rng = np.random.default_rng(0)
  records = []
  for i in range(2):
    label = rng.integers(0, 3, (40, 40), dtype=np.uint8)
    image = writer.ImageData(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8))
    records.append(writer.make_example(f"img{i}", image, label, num_classes=3, ignore_label=255,
                                       image_path="x", label_path="y").serialized)
  writer.write_split(records, output_dir=str(folder), split="train", num_examples=2, num_shards=1)
  if descriptor:
    (folder / "shapes.json").write_text(json.dumps({
        "name": "shapes", "num_classes": 3, "ignore_label": 255, "splits_to_sizes": {"train": 2},
        "class_names": ["background", "circle", "square"]}))
  return folder


def _run(module, *args):
  """Runs a binary; returns (status, its `error:` lines, stderr)."""
  env = dict(os.environ, PYTHONPATH=os.path.abspath(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  process = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                           env=env, timeout=600)
  errors = [line for line in process.stderr.splitlines() if ": error: " in line]
  return process.returncode, errors, process.stderr


def _assert_one_line(result, *expected):
  status, errors, stderr = result
  assert status == 2 and "Traceback" not in stderr, stderr[-3000:]
  assert len(errors) == 1, stderr[-3000:]
  for text in expected:
    assert text in errors[0], errors[0]
  return errors[0]


TRAIN_ARGS = ["--train_crop_size=17,17", "--train_batch_size=2", "--training_number_of_steps=2",
              "--seed=1"]


@pytest.fixture
def tiny_deeplab(monkeypatch):
  """deeplab_train's model is `helpers.tiny_model` (17x17 crops): the data faults below are found
  while training, and a real DeepLab would only make the test slower."""
  from deeplab_tf.training import trainer
  monkeypatch.setattr(trainer, "build_deeplab", lambda options, input_shape=None: helpers.tiny_model(options))


def test_user_mistakes_are_one_line(tmp_path):
  """Run as binaries: one `error:` line, exit status 2, no traceback."""
  data = _write_data(tmp_path / "data")
  _assert_one_line(_run("deeplab_tf.bin.train", f"--dataset_dir={data}", "--train_split=trian",
                        f"--train_logdir={tmp_path / 'log'}", *TRAIN_ARGS),
                   "--train_split=trian", "['train']")
  (tmp_path / "empty").mkdir()
  _assert_one_line(_run("deeplab_tf.bin.eval", f"--checkpoint_dir={tmp_path / 'empty'}",
                        f"--dataset_dir={data}", "--eval_split=train",
                        "--max_number_of_evaluations=1"),
                   str(tmp_path / "empty"), "no checkpoint found")


def _one_line_error(*args):
  flags.FLAGS(["deeplab_train", *args])
  try:
    with pytest.raises((UserError, app.UsageError)) as error:
      train_bin.main([])
  finally:
    flags.FLAGS.unparse_flags()
  assert "\n" not in str(error.value), str(error.value)
  return str(error.value)


def test_num_classes_contradicting_the_descriptor_is_refused(tmp_path):
  data = _write_data(tmp_path / "data")
  message = _one_line_error(f"--dataset_dir={data}", "--num_classes=21",
                            f"--train_logdir={tmp_path / 'log'}", *TRAIN_ARGS)
  assert "--num_classes=21 contradicts" in message and "shapes.json" in message, message
  assert "3 classes: background, circle, square" in message, message


def test_a_truncated_shard_is_named(tmp_path, tiny_deeplab):
  data = _write_data(tmp_path / "data")
  shard = tf.io.gfile.glob(str(data / "train-*.tfrecord"))[0]
  with open(shard, "r+b") as f:
    f.truncate(os.path.getsize(shard) - 100)
  message = _one_line_error(f"--dataset_dir={data}", f"--train_logdir={tmp_path / 'log'}",
                            *TRAIN_ARGS)
  assert shard in message and "truncated or corrupted" in message, message
  assert "truncated record" in message and "Re-run the datasets/ converter" in message, message


def test_a_shard_with_other_feature_keys_is_named_with_the_missing_keys(tmp_path, tiny_deeplab):
  data = _write_data(tmp_path / "data")
  shard = tf.io.gfile.glob(str(data / "train-*.tfrecord"))[0]
  other = tf.train.Example(features=tf.train.Features(feature={
      "image/jpeg": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\xff\xd8"])),
      "mask/png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"\x89PNG"]))}))
  with tf.io.TFRecordWriter(shard) as f:
    for _ in range(2):
      f.write(other.SerializeToString())
  message = _one_line_error(f"--dataset_dir={data}", f"--train_logdir={tmp_path / 'log'}",
                            *TRAIN_ARGS)
  assert "Record lacks feature(s) image/encoded, image/segmentation/class/encoded" in message, message
  assert f"in shard {shard}" in message and "re-run the datasets/ converter" in message, message


def test_without_dataset_the_descriptor_beside_the_shards_gives_the_classes(tmp_path, parse_flags):
  data = _write_data(tmp_path / "data")
  parse_flags(f"--dataset_dir={data}", f"--train_logdir={tmp_path / 'log'}")
  model_options, _, descriptor = train_bin.options_from_flags()
  assert model_options.num_classes == 3 and descriptor.name == "shapes"
  assert descriptor.class_names == ("background", "circle", "square")
  # An explicit --dataset still wins, as in research/deeplab.
  flags.FLAGS.unparse_flags()
  parse_flags(f"--dataset_dir={data}", f"--train_logdir={tmp_path / 'log'}", "--dataset=ade20k")
  model_options, _, descriptor = train_bin.options_from_flags()
  assert model_options.num_classes == 151 and descriptor.ignore_label == 0
