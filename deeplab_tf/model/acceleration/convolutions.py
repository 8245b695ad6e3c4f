"""CPU kernels of the network's convolutions: channel padding, pointwise matrix products, fast depthwise.

Each class here is Keras' own layer (same variables, same config keys plus its own, same function) with
another way of computing it; the kernel policy (`policy.apply_kernel_policy`) puts them into a built
model, the builders never do. Their registered names are those of the releases that had them in
`model/layers.py`, so `.keras` files of those releases load.
"""

from __future__ import annotations

from typing import Sequence

import keras
import tensorflow as tf

from deeplab_tf.model.acceleration import channel_padding as padding_lib
from deeplab_tf.model.acceleration import dilated_depthwise


@keras.saving.register_keras_serializable(package="deeplab_tf")
class Conv2D(keras.layers.Conv2D):
  """Keras' Conv2D whose input and output may carry zero channels beyond its variables' (channel
  padding, `channel_padding` module).

  The variables (`kernel` `[kh, kw, in, filters]`, `bias` `[filters]`) are Keras' own, as the
  original's checkpoints have them; the input has `in + input_channel_padding` channels whose last
  ones are zeros, and the output `filters + output_channel_padding` channels whose last ones are
  zeros: the call convolves with the kernel zero-padded on both channel axes (`pad_kernel`).

  Args:
    input_channel_padding: trailing zero channels of the input.
    output_channel_padding: trailing zero channels appended to the output.
    **kwargs: Keras' Conv2D arguments.

  Raises:
    ValueError: a negative padding, or a padding with `data_format='channels_first'` or `groups` > 1.
  """

  def __init__(self, *args, input_channel_padding: int = 0, output_channel_padding: int = 0,
               **kwargs):
    super().__init__(*args, **kwargs)
    padding_lib.check_channel_padding(self, input_channel_padding, output_channel_padding)
    if (input_channel_padding or output_channel_padding) and self.groups != 1:
      raise ValueError(f"{self.name}: channel padding needs groups=1, got {self.groups}.")
    self.input_channel_padding = int(input_channel_padding)
    self.output_channel_padding = int(output_channel_padding)

  def build(self, input_shape):
    padding_lib.build_for_padded_input(self, super().build, input_shape, self.input_channel_padding)

  def compute_output_shape(self, input_shape):
    shape = tuple(super().compute_output_shape(input_shape))
    return shape[:-1] + (shape[-1] + self.output_channel_padding,)

  def get_config(self):
    return {**super().get_config(), "input_channel_padding": self.input_channel_padding,
            "output_channel_padding": self.output_channel_padding}

  @property
  def _padded(self) -> bool:
    return bool(self.input_channel_padding or self.output_channel_padding)

  def padded_kernel(self, dtype):
    """`[kh, kw, in + input pad, filters + output pad]` kernel in `dtype`, zero-padded."""
    return padding_lib.pad_kernel(tf.cast(self.kernel, dtype), False, self.input_channel_padding,
                                  self.output_channel_padding)

  def _add_bias(self, outputs):
    """`outputs` plus the bias (zero-padded), if the layer has one."""
    if not self.use_bias:
      return outputs
    return tf.nn.bias_add(outputs, padding_lib.pad_channels(tf.cast(self.bias, outputs.dtype),
                                                            self.output_channel_padding))

  def _activate(self, outputs):
    return outputs if self.activation is None else self.activation(outputs)

  def call(self, inputs):
    if not self._padded:
      return super().call(inputs)
    return self._activate(self._add_bias(self.convolution_op(inputs, self.padded_kernel(inputs.dtype))))


@keras.saving.register_keras_serializable(package="deeplab_tf")
class PointwiseConv2D(Conv2D):
  """A 1x1, stride-1, undilated `Conv2D` computed as one matrix product.

  `reshape(x, [-1, in]) @ reshape(kernel, [in, out])`: in training (`matmul_in_training`) its two
  backward products run on TF's MatMul kernels, faster on oneDNN CPUs than the convolution's backward
  passes for these shapes (Xception's pointwise convolutions carry most of its multiply-adds). At
  inference (`matmul_at_inference`, which the CPU policy sets on float32 BatchNorm-folded models, with
  no BatchNorm left for grappler to fuse into the convolution) the folded float32 Xception-65 at
  513x513 ran 1.05-1.06x faster (bfloat16: 0.91x, so bfloat16 keeps the convolution).

  Channel padding as `Conv2D`.

  Args:
    matmul_in_training: compute `training=True` calls as a matrix product.
    matmul_at_inference: compute inference as a matrix product too.
    **kwargs: `Conv2D`'s arguments.
  """

  def __init__(self, *args, matmul_in_training: bool = True, matmul_at_inference: bool = False,
               **kwargs):
    super().__init__(*args, **kwargs)
    self.matmul_in_training = bool(matmul_in_training)
    self.matmul_at_inference = bool(matmul_at_inference)

  def get_config(self):
    return {**super().get_config(), "matmul_in_training": self.matmul_in_training,
            "matmul_at_inference": self.matmul_at_inference}

  def call(self, inputs, training=None):
    matmul = self.matmul_in_training if training else self.matmul_at_inference
    if not (matmul and self.data_format == "channels_last"):
      return super().call(inputs)
    channels = inputs.shape[-1]
    filters = self.filters + self.output_channel_padding
    kernel = self.padded_kernel(inputs.dtype) if self._padded else self.kernel
    outputs = tf.matmul(tf.reshape(inputs, [-1, channels]), tf.reshape(kernel, [channels, filters]))
    outputs = self._add_bias(outputs)  # Before the reshape: grappler fuses it (_FusedMatMul).
    outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [filters]], axis=0))
    return self._activate(outputs)


def depthwise_conv2d_float32_input_gradient(x, kernel, strides: Sequence[int], padding: str):
  """`tf.nn.depthwise_conv2d` whose gradient with respect to `x` is computed in float32.

  Args:
    x: `[batch, height, width, channels]` bfloat16 (or float16) tensor.
    kernel: `[kernel_height, kernel_width, channels, multiplier]` tensor of `x`'s dtype.
    strides: `[1, stride, stride, 1]`.
    padding: 'SAME' or 'VALID'.

  Returns:
    The convolution, `[batch, out_height, out_width, channels * multiplier]` in `x`'s dtype, with
    the same forward computation and kernel gradient as TF's; the input gradient is
    DepthwiseConv2dNativeBackpropInput on float32 copies of the kernel and the output gradient,
    rounded to `x`'s dtype.
  """

  @tf.custom_gradient
  def convolution(x, kernel):
    def gradient(dy):
      dx = tf.raw_ops.DepthwiseConv2dNativeBackpropInput(
          input_sizes=tf.shape(x), filter=tf.cast(kernel, tf.float32),
          out_backprop=tf.cast(dy, tf.float32), strides=strides, padding=padding)
      dkernel = tf.raw_ops.DepthwiseConv2dNativeBackpropFilter(
          input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=strides, padding=padding)
      return tf.cast(dx, x.dtype), dkernel
    return tf.nn.depthwise_conv2d(x, kernel, strides, padding), gradient

  return convolution(x, kernel)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
  """Keras' DepthwiseConv2D (same variables, config and function) with oneDNN's faster kernels.

  - `in_place_dilation_max_span` > 0: dilated stride-1 convolutions run with the dilation in place
    (`dilated_depthwise.depthwise_conv`), a graph that runs on oneDNN CPUs only.
  - `bf16_strided_input_gradient_in_float32`: on bfloat16 inputs with a stride above 1 the gradient
    with respect to the input comes from the float32 kernel
    (`depthwise_conv2d_float32_input_gradient`): on an AVX-512-BF16 CPU oneDNN's strided bfloat16
    DepthwiseConv2dNativeBackpropInput took 2.5-6.5x the float32 kernel's time for Xception's three
    stride-2 depthwise convolutions at 513x513, batch 2 (`benchmarks/depthwise_gradients.py`).
  - `channel_padding` (see `Conv2D`): the input carries that many zero channels after the real ones,
    and so does the output; the kernel and bias are zero-padded at each call.

  Raises:
    ValueError: a negative padding, or a padding with `data_format='channels_first'` or
      `depth_multiplier` > 1.
  """

  def __init__(self, *args, channel_padding: int = 0, in_place_dilation_max_span: int = 0,
               bf16_strided_input_gradient_in_float32: bool = False, **kwargs):
    super().__init__(*args, **kwargs)
    padding_lib.check_channel_padding(self, channel_padding)
    if channel_padding and self.depth_multiplier != 1:
      raise ValueError(f"{self.name}: channel padding needs depth_multiplier=1, got "
                       f"{self.depth_multiplier}.")
    self.channel_padding = int(channel_padding)
    self.in_place_dilation_max_span = int(in_place_dilation_max_span)
    self.bf16_strided_input_gradient_in_float32 = bool(bf16_strided_input_gradient_in_float32)

  def build(self, input_shape):
    padding_lib.build_for_padded_input(self, super().build, input_shape, self.channel_padding)

  def get_config(self):
    return {**super().get_config(), "channel_padding": self.channel_padding,
            "in_place_dilation_max_span": self.in_place_dilation_max_span,
            "bf16_strided_input_gradient_in_float32": self.bf16_strided_input_gradient_in_float32}

  def depthwise(self, inputs, kernel):
    """The convolution of `inputs` with `kernel` (`[kh, kw, channels, multiplier]`, `inputs`' dtype),
    by this layer's kernels, without bias or activation."""
    if (inputs.dtype == tf.bfloat16 and self.bf16_strided_input_gradient_in_float32
        and max(self.strides) > 1 and self.data_format == "channels_last"):
      return depthwise_conv2d_float32_input_gradient(
          inputs, kernel, (1,) + tuple(self.strides) + (1,), self.padding.upper())
    return dilated_depthwise.depthwise_conv(inputs, kernel, self.strides, self.padding,
                                            self.dilation_rate, self.data_format,
                                            self.in_place_dilation_max_span)

  def call(self, inputs):
    kernel = padding_lib.pad_kernel(tf.cast(self.kernel, inputs.dtype), True, self.channel_padding)
    outputs = self.depthwise(inputs, kernel)
    if self.use_bias:
      outputs = tf.nn.bias_add(
          outputs, padding_lib.pad_channels(tf.cast(self.bias, outputs.dtype), self.channel_padding))
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs
