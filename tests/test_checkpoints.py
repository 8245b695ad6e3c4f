"""Import of research/deeplab TF1 checkpoints: error paths, last-layer skipping, archives, conversion.

They use MobileNetV2 (DeepLabv3, the smallest published model). The Xception-65 equivalence case against
the original's outputs is in tests/model/test_variants.py, which builds that model anyway.
"""

import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import tensorflow as tf

import deeplab_tf
import reference_case as rc
from deeplab_tf import model_io
from deeplab_tf.checkpoints import (CheckpointMismatchError, convert_tf1_checkpoint,
                                    load_tf1_checkpoint, resolve_tf1_checkpoint,
                                    save_keras_atomically)

MOBILENET = rc.VARIANT_CASES["mobilenet_v2"][0]


@pytest.fixture(scope="module")
def mobilenet_vars():
  return rc.load_vars("mobilenet_v2")


@pytest.fixture(scope="module")
def mobilenet_model():
  return deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**MOBILENET))


@pytest.fixture(scope="module")
def mobilenet_19_model():
  return deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**dict(MOBILENET, num_classes=19)))


def _write(tmp_path, names_and_shapes, value_fn=rc.cheap_value):
  return rc.write_checkpoint_from_vars(str(tmp_path / "model.ckpt"), names_and_shapes, value_fn)


def test_missing_variable(tmp_path, mobilenet_model, mobilenet_vars):
  dropped = "MobilenetV2/expanded_conv_5/project/weights"
  prefix = _write(tmp_path, [(n, s) for n, s in mobilenet_vars if n != dropped])
  with pytest.raises(CheckpointMismatchError, match="1 missing, 0 unexpected") as info:
    load_tf1_checkpoint(mobilenet_model, prefix)
  assert info.value.missing == [dropped]
  assert dropped in str(info.value) and prefix in str(info.value)


def test_unexpected_variable(tmp_path, mobilenet_model, mobilenet_vars):
  extra = ("aspp1/weights", (3, 3, 320, 256))
  prefix = _write(tmp_path, mobilenet_vars + [extra])
  with pytest.raises(CheckpointMismatchError, match="0 missing, 1 unexpected") as info:
    load_tf1_checkpoint(mobilenet_model, prefix)
  assert info.value.unexpected == ["aspp1/weights"]


def test_wrong_shape(tmp_path, mobilenet_model, mobilenet_vars):
  name = "MobilenetV2/Conv/weights"
  prefix = _write(tmp_path, [(n, (3, 3, 3, 16) if n == name else s) for n, s in mobilenet_vars])
  with pytest.raises(CheckpointMismatchError, match="1 shape mismatches") as info:
    load_tf1_checkpoint(mobilenet_model, prefix)
  assert info.value.shape_mismatches == [(name, (3, 3, 3, 32), (3, 3, 3, 16))]
  assert "model [3, 3, 3, 32] vs checkpoint [3, 3, 3, 16]" in str(info.value)


def test_failed_load_assigns_nothing(tmp_path, mobilenet_vars):
  model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**MOBILENET))
  before = [np.asarray(w).copy() for w in model.weights]
  prefix = _write(tmp_path, mobilenet_vars[1:])
  with pytest.raises(CheckpointMismatchError):
    load_tf1_checkpoint(model, prefix)
  assert all(np.array_equal(b, np.asarray(w)) for b, w in zip(before, model.weights))


def test_21_class_checkpoint_into_19_class_model(tmp_path, mobilenet_19_model, mobilenet_vars):
  prefix = _write(tmp_path, mobilenet_vars, rc.det_value)
  with pytest.raises(CheckpointMismatchError, match="initialize_last_layer=False") as info:
    load_tf1_checkpoint(mobilenet_19_model, prefix)
  assert [n for n, _, _ in info.value.shape_mismatches] == ["logits/semantic/biases",
                                                            "logits/semantic/weights"]
  logits_layer = mobilenet_19_model.get_layer("logits.semantic")
  initial_logits = [np.asarray(w).copy() for w in logits_layer.weights]

  report = load_tf1_checkpoint(mobilenet_19_model, prefix, initialize_last_layer=False)
  assert report.skipped_model == ("logits/semantic/biases", "logits/semantic/weights")
  assert report.skipped_checkpoint == ("logits/semantic/biases", "logits/semantic/weights")
  assert report.assigned == len(mobilenet_vars) - 2
  for before, w in zip(initial_logits, logits_layer.weights):
    np.testing.assert_array_equal(before, np.asarray(w))
  projection = mobilenet_19_model.get_layer("concat_projection").kernel
  np.testing.assert_array_equal(np.asarray(projection),
                                rc.det_value("concat_projection/weights", (1, 1, 512, 256)))


def test_last_layers_beyond_logits(tmp_path, mobilenet_19_model, mobilenet_vars):
  head = ("logits", "image_pooling", "aspp", "concat_projection")
  prefix = _write(tmp_path, [(n, s) for n, s in mobilenet_vars if not n.startswith(head)])
  with pytest.raises(CheckpointMismatchError):
    load_tf1_checkpoint(mobilenet_19_model, prefix, initialize_last_layer=False)
  report = load_tf1_checkpoint(mobilenet_19_model, prefix, initialize_last_layer=False,
                               last_layers_contain_logits_only=False)
  assert all(n.startswith(head) for n in report.skipped_model)
  assert len(report.skipped_model) == 2 + 3 * 5  # logits; image_pooling, aspp0, projection.
  assert report.skipped_checkpoint == ()


def test_bookkeeping_is_ignored(tmp_path, mobilenet_model, mobilenet_vars):
  extra = [("global_step", ()), ("MobilenetV2/Conv/weights/Momentum", (3, 3, 3, 32)),
           ("logits/semantic/weights/ExponentialMovingAverage", (1, 1, 256, 21))]
  prefix = _write(tmp_path, mobilenet_vars + extra)
  report = load_tf1_checkpoint(mobilenet_model, prefix)
  assert sorted(report.skipped_checkpoint) == sorted(n for n, _ in extra)
  assert report.assigned == len(mobilenet_vars)


def test_folder_and_tar_gz(tmp_path, mobilenet_model, mobilenet_vars):
  folder = tmp_path / "deeplabv3_mnv2_pascal_train_aug"
  prefix = rc.write_checkpoint_from_vars(str(folder / "model.ckpt"), mobilenet_vars, rc.cheap_value)
  assert load_tf1_checkpoint(mobilenet_model, str(folder)).checkpoint == prefix
  archive = tmp_path / "deeplabv3_mnv2_pascal_train_aug_2018_01_29.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  report = load_tf1_checkpoint(mobilenet_model, str(archive))
  assert report.assigned == len(mobilenet_vars)
  assert not os.path.exists(report.checkpoint), "the extracted archive is removed afterwards"


def test_folder_tar_gz_and_keras_file_on_the_ram_filesystem(tmp_path, mobilenet_model, mobilenet_vars):
  folder = tmp_path / "deeplabv3_mnv2_pascal_train_aug"
  rc.write_checkpoint_from_vars(str(folder / "model.ckpt"), mobilenet_vars, rc.cheap_value)
  ram = "ram://checkpoints_test/zoo"
  tf.io.gfile.makedirs(ram + "/" + folder.name)
  for name in os.listdir(folder):
    tf.io.gfile.copy(str(folder / name), f"{ram}/{folder.name}/{name}", overwrite=True)
  archive = tmp_path / "zoo.tar.gz"
  with tarfile.open(archive, "w:gz") as tar:
    tar.add(folder, arcname=folder.name)
  tf.io.gfile.copy(str(archive), ram + "/zoo.tar.gz", overwrite=True)
  assert load_tf1_checkpoint(mobilenet_model, f"{ram}/{folder.name}").checkpoint == \
      f"{ram}/{folder.name}/model.ckpt"
  assert load_tf1_checkpoint(mobilenet_model, ram + "/zoo.tar.gz").assigned == len(mobilenet_vars)
  keras_path = save_keras_atomically(mobilenet_model, ram + "/out/model.keras")
  model_io.save_model_options(ram + "/out", deeplab_tf.ModelOptions(**MOBILENET))
  assert sorted(tf.io.gfile.listdir(ram + "/out")) == ["model.keras", "model_options.json"]
  model, _ = model_io.load_model(keras_path)
  np.testing.assert_array_equal(np.asarray(model.get_layer("concat_projection").kernel),
                                rc.cheap_value("concat_projection/weights", (1, 1, 512, 256)))


def test_not_a_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="not a TF1 checkpoint"):
    with resolve_tf1_checkpoint(str(tmp_path / "nothing")):
      pass
  with pytest.raises(FileNotFoundError, match="no checkpoint found"):
    with resolve_tf1_checkpoint(str(tmp_path)):
      pass


def test_convert_checkpoint_binary(tmp_path, mobilenet_vars):
  prefix = _write(tmp_path / "ckpt", mobilenet_vars, rc.det_value)
  out = tmp_path / "converted"
  cmd = [sys.executable, "-m", "deeplab_tf.bin.convert_checkpoint", f"--checkpoint_path={prefix}",
         f"--output_dir={out}", "--model_variant=mobilenet_v2", "--num_classes=21",
         "--output_stride=16"]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"assigned {len(mobilenet_vars)} weights" in done.stdout
  assert sorted(os.listdir(out)) == ["model.keras", "model_options.json", "saved_model"]
  assert os.path.isfile(out / "saved_model" / "saved_model.pb")
  model, options = model_io.load_model(str(out / "model.keras"))
  assert options == deeplab_tf.ModelOptions(**MOBILENET)
  np.testing.assert_array_equal(np.asarray(model.get_layer("concat_projection").kernel),
                                rc.det_value("concat_projection/weights", (1, 1, 512, 256)))



def test_failed_conversion_writes_nothing(tmp_path, mobilenet_vars):
  prefix = _write(tmp_path / "ckpt", mobilenet_vars)
  options = deeplab_tf.ModelOptions(**dict(MOBILENET, atrous_rates=(6, 12, 18)))
  with pytest.raises(CheckpointMismatchError, match="aspp1_depthwise/depthwise_weights"):
    convert_tf1_checkpoint(prefix, options, str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out")


def test_a_model_zoo_checkpoint_that_does_not_fit_is_one_line_for_the_trainer(
    tmp_path, mobilenet_19_model, mobilenet_vars):
  """--tf_initial_checkpoint: the listing above becomes one line (counts, first names, the hint),
  which deeplab_train prints without a traceback."""
  from deeplab_tf import model_io
  from deeplab_tf.errors import UserError
  from deeplab_tf.options import TrainOptions
  from deeplab_tf.training import initialization
  prefix = _write(tmp_path, mobilenet_vars, rc.det_value)
  options = TrainOptions(tf_initial_checkpoint=prefix).initialization
  with pytest.raises(model_io.CheckpointMismatchError) as info:
    initialization.initialize_from_checkpoint(mobilenet_19_model, options)
  message = str(info.value)
  assert isinstance(info.value, UserError) and "\n" not in message, message
  assert message.startswith(f"--tf_initial_checkpoint={prefix}: the checkpoint does not match")
  assert "1 shape mismatches" not in message and "2 shape mismatches" in message, message
  assert "initialize_last_layer=False" in message, message
