"""Exports run on any TensorFlow: a SavedModel made with oneDNN on answers with oneDNN off (TF's own
CPU kernels, what builds without oneDNN run), and the reverse, with the Keras model's labels.

The default (portable) kernel policy traces plain TF ops only: no DepthwiseConv2dNative with
dilations (oneDNN-only) and no padded channels. The other process is a fresh interpreter that imports
only TensorFlow. Labels are compared by the tie-aware rule: the export folds BatchNorms and runs under
the other oneDNN setting, both float32 reorderings of the same sums (1e-5 of the largest logit).
"""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

import reference_case as rc
import tie_aware
from deeplab_tf import ModelOptions, build_deeplab
from deeplab_tf.checkpoints import save_keras_atomically
from deeplab_tf.export import export_saved_model
from deeplab_tf.model.acceleration import KernelPolicy, apply_kernel_policy
from test_onednn import onednn_enabled_here

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# MobileNetV2 at output stride 8 has dilated depthwise convolutions (rates 2 and 4).
OPTIONS = ModelOptions(model_variant="mobilenet_v2", num_classes=4, output_stride=8,
                       depth_multiplier=0.5)
SIZE = 41

PREDICT = textwrap.dedent("""
    import sys
    import numpy as np
    import tensorflow as tf
    export_dir, images, out = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    result = loaded.signatures["image_tensor"](image_tensor=tf.constant(np.load(images)))
    assert not any(m.startswith("deeplab_tf") for m in sys.modules), "the export needed deeplab_tf"
    np.save(out, result["semantic_predictions"].numpy())
""")

EXPORT = textwrap.dedent("""
    import sys
    import keras
    from deeplab_tf import ModelOptions
    from deeplab_tf.export import export_saved_model
    keras_file, options_json, export_dir = sys.argv[1:4]
    model = keras.saving.load_model(keras_file, compile=False)
    with open(options_json) as f:
        options = ModelOptions.from_json(f.read())
    export_saved_model(model, export_dir, options)
""")


def _other_setting() -> str:
  return "0" if onednn_enabled_here() else "1"


def _run(script, *args, setting):
  env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": setting, "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  result = subprocess.run([sys.executable, "-c", script, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def model_and_images():
  model = rc.assign_reference_weights(build_deeplab(OPTIONS))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)
  logits = model(images.astype(np.float32), training=False).numpy()
  bias = model.get_layer("logits.semantic").bias  # Centre the classes: varied labels.
  bias.assign(bias - logits.mean(axis=(0, 1, 2)))
  return model, images, model(images.astype(np.float32), training=False).numpy()


def _dilated_depthwise_nodes(export_dir):
  """DepthwiseConv2dNative nodes with a dilation above 1 anywhere in the export's graphs."""
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=import-outside-toplevel
  proto = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  found = []
  for meta_graph in proto.meta_graphs:
    nodes = list(meta_graph.graph_def.node)
    for function in meta_graph.graph_def.library.function:
      nodes += list(function.node_def)
    found += [n.name for n in nodes if n.op == "DepthwiseConv2dNative"
              and max(n.attr["dilations"].list.i or [1]) > 1]
  return found


def _check_labels(labels, logits):
  assert labels.shape == logits.shape[:-1]
  tie_aware.assert_matches(None, logits, 1e-5 * np.abs(logits).max(), our_labels=labels)
  assert len(np.unique(labels)) > 1  # Varied labels: the comparison means something.


def test_export_made_here_answers_under_the_other_onednn_setting(model_and_images, tmp_path):
  model, images, logits = model_and_images
  # The training form of the CPU policy (what deeplab_train's model is) exports portable too.
  trained_form = apply_kernel_policy(model, KernelPolicy.cpu(), training=True)
  export_dir = export_saved_model(trained_form, str(tmp_path / "export"), OPTIONS)
  assert _dilated_depthwise_nodes(export_dir) == []
  np.save(tmp_path / "images.npy", images)
  _run(PREDICT, export_dir, tmp_path / "images.npy", tmp_path / "labels.npy",
       setting=_other_setting())
  _check_labels(np.load(tmp_path / "labels.npy"), logits)


def test_export_made_under_the_other_onednn_setting_answers_here(model_and_images, tmp_path):
  model, images, logits = model_and_images
  keras_file = save_keras_atomically(model, str(tmp_path / "model.keras"))
  (tmp_path / "options.json").write_text(OPTIONS.to_json())
  export_dir = str(tmp_path / "export")
  _run(EXPORT, keras_file, tmp_path / "options.json", export_dir, setting=_other_setting())
  assert _dilated_depthwise_nodes(export_dir) == []
  loaded = tf.saved_model.load(export_dir)
  labels = loaded.signatures["image_tensor"](image_tensor=tf.constant(images))[
      "semantic_predictions"].numpy()
  _check_labels(labels, logits)


def test_cpu_export_holds_the_in_place_dilations_portable_does_not(model_and_images, tmp_path):
  """What the portable default gives up: where this TensorFlow has in-place dilated depthwise
  kernels (oneDNN on AVX-512 CPUs), `kernel_policy='cpu'` traces them into the export."""
  model, _, _ = model_and_images
  cpu = KernelPolicy.cpu()
  if not cpu.in_place_dilated_depthwise:
    pytest.skip("this TensorFlow has no in-place dilated depthwise kernel: 'cpu' exports none")
  export_dir = export_saved_model(model, str(tmp_path / "cpu"), OPTIONS, kernel_policy=cpu)
  assert _dilated_depthwise_nodes(export_dir)
