"""deeplab_train end to end on TFRecords of real VOC photos, through the data room's pipeline."""
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import app, flags
from PIL import Image

from deeplab_tf.bin import train as train_bin
from deeplab_tf.data import features, writer

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "datasets", "samples", "voc2012_sample")


def _write_shard(dataset_dir):
  records = []
  for name in ("2011_000003", "2011_000006"):
    with open(os.path.join(SAMPLES, "JPEGImages", name + ".jpg"), "rb") as f:
      jpeg = f.read()
    label = np.asarray(Image.open(os.path.join(SAMPLES, "SegmentationClass", name + ".png")))
    height, width = label.shape
    records.append(features.encode_example(jpeg, writer.encode_png(label), filename=name,
                                           height=height, width=width))
  writer.write_split(records, output_dir=str(dataset_dir), split="train", num_examples=2,
                     num_shards=1)


def test_train_binary_trains_and_writes_checkpoint_options_and_summaries(tmp_path, parse_flags):
  _write_shard(tmp_path / "data")
  args = [f"--dataset_dir={tmp_path / 'data'}", f"--train_logdir={tmp_path / 'log'}",
          "--dataset=pascal_voc_seg", "--train_split=train", "--model_variant=mobilenet_v2",
          "--train_crop_size=33,33", "--train_batch_size=2", "--training_number_of_steps=2",
          "--base_learning_rate=0.01", "--save_summaries_steps=1", "--log_steps=1", "--seed=1",
          "--save_summaries_images", "--validation_split=train", "--validation_max_images=1"]
  parse_flags(*args)
  train_bin.main([])
  assert tf.train.latest_checkpoint(str(tmp_path / "log")).endswith("ckpt-2")
  from deeplab_tf import model_io
  options = model_io.load_model_options(str(tmp_path / "log"))
  assert options.model_variant == "mobilenet_v2" and options.num_classes == 21
  tags, validation = set(), []
  for event_file in tf.io.gfile.glob(str(tmp_path / "log" / "events.out.tfevents.*")):
    for event in tf.compat.v1.train.summary_iterator(event_file):
      tags.update(v.tag for v in event.summary.value)
      validation += [(event.step, float(tf.make_ndarray(v.tensor))) for v in event.summary.value
                     if v.tag == "validation/miou"]
  assert {"total_loss", "learning_rate", "samples/image", "samples/prediction"} <= tags
  # --validation_split: mIoU of one image after the (final) checkpoint at step 2.
  assert len(validation) == 1 and validation[0][0] == 2 and 0.0 <= validation[0][1] <= 1.0


def test_bad_flags_are_named(tmp_path, parse_flags):
  parse_flags(f"--train_logdir={tmp_path}", f"--dataset_dir={tmp_path}", "--train_crop_size=513")
  with pytest.raises(app.UsageError, match="--train_crop_size=513"):
    train_bin.main([])
  flags.FLAGS.unparse_flags()
  parse_flags(f"--train_logdir={tmp_path}", f"--dataset_dir={tmp_path}", "--strategy=tpu")
  with pytest.raises(app.UsageError, match="--tpu"):
    train_bin.main([])
  flags.FLAGS.unparse_flags()
  parse_flags(f"--train_logdir={tmp_path}", "--dataset_dir=/nonexistent")
  with pytest.raises(app.UsageError, match="--dataset_dir"):
    train_bin.main([])


EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments")


@pytest.mark.parametrize("name,expected", [
    ("voc_trainaug_xception65_os16", (21, 16, (6, 12, 18), (513, 513), 16, 30000, 0.007, True)),
    ("voc_trainval_xception65_os8_finetune", (21, 8, (12, 24, 36), (513, 513), 16, 30000, 0.001,
                                              False)),
    ("cityscapes_xception65_os16", (19, 16, (6, 12, 18), (769, 769), 8, 90000, 0.007, True)),
    ("ade20k_xception65_os16", (151, 16, (6, 12, 18), (513, 513), 16, 150000, 0.007, True)),
])
def test_experiment_flagfiles(parse_flags, name, expected):
  parse_flags(f"--flagfile={os.path.join(EXPERIMENTS, name + '.flags')}")
  model, train, _ = train_bin.options_from_flags()
  assert (model.num_classes, model.output_stride, model.atrous_rates,
          train.augmentation.train_crop_size, train.solver.train_batch_size,
          train.solver.training_number_of_steps, train.solver.base_learning_rate,
          train.batch_norm.fine_tune_batch_norm) == expected
  assert model.model_variant == "xception_65" and model.decoder_output_stride == 4


def test_train_binary_on_ram_filesystem_writes_nothing_locally(tmp_path, parse_flags, monkeypatch,
                                                               caplog):
  # Shards, checkpoints, options and summaries all on TensorFlow's in-memory filesystem (as on gs://):
  # a stray local file call would miss the shards or leave a local 'ram:' folder in the cwd.
  monkeypatch.chdir(tmp_path)
  data, logdir = "ram://r11_train/data", "ram://r11_train/log"
  _write_shard(data)
  common = [f"--dataset_dir={data}", f"--train_logdir={logdir}", "--dataset=pascal_voc_seg",
            "--model_variant=mobilenet_v2", "--train_crop_size=33,33", "--train_batch_size=2",
            "--base_learning_rate=0.01", "--seed=1", "--save_interval_steps=1"]
  parse_flags(*common, "--training_number_of_steps=2")
  train_bin.main([])
  assert tf.train.latest_checkpoint(logdir).endswith("ckpt-2")
  from deeplab_tf import model_io
  assert model_io.load_model_options(logdir).model_variant == "mobilenet_v2"
  assert tf.io.gfile.glob(logdir + "/events.out.tfevents.*")
  # Re-running resumes from ram:// (steps 3..3): ckpt-2 reads back, no fresh start.
  flags.FLAGS.unparse_flags()
  parse_flags(*common, "--training_number_of_steps=3")
  with caplog.at_level("INFO", logger="absl"):
    train_bin.main([])
  assert not [r for r in caplog.records if "unreadable" in r.getMessage()]
  assert any("Finished at step 3 (started at step 2)" in r.getMessage() for r in caplog.records)
  assert tf.train.latest_checkpoint(logdir).endswith("ckpt-3")
  assert tf.compat.v1.train.NewCheckpointReader(logdir + "/ckpt-3").get_tensor(
      "step/.ATTRIBUTES/VARIABLE_VALUE") == 3
  assert os.listdir(tmp_path) == []
  tf.io.gfile.rmtree("ram://r11_train")


def _checkpoint_bytes(prefix):
  return sum(tf.io.gfile.stat(f).length for f in tf.io.gfile.glob(prefix + ".*"))


def test_checkpoints_hold_weights_and_optimizer_state_not_input_buffers(tmp_path):
  from deeplab_tf.options import ModelOptions, TrainOptions  # pylint: disable=import-outside-toplevel
  from deeplab_tf.training import trainer  # pylint: disable=import-outside-toplevel
  _write_shard(tmp_path / "data")
  pattern = str(tmp_path / "data" / "train-*.tfrecord")
  model_options = ModelOptions(model_variant="mobilenet_v2", num_classes=21)
  options = TrainOptions(train_crop_size=(33, 33), train_batch_size=2, training_number_of_steps=2,
                         save_interval_steps=2, seed=1)
  result = trainer.train(model_options, options, pattern, str(tmp_path / "log"))
  # Weights (with BN moving statistics) plus one momentum slot per trainable weight; 256 KiB covers
  # the object graph, the step, the seed and the index of ~700 names (measured 100 KiB).
  bound = (sum(v.numpy().nbytes for v in result.model.weights)
           + sum(v.numpy().nbytes for v in result.model.trainable_weights) + 256 * 1024)
  assert _checkpoint_bytes(result.checkpoint_path) <= bound
  # The same run saving the input iterator holds its shuffle and prefetch buffers of decoded images.
  buffered = trainer.train(model_options, options, pattern, str(tmp_path / "buffered"),
                           checkpoint_input_pipeline=True)
  assert _checkpoint_bytes(buffered.checkpoint_path) > bound
