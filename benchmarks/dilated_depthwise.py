"""Dilated depthwise convolutions: space-to-batch against the dilation in place (Xception-65's shapes).

  .venv/bin/python benchmarks/dilated_depthwise.py

For each dilated 3x3 depthwise convolution of Xception-65 DeepLabv3+ at 513x513 (output stride 16:
exit flow rate 2, ASPP rates 6, 12, 18 on 33x33; output stride 8: rate 4 and ASPP 12, 24, 36 on
65x65), times in milliseconds, medians of `--calls` alternating calls, batch `--batch`:
- "space-to-batch": `tf.nn.depthwise_conv2d(..., dilations=rate)`, as the original computes it;
- "in place": DepthwiseConv2dNative with its `dilations` (`acceleration.dilated_depthwise.dilated_depthwise_conv2d`: the
  whole rate where its span is at most `NATIVE_DILATED_DEPTHWISE_MAX_SPAN`, else split into a
  space-to-batch block and an in-place rest, `dilated_depthwise.dilation_split`);
- "in place, whole rate": DepthwiseConv2dNative with the whole rate, whatever its span;
- the same two with the input and kernel gradients as well (`--gradients`), which
  `dilated_depthwise_conv2d` takes from the space-to-batch form.
The last column is the split `dilated_depthwise.depthwise_conv` picks: (space-to-batch block, in-place rate).
"""

import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from absl import app, flags  # pylint: disable=g-import-not-at-top

from deeplab_tf.model.acceleration import dilated_depthwise as layers  # pylint: disable=g-import-not-at-top

flags.DEFINE_integer("calls", 20, "Timed calls of each variant.")
flags.DEFINE_integer("batch", 1, "Batch.")
flags.DEFINE_bool("gradients", False, "Also time forward + gradients.")
FLAGS = flags.FLAGS

# (height = width, channels, rate) of Xception-65's dilated depthwise convolutions at 513x513.
SHAPES = ((33, 1024, 2), (33, 1536, 2), (33, 2048, 6), (33, 2048, 12), (33, 2048, 18),
          (65, 1024, 4), (65, 2048, 12), (65, 2048, 24), (65, 2048, 36))


def _variants(size, channels, rate, dtype):
  rng = np.random.default_rng(0)
  x = tf.constant(rng.standard_normal((FLAGS.batch, size, size, channels)), dtype)
  kernel = tf.constant(rng.standard_normal((3, 3, channels, 1)), dtype)
  forwards = {
      "space-to-batch": lambda x, k: tf.nn.depthwise_conv2d(x, k, [1, 1, 1, 1], "SAME",
                                                           dilations=[rate, rate]),
      "in place": lambda x, k: layers.dilated_depthwise_conv2d(x, k, (rate, rate), "SAME"),
      "in place, whole rate": lambda x, k: tf.raw_ops.DepthwiseConv2dNative(
          input=x, filter=k, strides=[1, 1, 1, 1], padding="SAME", dilations=[1, rate, rate, 1]),
  }
  variants = {name: tf.function(f) for name, f in forwards.items()}
  if FLAGS.gradients:
    for name, forward in forwards.items():

      def with_gradients(x, k, forward=forward):
        with tf.GradientTape() as tape:
          tape.watch([x, k])
          y = forward(x, k)
        dx, dk = tape.gradient(y, [x, k], output_gradients=tf.ones_like(y))
        # One output that needs all three, so that none is pruned; the sums cost the same in both.
        return tf.reduce_sum(y) + tf.reduce_sum(dx) + tf.reduce_sum(dk)

      variants[name + " + gradients"] = tf.function(with_gradients)
  return variants, (x, kernel)


def main(argv):
  del argv
  print("| input (h=w, channels) | rate | dtype | variant | ms | split (block, rate) |")
  print("|---|---|---|---|---|---|")
  for size, channels, rate in SHAPES:
    picks = layers.dilation_split(rate, 3, size)
    for dtype in (tf.float32, tf.bfloat16):
      variants, args = _variants(size, channels, rate, dtype)
      times = {name: [] for name in variants}
      for i in range(FLAGS.calls + 3):
        for name, function in variants.items():
          start = time.perf_counter()
          function(*args).numpy()
          if i >= 3:  # The first calls trace and warm up.
            times[name].append(time.perf_counter() - start)
      for name, t in times.items():
        print(f"| {size}, {channels} | {rate} | {dtype.name} | {name} | {np.median(t) * 1e3:.2f} | "
              f"{picks[0]}, {picks[1]} |")


if __name__ == "__main__":
  app.run(main)
