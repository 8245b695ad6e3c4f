"""Strided depthwise convolutions' gradients in bfloat16 and float32 (Xception's stride-2 shapes).

  .venv/bin/python benchmarks/depthwise_gradients.py

For each input shape (the fixed-padded inputs of Xception-65's three stride-2 depthwise convolutions
at 513x513, batch 2), times in milliseconds, medians of `--calls` alternating calls:
- the forward DepthwiseConv2dNative, the input gradient (DepthwiseConv2dNativeBackpropInput) and the
  kernel gradient (DepthwiseConv2dNativeBackpropFilter) in bfloat16 and in float32;
- the bfloat16 input gradient as `deeplab_tf.model.acceleration.convolutions.DepthwiseConv2D` computes it (the float32
  kernel between casts, `depthwise_conv2d_float32_input_gradient`).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top

from deeplab_tf.model.acceleration import convolutions as layers  # pylint: disable=g-import-not-at-top

flags.DEFINE_integer("calls", 10, "Timed calls of each kernel.")
FLAGS = flags.FLAGS

SHAPES = ((2, 259, 259, 128), (2, 131, 131, 256), (2, 67, 67, 728))
STRIDES = [1, 2, 2, 1]


def _kernels(shape, dtype):
  """{name: (tf.function, args)} of the three kernels and, for bfloat16, the layer's input gradient."""
  rng = np.random.default_rng(0)
  x = tf.constant(rng.standard_normal(shape), dtype)
  kernel = tf.constant(rng.standard_normal((3, 3, shape[-1], 1)), dtype)
  dy = tf.constant(rng.standard_normal(
      tf.nn.depthwise_conv2d(x, kernel, STRIDES, "VALID").shape), dtype)
  kernels = {
      "forward": (tf.function(lambda x, k: tf.nn.depthwise_conv2d(x, k, STRIDES, "VALID")),
                  (x, kernel)),
      "input gradient": (tf.function(lambda k, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
          input_sizes=shape, filter=k, out_backprop=dy, strides=STRIDES, padding="VALID")),
                         (kernel, dy)),
      "kernel gradient": (tf.function(lambda x, dy: tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
          input=x, filter_sizes=[3, 3, shape[-1], 1], out_backprop=dy, strides=STRIDES,
          padding="VALID")), (x, dy)),
  }
  if dtype == tf.bfloat16:

    @tf.function
    def layer_input_gradient(x, k, dy):
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = layers.depthwise_conv2d_float32_input_gradient(x, k, STRIDES, "VALID")
      return tape.gradient(y, x, output_gradients=dy)

    kernels["input gradient, acceleration DepthwiseConv2D"] = (layer_input_gradient, (x, kernel, dy))
  return kernels


def main(argv):
  del argv
  print("| input shape | dtype | kernel | ms |")
  print("|---|---|---|---|")
  for shape in SHAPES:
    for dtype in (tf.bfloat16, tf.float32):
      kernels = _kernels(shape, dtype)
      times = {name: [] for name in kernels}
      for i in range(FLAGS.calls + 3):
        for name, (function, args) in kernels.items():
          start = time.perf_counter()
          function(*args).numpy()
          if i >= 3:  # The first calls trace and warm up.
            times[name].append(time.perf_counter() - start)
      for name, t in times.items():
        print(f"| {shape} | {dtype.name} | {name} | {np.median(t) * 1e3:.2f} |")


if __name__ == "__main__":
  app.run(main)
