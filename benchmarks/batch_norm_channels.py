"""bfloat16 training BatchNorm by channel count: the bfloat16 kernel against float32 between casts.

  .venv/bin/python benchmarks/batch_norm_channels.py
  .venv/bin/python benchmarks/batch_norm_channels.py --sizes=33 --channels=720,728,736

Times one FusedBatchNormV3 in training mode with its gradient (a `tf.function` returning the
gradients of x, gamma and beta) on bfloat16 activations `[batch, size, size, channels]`, two ways:
the kernel on the bfloat16 tensor, and the float32 kernel between two casts (what
`deeplab_tf.model.layers.FusedBatchNormalization` does when `bf16_training_bn_in_float32(channels)`).
Calls of the two alternate; the medians are printed with their ratio. On oneDNN's AVX-512 kernels the
ratio depends on whether the channels fill whole 16-float vectors (benchmarks/README.md).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("sizes", ["33", "65"], "Spatial sizes (pixels, square).")
flags.DEFINE_list("channels", ["24", "32", "256", "720", "728", "736", "1536"], "Channel counts.")
flags.DEFINE_integer("batch", 2, "Batch.")
flags.DEFINE_integer("calls", 20, "Timed calls of each way.")
FLAGS = flags.FLAGS


def _batch_norm(x, gamma, beta, in_float32):
  y = tf.cast(x, tf.float32) if in_float32 else x
  y = tf.raw_ops.FusedBatchNormV3(
      x=y, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=1e-3,
      exponential_avg_factor=1.0, data_format="NHWC", is_training=True)[0]
  return tf.cast(y, x.dtype)


def _training_call(in_float32):
  @tf.function
  def call(x, gamma, beta, dy):
    with tf.GradientTape() as tape:
      tape.watch([x, gamma, beta])
      y = _batch_norm(x, gamma, beta, in_float32)
    return tape.gradient(y, [x, gamma, beta], output_gradients=dy)
  return call


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  print("| shape | bfloat16 kernel ms | float32 + casts ms | bfloat16 / float32 |")
  print("|---|---|---|---|")
  for size in map(int, FLAGS.sizes):
    for channels in map(int, FLAGS.channels):
      shape = (FLAGS.batch, size, size, channels)
      x = tf.constant(rng.standard_normal(shape) * 3 + 1, tf.bfloat16)
      dy = tf.constant(rng.standard_normal(shape), tf.bfloat16)
      gamma, beta = tf.ones([channels]), tf.zeros([channels])
      calls = [_training_call(False), _training_call(True)]
      times = [[], []]
      for i in range(FLAGS.calls + 3):
        for call, record in zip(calls, times):
          start = time.perf_counter()
          call(x, gamma, beta, dy)[0].numpy()
          if i >= 3:  # The first calls trace and warm up.
            record.append(time.perf_counter() - start)
      native, cast = (np.median(t) * 1e3 for t in times)
      print(f"| {shape} | {native:.2f} | {cast:.2f} | {native / cast:.2f} |")


if __name__ == "__main__":
  app.run(main)
