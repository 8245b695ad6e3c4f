"""Convolution multiply-adds of the model-zoo architectures, to set beside the original's published figures.

For each `NAME:HEIGHTxWIDTH[:flag=value...]`, builds the model of `experiments/model_zoo/NAME.flags`
(plus the extra flags) at that input size and counts the multiply-adds of every convolution
(`h_out * w_out * c_out * k_h * k_w * c_in`, depthwise without the `c_in`): no BN (folded at
inference), activations, pooling, resizes or sums. No weights, no run: a static count.

  .venv/bin/python benchmarks/multiply_adds.py mobilenetv2_coco_cityscapes_trainfine:1025x2049 \
      edgetpu_deeplab:513x513 edgetpu_deeplab:513x513:output_stride=16
"""

import os
import sys

import keras
import numpy as np
from absl import flags
from absl.testing import flagsaver

import deeplab_tf
from deeplab_tf.bin import model_flags

ZOO_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments",
                       "model_zoo")


def conv_multiply_adds(model: keras.Model) -> int:
  """Multiply-adds of every Conv2D / DepthwiseConv2D of a model built at a static input size.

  Output pixels times the kernel's size (`[kh, kw, in, out]`, depthwise `[kh, kw, channels, 1]`),
  so the zero channels Xception carries for speed (`acceleration.channel_padding`) are not counted.
  """
  total = 0
  for layer in model.layers:
    # DepthwiseConv2D is not a Conv2D subclass in Keras 3.
    if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)):
      h, w = layer.output.shape[1:3]
      total += h * w * int(np.prod(layer.kernel.shape))
  return int(total)


def main(specs):
  if not specs:
    raise SystemExit(__doc__)
  print("| flagfile | input | extra flags | conv multiply-adds | parameters |")
  print("|---|---|---|--:|--:|")
  for spec in specs:
    name, size, *extra = spec.split(":")
    height, width = (int(v) for v in size.split("x"))
    with flagsaver.flagsaver():
      flags.FLAGS(["multiply_adds", f"--flagfile={os.path.join(ZOO_DIR, name + '.flags')}"]
                  + [f"--{e}" for e in extra])
      options = model_flags.model_options_from_flags()
    model = deeplab_tf.build_deeplab(options, input_shape=(height, width, 3))
    print(f"| {name} | {height}x{width} | {' '.join(extra) or '-'} | "
          f"{conv_multiply_adds(model) / 1e9:.2f}B | {model.count_params():,} |")
    keras.backend.clear_session()


if __name__ == "__main__":
  main(sys.argv[1:])
