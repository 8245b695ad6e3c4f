"""The kernel policy: one seam between the network (plain Keras layers) and this machine's kernels.

`apply_kernel_policy` rewrites a built model; it must keep every variable, layer name and output (to
float32 rounding: the kernels sum the same terms in another order, 1e-5 of the largest logit), and be
the same whatever policy the model had before.
"""
import dataclasses
import types

import keras
import numpy as np
import pytest
import tensorflow as tf

import deeplab_tf
from deeplab_tf import options as options_lib
from deeplab_tf.model import layers
from deeplab_tf.model.acceleration import (KernelPolicy, apply_kernel_policy, batch_norm,
                                           convolutions, dilated_depthwise, inference_model,
                                           policy as policy_lib, portable_model)

RNG = np.random.default_rng(0)
# MobileNetV2 at output stride 8: dilated depthwise convolutions (rates 2 and 4), 1x1 convolutions,
# BatchNorms, ReLU6 and the image-pooling branch, small enough to rewrite in a second.
OPTIONS = deeplab_tf.ModelOptions(model_variant="mobilenet_v2", num_classes=4, output_stride=8,
                                  depth_multiplier=0.5)


def _model():
  model = deeplab_tf.build_deeplab(OPTIONS, input_shape=(33, 33, 3))
  for variable in model.weights:  # Varied, non-trivial BatchNorm statistics.
    value = RNG.uniform(0.5, 1.5, variable.shape) if "variance" in variable.path else (
        0.2 * RNG.standard_normal(variable.shape))
    variable.assign(value.astype(np.float32))
  return model


def _classes(model):
  return {layer.name: type(layer) for layer in model.layers}


def _device(kind):
  return types.SimpleNamespace(device_type=kind, name=f"/device:{kind}:0")


@pytest.mark.parametrize("devices,expected", [(["CPU"], "cpu"), (["CPU", "GPU"], "portable"),
                                              (["CPU", "TPU", "TPU_SYSTEM"], "portable")])
def test_for_device_chooses_the_cpu_kernels_on_cpus_only(monkeypatch, devices, expected):
  assert KernelPolicy.for_device(devices).name == expected
  monkeypatch.setattr(tf.config, "list_logical_devices", lambda *a: [_device(d) for d in devices])
  chosen = KernelPolicy.for_device()
  assert chosen.name == expected
  if expected == "portable":  # Plain Keras/TF arithmetic: every kernel choice off.
    assert chosen == KernelPolicy.portable()
    assert not (chosen.fused_batch_norm or chosen.pointwise_as_matmul_in_training
                or chosen.in_place_dilated_depthwise or chosen.channel_multiple > 1)
    assert KernelPolicy.from_name("auto") == KernelPolicy.portable()


def test_cpu_policy_takes_in_place_dilations_only_where_the_kernel_exists(monkeypatch):
  monkeypatch.setattr(dilated_depthwise, "native_dilated_depthwise_available", lambda: False)
  assert not KernelPolicy.cpu().in_place_dilated_depthwise
  monkeypatch.setattr(dilated_depthwise, "native_dilated_depthwise_available", lambda: True)
  assert KernelPolicy.cpu().in_place_dilated_depthwise


def test_names_options_and_json():
  for name in options_lib.KERNEL_POLICIES:
    assert isinstance(KernelPolicy.from_name(name), KernelPolicy)
  with pytest.raises(ValueError, match="kernel_policy='fast'.*auto, portable, cpu"):
    KernelPolicy.from_name("fast")
  with pytest.raises(ValueError, match="kernel_policy='fast'"):
    options_lib.ExecutionOptions(kernel_policy="fast")
  with pytest.raises(ValueError, match="kernel_policy='fast'"):
    options_lib.EvalOptions(kernel_policy="fast")
  cpu = KernelPolicy.cpu(in_place_dilated_depthwise=True)
  assert KernelPolicy.from_json(cpu.to_json()) == cpu
  assert options_lib.TrainOptions(kernel_policy="portable").execution.kernel_policy == "portable"
  with pytest.raises(dataclasses.FrozenInstanceError):
    cpu.channel_multiple = 1  # pylint: disable=assigning-non-slot


def test_builders_make_plain_keras_layers_only():
  model = deeplab_tf.build_deeplab(OPTIONS)
  kinds = {type(layer) for layer in model.layers}
  ours = {batch_norm.FusedBatchNormalization, convolutions.Conv2D, convolutions.PointwiseConv2D,
          convolutions.DepthwiseConv2D}
  assert not kinds & ours
  assert layers.BatchNormalization in kinds and keras.layers.DepthwiseConv2D in kinds


def test_cpu_and_portable_rewrites_keep_variables_names_and_outputs():
  plain = _model()
  x = RNG.uniform(0, 255, (2, 33, 33, 3)).astype(np.float32)
  expected = plain(x, training=False).numpy()
  cpu = KernelPolicy.cpu(in_place_dilated_depthwise=dilated_depthwise.native_dilated_depthwise_available())
  fast = apply_kernel_policy(plain, cpu, training=True)
  assert fast is not plain
  assert [l.name for l in fast.layers] == [l.name for l in plain.layers]
  assert [(w.path, w.shape) for w in fast.weights] == [(w.path, w.shape) for w in plain.weights]
  for w, w_ref in zip(fast.weights, plain.weights):
    np.testing.assert_array_equal(w.numpy(), w_ref.numpy())
  kinds = set(_classes(fast).values())
  assert {batch_norm.FusedBatchNormalization, convolutions.PointwiseConv2D} <= kinds
  dilated = [l for l in fast.layers if isinstance(l, keras.layers.DepthwiseConv2D)
             and max(l.dilation_rate) > 1]
  assert dilated and all(
      getattr(l, "in_place_dilation_max_span", 0) == (13 if cpu.in_place_dilated_depthwise else 0)
      for l in dilated)
  tolerance = 1e-5 * np.abs(expected).max()  # Float32 sums in another order (module docstring).
  np.testing.assert_allclose(fast(x, training=False).numpy(), expected, atol=tolerance)
  # Back to plain, from whatever policy: the builder's classes, the same outputs.
  back = portable_model(fast)
  assert _classes(back) == _classes(plain)
  np.testing.assert_allclose(back(x, training=False).numpy(), expected, atol=tolerance)
  # Nothing to do: the model itself, no copy.
  assert portable_model(plain) is plain
  assert apply_kernel_policy(fast, cpu, training=True) is fast
  # Training arithmetic: the same batch statistics and moving averages.
  plain_train, fast_train = plain(x, training=True).numpy(), fast(x, training=True).numpy()
  np.testing.assert_allclose(fast_train, plain_train, atol=1e-4 * np.abs(plain_train).max())


def test_inference_model_folds_and_chooses_the_kernels():
  plain = _model()
  x = RNG.uniform(0, 255, (1, 33, 33, 3)).astype(np.float32)
  expected = plain(x, training=False).numpy()
  for policy in (KernelPolicy.portable(), KernelPolicy.cpu()):
    folded = inference_model(plain, policy)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    assert any(isinstance(l, convolutions.PointwiseConv2D) for l in folded.layers) is (
        policy.pointwise_as_matmul_at_inference)
    np.testing.assert_allclose(folded(x).numpy(), expected, atol=1e-5 * np.abs(expected).max())


def test_keras_files_are_saved_portable(tmp_path):
  from deeplab_tf.checkpoints import save_keras_atomically  # pylint: disable=import-outside-toplevel
  from deeplab_tf import model_io  # pylint: disable=import-outside-toplevel
  plain = _model()
  fast = apply_kernel_policy(plain, KernelPolicy.cpu(), training=True)
  path = str(tmp_path / "model.keras")
  save_keras_atomically(fast, path)
  loaded = keras.saving.load_model(path, compile=False)
  assert _classes(loaded) == _classes(plain)
  # A file of the releases that saved the CPU kernels' classes loads back plain.
  fast.save(str(tmp_path / "old.keras"))
  model_io.save_model_options(str(tmp_path), OPTIONS)
  reloaded, _ = model_io.load_model(str(tmp_path / "old.keras"))
  assert _classes(reloaded) == _classes(plain)


def test_image_pooling_runs_the_originals_avg_pool():
  """AvgPool over the whole feature map where its size is known (training crops, exports of a
  fixed size), as `slim.avg_pool2d`; the mean where it is not, as the original's crop_size=None."""
  model = deeplab_tf.build_deeplab(OPTIONS, input_shape=(33, 33, 3))

  def pooling_ops(spec):
    graph = tf.function(lambda a: model(a, training=True)).get_concrete_function(spec).graph
    return [op.type for op in graph.get_operations()
            if "image_pooling.pool" in op.name and op.type in ("AvgPool", "Mean")]

  assert pooling_ops(tf.TensorSpec((2, 33, 33, 3))) == ["AvgPool"]
  dynamic = deeplab_tf.build_deeplab(OPTIONS)
  graph = tf.function(lambda a: dynamic(a, training=False)).get_concrete_function(
      tf.TensorSpec((1, None, None, 3))).graph
  assert [op.type for op in graph.get_operations() if "image_pooling.pool" in op.name
          and op.type in ("AvgPool", "Mean")] == ["Mean"]
  features = tf.constant(RNG.standard_normal((2, 5, 7, 3)), tf.float32)
  layer = dynamic.get_layer("image_pooling.pool")
  np.testing.assert_allclose(layer(features).numpy(), features.numpy().mean((1, 2), keepdims=True),
                             atol=1e-6)


def test_no_module_switches_left_in_the_model_package():
  """The kernel choices live in one policy type: no module-level boolean or multiple to assign."""
  import deeplab_tf.model.acceleration as acceleration  # pylint: disable=import-outside-toplevel
  from deeplab_tf.model.encoders import xception  # pylint: disable=import-outside-toplevel
  for module in (layers, xception, convolutions, batch_norm, dilated_depthwise, policy_lib):
    for name in ("POINTWISE_AS_MATMUL_IN_TRAINING", "BF16_INFERENCE_AS_AFFINE", "CHANNEL_MULTIPLE",
                 "BF16_TRAINING_BN_CHANNEL_MULTIPLE", "NATIVE_DILATED_DEPTHWISE_MAX_SPAN",
                 "BF16_STRIDED_DEPTHWISE_INPUT_GRADIENT_IN_FLOAT32"):
      assert not hasattr(module, name), (module.__name__, name)
  assert acceleration.KernelPolicy is KernelPolicy
