"""Dilated (atrous) depthwise convolutions with the dilation in place, for oneDNN CPUs.

`tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding, dilations=rate)` computes a dilated
depthwise convolution as SpaceToBatchND with the rate as block, an undilated convolution and
BatchToSpaceND (as the original does: its slim `separable_conv2d` calls it). oneDNN's
DepthwiseConv2dNative takes the dilation in place instead, which is faster: on a 2-vCPU AVX-512 EPYC
(TF 2.21, oneDNN) 0.4-0.95x the time of the space-to-batch form at Xception-65's rates 2-6 (batch 1
and 2), but 3-18x past a dilated span of 13 pixels (oneDNN's fast kernel stops there); rates 12 and 18
on 33x33 split into a space-to-batch block and an in-place rest took 0.5-0.6x
(`benchmarks/dilated_depthwise.py`).

TF's own CPU kernel (oneDNN off: `TF_ENABLE_ONEDNN_OPTS=0`, builds without oneDNN, macOS) and other
devices do not take `dilations` in DepthwiseConv2dNative: a graph holding one does not run there.
So these kernels are chosen only by the kernel policy (`policy.for_device`, which probes them) and
never enter a portable model or export.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

# The longest dilated span `(kernel_size - 1) * rate + 1` (pixels) oneDNN's fast kernel takes.
DEFAULT_MAX_SPAN = 13


@functools.lru_cache(maxsize=None)
def native_dilated_depthwise_available() -> bool:
  """Whether DepthwiseConv2dNative computes dilations on this process's CPU (probed once).

  TF's oneDNN CPU kernel does; TF's own CPU kernel raises `UnimplementedError`.
  """
  with tf.init_scope(), tf.device("/CPU:0"):
    try:
      tf.raw_ops.DepthwiseConv2dNative(input=tf.ones([1, 5, 5, 1]), filter=tf.ones([3, 3, 1, 1]),
                                       strides=[1, 1, 1, 1], padding="SAME",
                                       dilations=[1, 2, 2, 1])
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
      return False
  return True


def dilation_split(rate: int, kernel_size: int, size: Optional[int],
                   max_span: int = DEFAULT_MAX_SPAN) -> Optional[Tuple[int, int]]:
  """`(block, inner_rate)` with `block * inner_rate == rate` and an inner span the fast kernel takes.

  Among the splits whose inner span `(kernel_size - 1) * inner_rate + 1` is at most `max_span`
  pixels, the one whose block pads `size` (pixels; None: unknown) least, then the smallest block.
  None if there is none.
  """
  splits = [((-size) % block if size else 0, block, rate // block)
            for block in range(1, rate + 1) if rate % block == 0
            and (kernel_size - 1) * (rate // block) + 1 <= max_span]
  return min(splits)[1:] if splits else None


def dilation_splits(x, kernel, rate: Sequence[int], padding: str, max_span: int = DEFAULT_MAX_SPAN):
  """`[(block, inner rate)]` of the height and width for `x` and `kernel`, or None if one has none."""
  splits = [dilation_split(r, k, n, max_span) for r, k, n in zip(rate, kernel.shape[:2], x.shape[1:3])]
  if None in splits or (padding != "SAME" and any(block > 1 for block, _ in splits)):
    return None
  return splits


def _in_place_dilated_depthwise(x, kernel, splits, padding: str):
  """The forward of `dilated_depthwise_conv2d` for `dilation_splits`' `splits`."""
  blocks = [block for block, _ in splits]
  dilations = [1] + [inner for _, inner in splits] + [1]
  if blocks == [1, 1]:
    return tf.raw_ops.DepthwiseConv2dNative(input=x, filter=kernel, strides=[1, 1, 1, 1],
                                            padding=padding, dilations=dilations)
  # Zeros appended up to a multiple of the block stand where 'SAME' would pad: same outputs.
  height, width = tf.shape(x)[1], tf.shape(x)[2]
  y = tf.space_to_batch_nd(x, blocks, [[0, (-height) % blocks[0]], [0, (-width) % blocks[1]]])
  y = tf.raw_ops.DepthwiseConv2dNative(input=y, filter=kernel, strides=[1, 1, 1, 1], padding="SAME",
                                       dilations=dilations)
  return tf.batch_to_space(y, blocks, [[0, 0], [0, 0]])[:, :height, :width]


def dilated_depthwise_conv2d(x, kernel, rate: Sequence[int], padding: str,
                             max_span: int = DEFAULT_MAX_SPAN):
  """A stride-1 dilated depthwise convolution, with the dilation (or part of it) in place.

  The same function as `tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding, dilations=rate)`,
  computed by DepthwiseConv2dNative with `dilations`, after a space-to-batch by a block that divides
  the rate where the whole rate would span more than `max_span` pixels (`dilation_split`). TF's CPU
  gradient kernels of that op ignore `dilations` (their gradients came out wrong), so the gradient is
  that of `tf.nn.depthwise_conv2d`.

  Args:
    x: `[batch, height, width, channels]` float32 or bfloat16 tensor.
    kernel: `[kernel_height, kernel_width, channels, multiplier]` tensor of `x`'s dtype.
    rate: `(rate_height, rate_width)`, the dilation in pixels.
    padding: 'SAME' or 'VALID'.
    max_span: the longest in-place dilated span, pixels.

  Returns:
    `[batch, out_height, out_width, channels * multiplier]` in `x`'s dtype; `tf.nn.depthwise_conv2d`'s
    own result where no split applies ('VALID' padding with a rate above the span).
  """
  rate = [int(r) for r in rate]

  @tf.custom_gradient
  def convolution(x, kernel):
    def reference(x, kernel):
      return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding, dilations=rate)

    def gradient(dy):
      with tf.GradientTape() as tape:
        tape.watch([x, kernel])
        y = reference(x, kernel)
      return tape.gradient(y, [x, kernel], output_gradients=dy)

    splits = dilation_splits(x, kernel, rate, padding, max_span)
    y = reference(x, kernel) if splits is None else _in_place_dilated_depthwise(x, kernel, splits,
                                                                                padding)
    return y, gradient

  return convolution(x, kernel)


def depthwise_conv(inputs, kernel, strides, padding: str, dilation_rate, data_format: str,
                   max_span: int = 0):
  """`keras.ops.depthwise_conv`, with `dilated_depthwise_conv2d` where `max_span` allows it.

  Takes `keras.ops.depthwise_conv`'s arguments, all given and in this order, plus `max_span` (pixels;
  0: never in place), and returns its result. `dilated_depthwise_conv2d` runs where all hold: stride
  1, a dilation above 1, channels_last, float32 or bfloat16, and a `dilation_split` of each rate
  ('SAME' padding, or the rate's whole span within `max_span`).
  """
  strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  rate = (dilation_rate,) * 2 if isinstance(dilation_rate, int) else tuple(dilation_rate)
  if (max_span and max(rate) > 1 and max(strides) == 1 and data_format == "channels_last"
      and inputs.dtype in (tf.float32, tf.bfloat16)
      and dilation_splits(inputs, kernel, rate, padding.upper(), max_span) is not None):
    return dilated_depthwise_conv2d(inputs, kernel, rate, padding.upper(), max_span)
  return keras.ops.depthwise_conv(inputs, kernel, strides=strides, padding=padding,
                                  dilation_rate=rate, data_format=data_format)
