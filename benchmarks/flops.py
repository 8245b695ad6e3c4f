"""Multiply-adds of a traced TensorFlow graph: convolutions and matrix products, from static shapes.

The convention of the papers' FLOPs figures (research/deeplab's model zoo lists "multiply-adds",
e.g. 54.17 billion for Xception-65 DeepLabv3+ at 513x513, OS16, 21 classes, in g3doc/model_zoo.md):
one multiply-add per weight per output position; BatchNorm, activations, resizes and pooling are not
counted. Works on any graph (ours, keras-hub's, tf-models-official's, a TF1 graph), so the same count
applies to every candidate of `compare.py`:

  python benchmarks/flops.py --crop=513     # prints our Xception-65 DeepLabv3+'s count
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top


def _dims(shape):
  dims = shape.as_list() if hasattr(shape, "as_list") else list(shape)
  if dims is None or any(d is None for d in dims):
    return None
  return dims


def op_multiply_adds(op) -> int:
  """Multiply-adds of one graph op (0 for ops that are not convolutions or matrix products).

  Raises:
    ValueError: a convolution or matmul whose shapes are not static (trace with a fixed input size).
  """
  kind = op.type
  if kind in ("Conv2D", "_FusedConv2D", "DepthwiseConv2dNative", "_FusedDepthwiseConv2dNative"):
    out = _dims(op.outputs[0].shape)
    kernel = _dims(op.inputs[1].shape)
    if out is None or kernel is None:
      raise ValueError(f"{op.name}: {kind} with non-static shapes {op.outputs[0].shape}, "
                       f"{op.inputs[1].shape}; trace the model with a fixed input size.")
    data_format = op.get_attr("data_format").decode()
    spatial = out[1] * out[2] if data_format == "NHWC" else out[2] * out[3]
    channels = out[3] if data_format == "NHWC" else out[1]
    if kind.endswith("DepthwiseConv2dNative"):
      return out[0] * spatial * channels * kernel[0] * kernel[1]
    return out[0] * spatial * channels * kernel[0] * kernel[1] * kernel[2]
  if kind in ("MatMul", "BatchMatMulV2", "BatchMatMulV3", "_FusedMatMul"):
    a = _dims(op.inputs[0].shape)
    out = _dims(op.outputs[0].shape)
    if a is None or out is None:
      raise ValueError(f"{op.name}: {kind} with non-static shapes; trace with a fixed input size.")
    transpose_a = op.get_attr("transpose_a" if kind in ("MatMul", "_FusedMatMul") else "adj_x")
    inner = a[-2] if transpose_a else a[-1]
    return int(np.prod(out)) * inner
  return 0


def graph_multiply_adds(graph) -> int:
  """Sum of `op_multiply_adds` over a graph and the functions it calls (e.g. a `tf.function`'s)."""
  total = sum(op_multiply_adds(op) for op in graph.get_operations())
  library = getattr(graph, "_functions", {})
  for function in list(library.values()):
    inner = getattr(function, "graph", None)
    if inner is not None and inner is not graph:
      total += graph_multiply_adds(inner)
  return total


def real_channels(model):
  """`model` without the zero channels the CPU kernel policy carries for speed
  (`without_channel_padding`), so that counts are of the architecture's multiply-adds; `model` itself
  for a deeplab_tf without channel padding or another library's model."""
  try:
    from deeplab_tf.model.acceleration import without_channel_padding  # pylint: disable=g-import-not-at-top
  except ImportError:
    try:  # The releases that built Xception padded.
      from deeplab_tf.model.layers import without_channel_padding  # pylint: disable=g-import-not-at-top
    except ImportError:
      return model
  return without_channel_padding(model) if hasattr(model, "layers") else model


def keras_model_multiply_adds(model, input_shape) -> int:
  """Multiply-adds of one inference call of a Keras model on a float32 input of `input_shape`
  (of its real channels: `real_channels`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = real_channels(model)
  function = tf.function(lambda x: model(x, training=False))
  return graph_multiply_adds(function.get_concrete_function(
      tf.TensorSpec(input_shape, tf.float32)).graph)


def main(argv):
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.DEFINE_integer("crop", 513, "Square input size in pixels.")
  flags.DEFINE_string("model_variant", "xception_65", "Encoder.")
  flags.FLAGS(argv)
  import deeplab_tf  # pylint: disable=g-import-not-at-top
  options = deeplab_tf.ModelOptions(model_variant=flags.FLAGS.model_variant, num_classes=21,
                                    output_stride=16, atrous_rates=(6, 12, 18),
                                    decoder_output_stride=4)
  count = keras_model_multiply_adds(deeplab_tf.build_deeplab(options), (1, flags.FLAGS.crop,
                                                                         flags.FLAGS.crop, 3))
  print(f"{flags.FLAGS.model_variant} DeepLabv3+ OS16 at {flags.FLAGS.crop}x{flags.FLAGS.crop}: "
        f"{count / 1e9:.2f} billion multiply-adds")


if __name__ == "__main__":
  main(sys.argv)
