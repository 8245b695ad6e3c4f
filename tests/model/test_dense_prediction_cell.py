"""The Dense Prediction Cell: config checks, the original's pooling arithmetic, and the cell's output
against the same computation written out with tf.nn ops (the model-zoo variable list is checked in
test_variants.py, `xception_71_dpc_cityscapes19`)."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import deeplab_tf
from deeplab_tf.model import dense_prediction_cell as dpc
from deeplab_tf.model.layers import scope_to_layer_name

EXPERIMENTS = os.path.join(os.path.dirname(__file__), "..", "..", "experiments")
CITYSCAPES_JSON = "dense_prediction_cell_branch5_top1_cityscapes.json"


def test_pyramid_pooling_arithmetic_is_the_originals():
  # research/deeplab dense_prediction_cell_test.py: crop 513, output stride 16, grid 4x4 -> feature
  # size 33, window 9; grid 1x1 -> window 33.
  assert dpc.pyramid_pooling_kernel((513, 513), 16, (4, 4)) == (9, 9)
  assert dpc.pyramid_pooling_kernel((513, 513), 16, (1, 1)) == (33, 33)
  assert dpc.pyramid_pooling_kernel((769, 1025), 8, (2, 4)) == (49, 33)
  assert dpc.conv_rate_multiplier(16) == 1 and dpc.conv_rate_multiplier(8) == 2
  with pytest.raises(ValueError, match="output_stride=32"):
    dpc.conv_rate_multiplier(32)


def test_packaged_config_loads_by_name_and_from_a_file():
  config = dpc.load_dense_prediction_cell_config(CITYSCAPES_JSON)
  assert [b["input"] for b in config] == [-1, 0, 1, 0, 0]
  assert [b["rate"] for b in config] == [(1, 6), (18, 15), (6, 3), (1, 1), (6, 21)]
  assert all(b["op"] == "conv" and b["kernel"] == (3, 3) for b in config)
  path = "ram://dpc/cell.json"
  with tf.io.gfile.GFile(path, "w") as f:
    f.write(json.dumps([{"op": "conv", "input": -1, "kernel": 1}]))
  assert dpc.load_dense_prediction_cell_config(path) == ({"input": -1, "kernel": (1, 1), "op": "conv"},)
  with pytest.raises(FileNotFoundError, match="no_such.json"):
    dpc.load_dense_prediction_cell_config("no_such.json")
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("[{")
  with pytest.raises(ValueError, match="not valid JSON"):
    dpc.load_dense_prediction_cell_config(path)


@pytest.mark.parametrize("config,match", [
    ([], "non-empty"),
    ([{"op": "conv", "input": 0, "kernel": 1}], "input=0"),
    ([{"op": "conv", "input": -1, "kernel": 3}], "needs 'rate'"),
    ([{"op": "conv", "input": -1, "kernel": 3, "rate": [1, 2, 3]}], "pair of integers"),
    ([{"op": "pool", "input": -1}], "op='pool'"),
    ([{"op": "pyramid_pooling", "input": -1}], "grid_size"),
    ([{"op": "conv", "input": -1, "kernel": 1, "rates": 2}], "unknown key"),
])
def test_bad_configs_are_named(config, match):
  with pytest.raises(ValueError, match=match):
    dpc.normalize_config(config)


def test_options_round_trip_and_need_the_head():
  config = dpc.load_dense_prediction_cell_config(CITYSCAPES_JSON)
  options = deeplab_tf.ModelOptions(model_variant="xception_71", dense_prediction_cell_config=config)
  assert deeplab_tf.ModelOptions.from_json(options.to_json()) == options
  assert hash(deeplab_tf.ModelOptions.from_json(options.to_json())) == hash(options)
  assert json.loads(options.to_json())["dense_prediction_cell_config"][4] == {
      "input": 0, "kernel": [3, 3], "op": "conv", "rate": [6, 21]}
  with pytest.raises(TypeError, match="frozen"):
    options.dense_prediction_cell_config[0]["op"] = "pyramid_pooling"
  with pytest.raises(ValueError, match="aspp_with_batch_norm"):
    deeplab_tf.ModelOptions(dense_prediction_cell_config=config, aspp_with_batch_norm=False)


def test_pyramid_pooling_needs_a_crop_size():
  features = keras.Input((9, 11, 8))
  with pytest.raises(ValueError, match="image_pooling_crop_size"):
    dpc.build_dense_prediction_cell(features, [{"op": "pyramid_pooling", "input": -1,
                                                "grid_size": [1, 2]}], 16)


def _bn(x, model, scope):
  gamma, beta, mean, variance = model.get_layer(scope_to_layer_name(scope + "/BatchNorm")).get_weights()
  return gamma * (x - mean) / np.sqrt(variance + 1e-5) + beta


def _kernel(model, scope):
  return model.get_layer(scope_to_layer_name(scope)).get_weights()[0]


def test_cell_equals_its_definition_written_with_tf_nn():
  # Output stride 8: the rate [1, 2] is doubled to [2, 4] (conv_rate_multiplier); crop 65x81 gives
  # 9x11 features and a 9x6 pooling window for grid [1, 2].
  config = [{"op": "conv", "input": -1, "kernel": 1},
            {"op": "conv", "input": 0, "kernel": 3, "rate": [1, 2]},
            {"op": "pyramid_pooling", "input": 1, "grid_size": [1, 2]}]
  inputs = keras.Input((9, 11, 8))
  model = keras.Model(inputs, dpc.build_dense_prediction_cell(inputs, config, 8, (65, 81)))
  rng = np.random.default_rng(0)
  model.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(np.float32) if "variance" in w.path
                     else (0.3 * rng.standard_normal(w.shape)).astype(np.float32)
                     for w in model.weights])
  features = rng.standard_normal((1, 9, 11, 8)).astype(np.float32)

  def conv1x1(x, scope):
    return np.maximum(_bn(tf.nn.conv2d(x, _kernel(model, scope), 1, "SAME").numpy(), model, scope), 0)

  m = "meta_architecture/"
  b0 = conv1x1(features, m + "branch0")
  b1 = tf.nn.depthwise_conv2d(b0, _kernel(model, m + "branch1_depthwise"), [1, 1, 1, 1], "SAME",
                              dilations=[2, 4]).numpy()
  b1 = conv1x1(np.maximum(_bn(b1, model, m + "branch1_depthwise"), 0), m + "branch1_pointwise")
  b2 = tf.nn.avg_pool2d(b1, [9, 6], 1, "VALID").numpy()
  assert b2.shape == (1, 1, 6, 256)
  b2 = tf.compat.v1.image.resize_bilinear(conv1x1(b2, m + "branch2"), [9, 11],
                                          align_corners=True).numpy()
  expected = conv1x1(np.concatenate([b0, b1, b2], -1), m + "concat_projection")
  ours = model(features, training=False).numpy()
  assert ours.shape == (1, 9, 11, 256)
  # Same float32 operations in another order (BN folding, resize): 1e-4 of the largest magnitude.
  assert np.abs(ours - expected).max() <= 1e-4 * np.abs(expected).max()
  assert model.get_layer("meta_architecture.branch1_depthwise").dilation_rate == (2, 4)


def test_flagfile_builds_the_model_zoo_dpc(tmp_path):
  from deeplab_tf.bin import train as train_bin  # defines the flags
  try:
    flags.FLAGS(["deeplab_train",
                 f"--flagfile={os.path.join(EXPERIMENTS, 'cityscapes_xception71_dpc_os16.flags')}"])
    model, train, _ = train_bin.options_from_flags()
  finally:
    flags.FLAGS.unparse_flags()
  assert (model.model_variant, model.num_classes, model.output_stride, model.decoder_output_stride,
          train.augmentation.train_crop_size) == ("xception_71", 19, 16, 4, (769, 769))
  assert model.dense_prediction_cell_config == dpc.load_dense_prediction_cell_config(CITYSCAPES_JSON)
  # At output stride 8 (the _trainval entry's evaluation) the searched rates double.
  cell = deeplab_tf.build_deeplab(model.replace(output_stride=8))
  assert cell.get_layer("meta_architecture.branch4_depthwise").dilation_rate == (12, 42)
