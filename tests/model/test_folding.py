"""`fold_batch_norm` computes the model's inference function with no BatchNorm left.

Tolerance: the folded model differs from the unfolded one only by float32 rounding (the kernel is
scaled once before the convolution instead of the output after it; the bias add and BN shift are
merged). Each of Xception-65's ~150 folded layers contributes relative errors of a few float32 ulps
(2**-24 ~ 6e-8), which add up, mostly at random, to a few 1e-6 at the logits: the same order as the
difference between our unfolded model and the original (2.5e-6, benchmarks/README.md) or the
original's own oneDNN on/off runs (4e-6). 1e-5 of the largest logit is the reference case's bound.
"""

import collections
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import config_pb2
from tensorflow.python.grappler import tf_optimizer

import deeplab_tf
import reference_case as rc
from deeplab_tf.checkpoints import load_tf1_checkpoint, model_weights_by_checkpoint_name
from deeplab_tf.model import layers
from deeplab_tf.model.acceleration import KernelPolicy, inference_model
from deeplab_tf.model.acceleration.folding import (BiasedAdd, FoldedBatchNorm, biases_after_add,
                                                   fold_batch_norm, foldable_pairs)
from deeplab_tf.model.deeplab import global_dtype_policy


def _relative_difference(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


def _bn_layers(model):
  return [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]


def test_small_model_by_hand():
  """Conv with and without bias, depthwise, a conv read twice (not folded), mixed precision policy."""
  rng = np.random.default_rng(1)
  images = keras.Input((7, 7, 3), name="images")
  a = layers.conv2d_same(images, 4, 3, 2, 1, "a", bn_params=layers.BatchNormParams(), use_bias=True)
  b = layers.depthwise_conv2d_same(a, 3, 1, 2, "b", bn_params=layers.BatchNormParams(epsilon=1e-5),
                                   activation=True)
  shared = keras.layers.Conv2D(4, 1, name="shared")(b)
  c = layers.batch_norm(shared, "shared", layers.BatchNormParams())
  model = keras.Model(images, keras.layers.Add()([c, shared]))
  for layer in model.layers:
    layer.set_weights([rng.uniform(0.5, 2.0, w.shape) if "variance" in w.name or "gamma" in w.name
                       else rng.standard_normal(w.shape) for w in layer.weights])
  assert foldable_pairs(model) == {"a.BatchNorm": "a", "b.BatchNorm": "b"}
  folded = fold_batch_norm(model)
  assert [l.name for l in folded.layers] == [l.name for l in model.layers]
  assert isinstance(folded.get_layer("a.BatchNorm"), FoldedBatchNorm)
  assert isinstance(folded.get_layer("shared.BatchNorm"), keras.layers.BatchNormalization)
  assert folded.get_layer("b").use_bias and not model.get_layer("b").use_bias
  x = rng.uniform(0, 255, (2, 7, 7, 3)).astype(np.float32)
  expected = model(x, training=False).numpy()
  assert _relative_difference(folded(x, training=False).numpy(), expected) <= 1e-6
  # The original is untouched and still trains its BatchNorm.
  assert len(_bn_layers(model)) == 3
  # Nothing to fold, or a model whose graph cannot be rewritten: the model itself.
  sequential = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
  assert fold_batch_norm(sequential) is sequential
  plain = keras.Model(images, keras.layers.Conv2D(2, 1)(images))
  assert fold_batch_norm(plain) is plain


def test_xception_65_reference_case_folded(tmp_path):
  case = rc.XCEPTION_65_CASE_DIR
  prefix = rc.write_checkpoint_from_vars(str(tmp_path / "model.ckpt"), rc.load_vars("xception_65"))
  model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**rc.VARIANT_CASES["xception_65"][0]))
  load_tf1_checkpoint(model, prefix)
  folded = fold_batch_norm(model)
  assert len(_bn_layers(model)) == 146 and _bn_layers(folded) == []
  # The residual sums read by the next unit's ReLU and its shortcut (entry flow: conv shortcut, two
  # folded inputs; middle flow: identity shortcut, one) take their inputs' biases; the exit flow's
  # first sum is read by a ReLU only and keeps them.
  moved = biases_after_add(model, foldable_pairs(model))
  assert sorted(len(convs) for convs in moved.values()) == [1] * 16 + [2] * 3
  assert all(".entry_flow." in add or ".middle_flow." in add for add in moved)
  assert all(isinstance(folded.get_layer(add), BiasedAdd) for add in moved)
  # Folding removes gamma, beta, mean and variance (4 per BN) and adds one bias per BN; each entry
  # flow sum holds one bias for its two convolutions' (128 + 256 + 728 channels).
  assert model.count_params() - folded.count_params() == 3 * sum(
      l.gamma.shape[0] for l in _bn_layers(model)) + 128 + 256 + 728
  x = np.load(os.path.join(case, "input.npy"))
  ours = model(x, training=False).numpy()
  ours_folded = folded(x, training=False).numpy()
  assert _relative_difference(ours_folded, ours) <= 1e-5
  assert _relative_difference(ours_folded, np.load(os.path.join(case, "logits.npy"))) <= 1e-5


def test_mobilenet_v2_folded():
  """ReLU6, expansion and depthwise convs; deterministic weights of the reference recipe."""
  model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**rc.VARIANT_CASES["mobilenet_v2"][0]))
  for name, variable in model_weights_by_checkpoint_name(model).items():
    variable.assign(rc.det_value(name, variable.shape))
  folded = fold_batch_norm(model)
  assert _bn_layers(folded) == []
  x = np.random.default_rng(0).uniform(0, 255, (1, 65, 65, 3)).astype(np.float32)
  assert _relative_difference(folded(x, training=False).numpy(),
                              model(x, training=False).numpy()) <= 1e-5


def test_live_folding_shares_the_variables():
  inputs = keras.Input((9, 9, 3), name="images")
  x = layers.conv2d_same(inputs, 4, 3, 2, 1, "a", bn_params=layers.BatchNormParams())
  model = keras.Model(inputs, layers.depthwise_conv2d_same(
      x, 3, 1, 1, "b", bn_params=layers.BatchNormParams(), activation=False))
  rng = np.random.default_rng(3)
  for layer in model.layers:
    layer.set_weights([rng.uniform(0.5, 2.0, w.shape) for w in layer.weights])
  live = fold_batch_norm(model, live=True)
  assert len(live.weights) == len(model.weights)  # Shared, not copied.
  x = rng.uniform(0, 255, (1, 9, 9, 3)).astype(np.float32)
  for _ in range(2):
    assert _relative_difference(live(x, training=False).numpy(),
                                model(x, training=False).numpy()) <= 1e-6
    model.get_layer("b.BatchNorm").moving_variance.assign([4.0, 3.0, 2.0, 1.0])  # Seen next time.


def _grappler_op_counts(model, size):
  """Op types of `model`'s inference graph after TF's grappler (as `tf.function` runs it on CPU)."""
  function = tf.function(lambda x: model(x, training=False)).get_concrete_function(
      tf.TensorSpec([1, size, size, 3]))
  graph_def = function.graph.as_graph_def()
  for node in graph_def.node:
    node.device = "/job:localhost/replica:0/task:0/device:CPU:0"
  meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def, graph=function.graph)
  meta_graph.collection_def["train_op"].node_list.value.extend(t.name for t in function.outputs)
  config = config_pb2.ConfigProto()
  config.graph_options.rewrite_options.min_graph_nodes = -1
  return collections.Counter(node.op for node in tf_optimizer.OptimizeGraph(config, meta_graph).node)


def _remapper_fuses(layer, policy: str = "float32") -> bool:
  """Whether TF's remapper fuses `layer` with its bias and a ReLU on this CPU (oneDNN's fused kernels
  depend on the instruction set: an AVX-512 machine fused float32 depthwise and bfloat16 convolutions,
  an AVX2 one fuses neither)."""
  with global_dtype_policy(policy):
    inputs = keras.Input((9, 9, 3))
    model = keras.Model(inputs, keras.layers.ReLU()(layer(inputs)))
  return any(op.startswith("_Fused") for op in _grappler_op_counts(model, 9))


@pytest.mark.parametrize("policy,fused_pointwise", [("float32", "_FusedMatMul"),
                                                     ("mixed_bfloat16", "_FusedConv2D")])
def test_folded_xception_keeps_grappler_fusions(policy, fused_pointwise):
  """The remapper fuses the folded pointwise convolutions' biases (it rejected the whole graph before).

  Before `BiasedAdd`, TF's remapper failed on Xception's residual sums ("Mutation::Apply error") and
  left all 79 Conv2D + 147 BiasAdd + 82 Relu unfused: this counted 0 fused convolutions. The float32
  copy computes its pointwise convolutions as matrix products (`matmul_at_inference`); the bfloat16
  one keeps the Conv2D + BiasAdd + Add + Relu pattern the remapper mishandled.
  """
  options = deeplab_tf.ModelOptions(model_variant="xception_65", num_classes=3, output_stride=16,
                                    atrous_rates=(6, 12, 18), decoder_output_stride=4)
  with global_dtype_policy(policy):
    model = deeplab_tf.build_deeplab(options)
  counts = _grappler_op_counts(inference_model(model, KernelPolicy.cpu()), 65)
  # Where this CPU's oneDNN fuses a lone convolution with its bias and ReLU, the folded model's are.
  if _remapper_fuses(lambda x: keras.layers.Conv2D(4, 3, padding="same")(x), policy):
    assert counts[fused_pointwise] >= 50, counts
  if _remapper_fuses(lambda x: keras.layers.DepthwiseConv2D(3, padding="same")(x), policy):
    assert counts["_FusedDepthwiseConv2dNative"] >= 60, counts


@pytest.mark.parametrize("policy,matmul", [("float32", True), ("mixed_bfloat16", False)])
def test_folded_copy_computes_float32_pointwise_convolutions_as_matmul(policy, matmul):
  """The CPU policy's float32 copies take matrix products (1.05x faster here), bfloat16 ones
  convolutions (0.91x); the portable copy (the default of `fold_batch_norm`) convolutions."""
  inputs = keras.Input((9, 9, 4), name="images")
  with global_dtype_policy(policy):
    x = layers.conv2d_same(inputs, 6, 1, 1, 1, "pw", bn_params=layers.BatchNormParams())
    model = keras.Model(inputs, x)
  folded = inference_model(model, KernelPolicy.cpu())
  assert getattr(folded.get_layer("pw"), "matmul_at_inference", False) is matmul
  assert type(model.get_layer("pw")) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck

  def op_types(m):
    return {op.type for op in tf.function(lambda a: m(a, training=False)).get_concrete_function(
        tf.TensorSpec((1, 9, 9, 4))).graph.get_operations()}

  ops = op_types(folded)
  assert ("MatMul" in ops) is matmul and ("Conv2D" in ops) is not matmul, ops
  layer = folded.get_layer("pw")
  assert getattr(type(layer).from_config(layer.get_config()), "matmul_at_inference", False) is matmul
  portable = fold_batch_norm(model)
  assert type(portable.get_layer("pw")) is keras.layers.Conv2D  # pylint: disable=unidiomatic-typecheck
  assert "MatMul" not in op_types(portable)
  x = np.random.default_rng(5).uniform(0, 255, (1, 9, 9, 4)).astype(np.float32)
  if policy == "float32":
    assert _relative_difference(folded(x, training=False).numpy(),
                                model(x, training=False).numpy()) <= 1e-5


def test_biases_move_after_a_sum_read_by_a_relu_and_more():
  """Copy and live folding of Xception's residual pattern equal the model; the live one follows it."""
  inputs = keras.Input((9, 9, 3), name="images")
  a = layers.conv2d_same(inputs, 4, 1, 1, 1, "a", bn_params=layers.BatchNormParams(),
                         activation=False)
  b = layers.conv2d_same(inputs, 4, 3, 1, 1, "b", bn_params=layers.BatchNormParams(),
                         activation=False)
  total = keras.layers.Add(name="sum")([a, b])
  shortcut = keras.layers.Conv2D(4, 1, name="c")(total)
  model = keras.Model(inputs, keras.layers.Add(name="out")([layers.relu(total, "r"), shortcut]))
  rng = np.random.default_rng(4)
  for layer in model.layers:
    layer.set_weights([rng.uniform(0.5, 2.0, w.shape) for w in layer.weights])
  assert biases_after_add(model, foldable_pairs(model)) == {"sum": ["a", "b"]}
  folded = fold_batch_norm(model)
  assert not folded.get_layer("a").use_bias and not folded.get_layer("b").use_bias
  live = fold_batch_norm(model, live=True)
  x = rng.uniform(0, 255, (1, 9, 9, 3)).astype(np.float32)
  expected = model(x, training=False).numpy()
  assert _relative_difference(folded(x, training=False).numpy(), expected) <= 1e-6
  assert _relative_difference(live(x, training=False).numpy(), expected) <= 1e-6
  model.get_layer("a.BatchNorm").moving_mean.assign([40.0, -30.0, 20.0, 10.0])
  changed = model(x, training=False).numpy()
  assert _relative_difference(changed, expected) > 1e-3
  assert _relative_difference(live(x, training=False).numpy(), changed) <= 1e-6


def test_mixed_precision_copy_stores_weights_in_bfloat16():
  """A mixed_bfloat16 model's folded copy keeps bfloat16 weights: no weight Cast per call, same values."""
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**rc.VARIANT_CASES["mobilenet_v2"][0]))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  for name, variable in model_weights_by_checkpoint_name(model).items():
    variable.assign(rc.det_value(name, variable.shape))
  folded = fold_batch_norm(model)
  bfloat16_layers = [l for l in folded.layers if l.weights and l.compute_dtype == "bfloat16"]
  assert len(bfloat16_layers) > 50
  assert all(w.dtype == "bfloat16" for l in bfloat16_layers for w in l.weights)
  assert folded.get_layer("upsample_logits").compute_dtype == "float32"  # float32 layers stay so.
  x = np.random.default_rng(0).uniform(0, 255, (1, 65, 65, 3)).astype(np.float32)
  graph = tf.function(lambda a: folded(a, training=False)).get_concrete_function(
      tf.TensorSpec(x.shape)).graph
  weight_casts = [op for op in graph.get_operations()
                  if op.type == "Cast" and op.inputs[0].op.type == "ReadVariableOp"]
  assert weight_casts == []
  # The same numbers as a copy keeping the mixed policy (float32 weights rounded at each call):
  # rounding a float32 weight to bfloat16 once or at every call gives the same bfloat16 value.
  ours = folded(x, training=False).numpy()
  assert ours.dtype == np.float32
  mixed = fold_batch_norm(model, weights_in_compute_dtype=False)
  assert mixed.get_layer("MobilenetV2.Conv").kernel.dtype == "float32"
  np.testing.assert_array_equal(ours, mixed(x, training=False).numpy())


def test_folded_copy_saves_and_loads(tmp_path):
  """A folded copy (here of a mixed_bfloat16 model, with bfloat16 weights) round-trips through
  `.keras`: every layer has a config, and the loaded model computes the same labels' logits."""
  keras.mixed_precision.set_global_policy("mixed_bfloat16")
  try:
    model = deeplab_tf.build_deeplab(deeplab_tf.ModelOptions(**rc.VARIANT_CASES["mobilenet_v2"][0]))
  finally:
    keras.mixed_precision.set_global_policy("float32")
  folded = fold_batch_norm(model)
  path = str(tmp_path / "folded.keras")
  folded.save(path)
  loaded = keras.models.load_model(path)
  assert loaded.get_layer("MobilenetV2.Conv").kernel.dtype == "bfloat16"
  x = np.random.default_rng(0).uniform(0, 255, (1, 65, 65, 3)).astype(np.float32)
  np.testing.assert_array_equal(loaded(x, training=False).numpy(), folded(x, training=False).numpy())
