"""bfloat16 training BatchNorm by channel count: the bfloat16 kernel, float32 between casts, padded.

  .venv/bin/python benchmarks/batch_norm_channels.py
  .venv/bin/python benchmarks/batch_norm_channels.py --sizes=33 --channels=720,728,736

Times one FusedBatchNormV3 in training mode with its gradient (a `tf.function` returning the
gradients of x, gamma and beta) on bfloat16 activations `[batch, size, size, channels]`, three ways:
the bfloat16 kernel as it is; the float32 kernel between two casts (what
`deeplab_tf.model.acceleration.batch_norm.FusedBatchNormalization` did before); and the bfloat16 kernel on channels
zero-padded to a multiple of 16 (what it does now, `bf16_training_bn_channel_padding`). Calls of the
three alternate; their medians (milliseconds) are printed. On oneDNN's AVX-512 kernels the times
depend on whether the channels fill whole 16-float vectors (benchmarks/README.md).
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


def _batch_norm(x, gamma, beta, way):
  channels = x.shape[-1]
  pad = -channels % 16 if way == "padded" else 0
  y = tf.cast(x, tf.float32) if way == "float32" else x
  if pad:
    y = tf.pad(y, [[0, 0], [0, 0], [0, 0], [0, pad]])
    gamma, beta = tf.pad(gamma, [[0, pad]], constant_values=1.0), tf.pad(beta, [[0, pad]])
  y = tf.raw_ops.FusedBatchNormV3(
      x=y, scale=gamma, offset=beta, mean=tf.zeros([0]), variance=tf.zeros([0]), epsilon=1e-3,
      exponential_avg_factor=1.0, data_format="NHWC", is_training=True)[0]
  if pad:
    y = tf.slice(y, [0, 0, 0, 0], [-1, -1, -1, channels])
  return tf.cast(y, x.dtype)


def _training_call(way):
  @tf.function
  def call(x, gamma, beta, dy):
    with tf.GradientTape() as tape:
      tape.watch([x, gamma, beta])
      y = _batch_norm(x, gamma, beta, way)
    return tape.gradient(y, [x, gamma, beta], output_gradients=dy)
  return call


def main(argv):
  del argv
  rng = np.random.default_rng(0)
  print("| shape | bfloat16 kernel ms | float32 + casts ms | bfloat16 padded to 16k channels ms |")
  print("|---|---|---|---|")
  for size in map(int, FLAGS.sizes):
    for channels in map(int, FLAGS.channels):
      shape = (FLAGS.batch, size, size, channels)
      x = tf.constant(rng.standard_normal(shape) * 3 + 1, tf.bfloat16)
      dy = tf.constant(rng.standard_normal(shape), tf.bfloat16)
      gamma, beta = tf.ones([channels]), tf.zeros([channels])
      calls = [_training_call(way) for way in ("bfloat16", "float32", "padded")]
      times = [[], [], []]
      for i in range(FLAGS.calls + 3):
        for call, record in zip(calls, times):
          start = time.perf_counter()
          call(x, gamma, beta, dy)[0].numpy()
          if i >= 3:  # The first calls trace and warm up.
            record.append(time.perf_counter() - start)
      native, cast, padded = (np.median(t) * 1e3 for t in times)
      print(f"| {shape} | {native:.2f} | {cast:.2f} | {padded:.2f} |")


if __name__ == "__main__":
  app.run(main)
