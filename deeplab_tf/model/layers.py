"""The building blocks every DeepLab encoder and head is made of.

Layer names follow one rule so that checkpoint import is a rule, not a table: a Keras layer is named after
the original's TF1 variable scope with `/` (which Keras forbids in names) spelled `.`; see
`scope_to_layer_name`. A convolution named `a.b.conv1` owns the checkpoint variables `a/b/conv1/weights`
and its BatchNorm layer `a.b.conv1.BatchNorm` owns `a/b/conv1/BatchNorm/{gamma,beta,moving_mean,
moving_variance}`, exactly as slim names them (research/deeplab `core/xception.py`, `core/utils.py`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Optional, Sequence, Tuple

import keras
import tensorflow as tf

from deeplab_tf.image_ops import resize_bilinear_align_corners

# Keras forbids "/" in layer names; the original scopes are spelled with "." instead.
SCOPE_SEPARATOR = "."

# [0, 255] RGB -> [-1, 1] ("_preprocess_zero_mean_unit_range" in research/deeplab core/feature_extractor.py).
ZERO_MEAN_UNIT_RANGE = "zero_mean_unit_range"
# [0, 255] RGB minus the ImageNet mean ("_preprocess_subtract_imagenet_mean"), for plain ResNet-v1.
SUBTRACT_IMAGENET_MEAN = "subtract_imagenet_mean"
IMAGENET_MEAN_RGB = (123.15, 115.90, 103.06)
# The RGB value each preprocessing maps to 0: what training and evaluation pad images with
# (REFERENCE.md "Input normalisation").
MEAN_PIXEL = {ZERO_MEAN_UNIT_RANGE: (127.5, 127.5, 127.5), SUBTRACT_IMAGENET_MEAN: IMAGENET_MEAN_RGB}


def mean_pixel_for_preprocessing(preprocessing: str):
  """The RGB padding value that `preprocessing` maps to 0.

  Raises:
    ValueError: for an unknown preprocessing name.
  """
  try:
    return MEAN_PIXEL[preprocessing]
  except KeyError:
    raise ValueError(f"preprocessing={preprocessing!r}: expected one of {sorted(MEAN_PIXEL)}.") from None


def scope_to_layer_name(scope: str) -> str:
  """`xception_65/entry_flow/conv1_1` -> `xception_65.entry_flow.conv1_1` (the one naming rule)."""
  return scope.replace("/", SCOPE_SEPARATOR)


def layer_name_to_scope(name: str) -> str:
  """Inverse of `scope_to_layer_name`."""
  return name.replace(SCOPE_SEPARATOR, "/")


@dataclasses.dataclass(frozen=True)
class BatchNormParams:
  """BatchNorm hyper-parameters: `decay` is Keras' momentum, `epsilon` is added to the variance.

  The original uses decay 0.9997 everywhere it trains BN (DeepLabv3, section 4.1), epsilon 1e-3 in
  Xception (`xception_arg_scope`) and MobileNetV2, 1e-5 in ResNet-v1-beta and in the DeepLab head
  (`model.py`, `utils.get_batch_norm_params`).
  """

  decay: float = 0.9997
  epsilon: float = 1e-3


def channel_padding(channels: int, multiple: int) -> int:
  """Zero channels that round `channels` up to a multiple of `multiple` (728, 16 -> 8; 736, 16 -> 0)."""
  return -channels % multiple


def _build_for_padded_input(layer, build, input_shape, padding: int) -> None:
  """Runs `build` (a Keras layer's own) on `input_shape` less `padding` trailing channels, then lets
  the layer accept the padded input: its variables have the real channels only (see `Conv2D`)."""
  if not padding:
    build(input_shape)
    return
  channels = input_shape[-1]
  if channels is None or channels <= padding:
    raise ValueError(f"{layer.name}: channel padding {padding} needs an input with more channels, "
                     f"got input shape {tuple(input_shape)}.")
  build(tuple(input_shape[:-1]) + (channels - padding,))
  layer.input_spec = keras.InputSpec(min_ndim=len(input_shape), axes={-1: channels})


def _check_channel_padding(layer, *paddings: int) -> None:
  """Raises ValueError unless the paddings are non-negative and the layer is channels-last."""
  if any(p < 0 for p in paddings):
    raise ValueError(f"{layer.name}: channel paddings {paddings} must be >= 0.")
  if any(paddings) and layer.data_format != "channels_last":
    raise ValueError(f"{layer.name}: channel padding needs data_format='channels_last', got "
                     f"{layer.data_format!r}.")


def channel_paddings(layer) -> Tuple[int, int]:
  """(input, output) zero channels a layer's input and output carry beyond its variables' channels.

  (0, 0) for every layer but this module's padded `Conv2D` (and `PointwiseConv2D`), `DepthwiseConv2D`
  and `FusedBatchNormalization`.
  """
  if isinstance(layer, Conv2D):
    return layer.input_channel_padding, layer.output_channel_padding
  if isinstance(layer, (DepthwiseConv2D, FusedBatchNormalization)):
    return layer.channel_padding, layer.channel_padding
  return 0, 0


CHANNEL_PADDING_KEYS = ("input_channel_padding", "output_channel_padding", "channel_padding")


def config_without_channel_padding(config):
  """A layer config with its channel paddings (`Conv2D`, `DepthwiseConv2D`,
  `FusedBatchNormalization`) set to 0: the same layer on the real channels only."""
  return {k: (0 if k in CHANNEL_PADDING_KEYS else v) for k, v in config.items()}


def without_channel_padding(model: keras.Model) -> keras.Model:
  """A copy of a functional `model` whose layers carry no channel padding (see `Conv2D`): the same
  variables' values and the same outputs, computed on the real channels only (for inference
  exports such as TFLite, where the padding only costs). `model` itself if nothing is padded."""
  if not any(any(channel_paddings(layer)) for layer in model.layers):
    return model
  copy = keras.models.clone_model(
      model, clone_function=lambda layer: layer.__class__.from_config(
          config_without_channel_padding(layer.get_config())))
  copy.set_weights(model.get_weights())
  return copy


def pad_kernel(kernel, depthwise: bool, input_channel_padding: int, output_channel_padding: int = 0):
  """A `[kh, kw, in, out]` convolution kernel (or `[kh, kw, channels, 1]` depthwise kernel) with zero
  input and output channels appended: `[kh, kw, in + input pad, out + output pad]` (depthwise:
  `[kh, kw, channels + input pad, 1]`), a tensor of `kernel`'s dtype."""
  out_pad = 0 if depthwise else output_channel_padding
  if not (input_channel_padding or out_pad):
    return tf.convert_to_tensor(kernel)
  return tf.pad(kernel, [[0, 0], [0, 0], [0, input_channel_padding], [0, out_pad]])


def pad_channels(vector, padding: int, value: float = 0.0):
  """A `[channels]` vector (bias, BN statistic) with `padding` entries of `value` appended."""
  if not padding:
    return tf.convert_to_tensor(vector)
  return tf.pad(vector, [[0, padding]], constant_values=value)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class FusedBatchNormalization(keras.layers.BatchNormalization):
  """Keras' BatchNormalization computed by TF's fused kernel (FusedBatchNormV3), as the original's slim.

  The variables (`gamma`, `beta`, `moving_mean`, `moving_variance`), the attributes the trainer switches
  (`momentum` for `batch_norm_decay`, `trainable=False` for `fine_tune_batch_norm=False`,
  `synchronized` for `sync_batch_norm`) and the config are Keras' own; only the arithmetic changes:
  - training (`training=True` and `trainable`): one FusedBatchNormV3 (and its fused gradient) instead
    of Keras' ~10 separate moment and normalisation ops. The moving averages are updated as Keras
    does (`moving = momentum * moving + (1 - momentum) * batch`) with the batch variance the fused
    kernel returns, which carries Bessel's correction `n / (n - 1)` (n = batch * height * width), as
    research/deeplab's slim `batch_norm(fused=True)` (its default for 4-D NHWC inputs) does. The
    output is normalised by the biased variance, as both.
  - `synchronized` training: moments of the global batch through three all-reduces (sum, sum of
    squares, count; the same as Keras'), normalisation by `tf.nn.batch_normalization`, moving
    variance with the same Bessel correction over the global count.
  - inference (or a frozen layer): FusedBatchNormV3 with `is_training=False`, which TF's grappler
    remapper fuses into the preceding convolution (`_FusedConv2D`) with oneDNN; on bfloat16/float16
    activations one multiply-add in that dtype with the folded per-channel scale and offset
    (`BF16_INFERENCE_AS_AFFINE`; oneDNN's bfloat16 inference BN kernel measured 1.2x slower).
  Unlike `tf.nn.fused_batch_norm`, `epsilon` is used as given (no clamp to 1.001e-5).
  Under mixed precision inference takes bfloat16/float16 activations with float32 statistics, so no
  Cast surrounds the layer. Training on bfloat16 activations runs the bfloat16 kernel, with the
  channels zero-padded to a multiple of 16 around it when they are not one
  (`BF16_TRAINING_BN_CHANNEL_MULTIPLE`; Xception's 728 become 736): on an AVX-512-BF16 CPU oneDNN's
  bfloat16 FusedBatchNormV3 with its gradient runs fast on whole 16-float vectors only. At
  [2, 33..129, 33..129, 728] it took 2.0-2.5x the time of the float32 kernel between two casts
  (what this layer did before), and 0.55-0.7x padded to 736 (`benchmarks/batch_norm_channels.py`,
  benchmarks/README.md). The padded channels are zeros, normalised separately and sliced away; the
  real channels' moments, outputs and gradients do not depend on them. float16 (a GPU's) is never
  padded.
  Inputs other than 4-D channels-last (or with a mask, or `renorm`) fall back to Keras'
  implementation.

  `channel_padding` (see `Conv2D`): the input carries that many zero channels after the real ones,
  which the output carries too (zeros: padded `gamma` 1, `beta` 0, moving mean 0, moving variance
  1); the variables and the moving-average updates cover the real channels only.

  Args:
    channel_padding: trailing zero channels of the input and output beyond the variables'.
    **kwargs: Keras' BatchNormalization arguments.

  Raises:
    ValueError: `channel_padding` < 0, or a padded input the fused kernel cannot take (not 4-D
      channels-last, a mask, `renorm`).
  """

  def __init__(self, *args, channel_padding: int = 0, **kwargs):
    super().__init__(*args, **kwargs)
    if channel_padding < 0:
      raise ValueError(f"{self.name}: channel_padding={channel_padding} must be >= 0.")
    self.channel_padding = int(channel_padding)

  def build(self, input_shape):
    _build_for_padded_input(self, super().build, input_shape, self.channel_padding)

  def get_config(self):
    return {**super().get_config(), "channel_padding": self.channel_padding}

  def _is_fusable(self, inputs, mask) -> bool:
    rank = len(inputs.shape)
    return (rank == 4 and self.axis in (-1, 3) and mask is None and not self.renorm and self.center
            and self.scale and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16))

  def call(self, inputs, training=None, mask=None):
    if not self._is_fusable(inputs, mask):
      if self.channel_padding:
        raise ValueError(f"{self.name}: channel_padding needs a 4-D channels-last input without "
                         f"mask or renorm, got shape {inputs.shape}.")
      return super().call(inputs, training=training, mask=mask)
    pad = self.channel_padding
    gamma = pad_channels(self.gamma, pad, 1.0)
    beta = pad_channels(self.beta, pad)
    moving_mean = pad_channels(self.moving_mean, pad)
    moving_variance = pad_channels(self.moving_variance, pad, 1.0)
    replica = tf.distribute.get_replica_context()
    if training and self.trainable and self.synchronized and replica is not None:
      outputs = self._synchronized_call(replica, inputs, gamma, beta)
    elif training and self.trainable:
      empty = tf.zeros([0], tf.float32)
      x, channels = inputs, inputs.shape[-1]
      pad = bf16_training_bn_channel_padding(channels) if x.dtype == tf.bfloat16 else 0
      if pad:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, pad]])
        gamma = pad_channels(gamma, pad, 1.0)
        beta = pad_channels(beta, pad)
      outputs, mean, variance = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
          exponential_avg_factor=1.0, data_format="NHWC", is_training=True)[:3]
      if pad:  # Slice (not strided): its gradient is one Pad.
        outputs = tf.slice(outputs, [0, 0, 0, 0], [-1, -1, -1, channels])
      self._update_moving_averages(mean, variance)
    elif inputs.dtype != tf.float32 and BF16_INFERENCE_AS_AFFINE:
      # oneDNN's bfloat16 inference BN kernel is slower than one multiply-add in bfloat16.
      scale = gamma * tf.math.rsqrt(moving_variance + self.epsilon)
      offset = beta - moving_mean * scale
      outputs = inputs * tf.cast(scale, inputs.dtype) + tf.cast(offset, inputs.dtype)
    else:
      outputs = tf.raw_ops.FusedBatchNormV3(
          x=inputs, scale=gamma, offset=beta, mean=moving_mean, variance=moving_variance,
          epsilon=self.epsilon, data_format="NHWC", is_training=False)[0]
    return tf.cast(outputs, self.compute_dtype)

  def _update_moving_averages(self, mean, unbiased_variance):
    """moving = momentum * moving + (1 - momentum) * batch, on the real channels of `mean` and
    `unbiased_variance` (`[channels + padding]` float32)."""
    channels = self.moving_mean.shape[0]
    if mean.shape[0] != channels:
      mean, unbiased_variance = mean[:channels], unbiased_variance[:channels]
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + unbiased_variance * (1.0 - self.momentum))

  def _synchronized_call(self, replica, inputs, gamma, beta):
    x = tf.cast(inputs, tf.float32)
    axes = [0, 1, 2]
    total = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(x, axes))
    squares = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(x), axes))
    count = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                               tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32))
    mean = tf.math.divide_no_nan(total, count)
    variance = tf.maximum(tf.math.divide_no_nan(squares, count) - tf.square(mean), 0.0)
    self._update_moving_averages(mean, variance * count / tf.maximum(count - 1.0, 1.0))
    outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)
    return tf.cast(outputs, inputs.dtype)


# Training computes 1x1 stride-1 convolutions as matrix products (see `PointwiseConv2D`); False
# keeps the convolution kernel (benchmarks/compare.py times both).
POINTWISE_AS_MATMUL_IN_TRAINING = True
# Inference BN on bfloat16/float16 activations as a multiply-add (see `FusedBatchNormalization`).
BF16_INFERENCE_AS_AFFINE = True
# Training BN on bfloat16 activations pads the channels with zeros up to a multiple of this (see
# `FusedBatchNormalization`): oneDNN's AVX-512 vectors hold 16 floats. 1 never pads.
BF16_TRAINING_BN_CHANNEL_MULTIPLE = 16


def bf16_training_bn_channel_padding(channels: Optional[int]) -> int:
  """Zero channels appended around a bfloat16 training BN of `channels` channels (0 if unknown).

  `channels` rounded up to a multiple of `BF16_TRAINING_BN_CHANNEL_MULTIPLE`, minus `channels`:
  728 -> 8, 736 -> 0 (measured in benchmarks/README.md, "bfloat16 BatchNorm by channel count").
  """
  if channels is None:
    return 0
  return channel_padding(channels, BF16_TRAINING_BN_CHANNEL_MULTIPLE)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class Conv2D(keras.layers.Conv2D):
  """Keras' Conv2D whose input and output may carry zero channels beyond its variables' (channel
  padding).

  The variables (`kernel` `[kh, kw, in, filters]`, `bias` `[filters]`) are Keras' own, as the
  original's checkpoints have them; the input has `in + input_channel_padding` channels whose last
  ones are zeros, and the output `filters + output_channel_padding` channels whose last ones are
  zeros: the call convolves with the kernel zero-padded on both channel axes (`pad_kernel`). The
  real channels' values are the unpadded convolution's (up to float32 summation order).

  Why: on an AVX-512 CPU oneDNN's kernels run on whole 16-float vectors, and Xception's 728
  channels (45.5 vectors) made its BatchNorm and depthwise kernels 1.3x / 1.5x slower per channel
  than 736 in float32 (2-4x for bfloat16 BN); carried through the network as 736, the padding is
  paid once per weight instead of once per activation (`encoders/xception.py` `CHANNEL_MULTIPLE`,
  benchmarks/README.md "728 channels carried as 736").

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
    _check_channel_padding(self, input_channel_padding, output_channel_padding)
    if (input_channel_padding or output_channel_padding) and self.groups != 1:
      raise ValueError(f"{self.name}: channel padding needs groups=1, got {self.groups}.")
    self.input_channel_padding = int(input_channel_padding)
    self.output_channel_padding = int(output_channel_padding)

  def build(self, input_shape):
    _build_for_padded_input(self, super().build, input_shape, self.input_channel_padding)

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
    return pad_kernel(tf.cast(self.kernel, dtype), False, self.input_channel_padding,
                      self.output_channel_padding)

  def _add_bias(self, outputs):
    """`outputs` plus the bias (zero-padded), if the layer has one."""
    if not self.use_bias:
      return outputs
    return tf.nn.bias_add(
        outputs, pad_channels(tf.cast(self.bias, outputs.dtype), self.output_channel_padding))

  def _activate(self, outputs):
    return outputs if self.activation is None else self.activation(outputs)

  def call(self, inputs):
    if not self._padded:
      return super().call(inputs)
    return self._activate(self._add_bias(self.convolution_op(inputs, self.padded_kernel(inputs.dtype))))


@keras.saving.register_keras_serializable(package="deeplab_tf")
class PointwiseConv2D(Conv2D):
  """A 1x1, stride-1, undilated `Conv2D` that trains as one matrix product.

  The same layer (class, variables `kernel` `[1, 1, in, out]` and `bias`, config) as Keras' Conv2D;
  with `training=True` it computes `reshape(x, [-1, in]) @ reshape(kernel, [in, out])`, whose two
  backward products run on TF's MatMul kernels, faster than oneDNN's convolution backward passes
  for these shapes (Xception's pointwise convolutions carry most of its multiply-adds). Inference
  keeps the convolution, which grappler fuses with the BatchNorm and ReLU after it, unless
  `matmul_at_inference` (set by `folding.fold_batch_norm` on float32 copies, which have no
  BatchNorm left to fuse): the folded float32 Xception-65 at 513x513 ran 1.05-1.06x faster with
  matrix products (bfloat16: 0.91x, so bfloat16 copies keep the convolution; benchmarks/README.md).

  Channel padding as `Conv2D`.

  Args:
    matmul_at_inference: compute inference as a matrix product too.
    **kwargs: `Conv2D`'s arguments.
  """

  def __init__(self, *args, matmul_at_inference: bool = False, **kwargs):
    super().__init__(*args, **kwargs)
    self.matmul_at_inference = matmul_at_inference

  def get_config(self):
    return {**super().get_config(), "matmul_at_inference": self.matmul_at_inference}

  def call(self, inputs, training=None):
    matmul = POINTWISE_AS_MATMUL_IN_TRAINING if training else self.matmul_at_inference
    if not (matmul and self.data_format == "channels_last"):
      return super().call(inputs)
    channels = inputs.shape[-1]
    filters = self.filters + self.output_channel_padding
    kernel = self.padded_kernel(inputs.dtype) if self._padded else self.kernel
    outputs = tf.matmul(tf.reshape(inputs, [-1, channels]), tf.reshape(kernel, [channels, filters]))
    outputs = self._add_bias(outputs)  # Before the reshape: grappler fuses it (_FusedMatMul).
    outputs = tf.reshape(outputs, tf.concat([tf.shape(inputs)[:-1], [filters]], axis=0))
    return self._activate(outputs)


# Strided depthwise convolutions on bfloat16 take their input gradient from the float32 kernel (see
# `DepthwiseConv2D`).
BF16_STRIDED_DEPTHWISE_INPUT_GRADIENT_IN_FLOAT32 = True


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


# Stride-1 dilated depthwise convolutions run on TF's DepthwiseConv2dNative with the dilation in
# place when the dilated kernel spans at most this many pixels (`(kernel_size - 1) * rate + 1`).
# Larger rates are split: space-to-batch with a block that divides the rate, then the in-place
# dilation of what is left. On a 2-vCPU AVX-512 EPYC (TF 2.21, oneDNN) the in-place forward took
# 0.4-0.95x the time of TF's space-to-batch form at Xception-65's rates 2-6 (batch 1 and 2), but
# 3-18x at spans of 15 and more (oneDNN's fast kernel stops there); split, rates 12 and 18 on 33x33
# took 0.5-0.6x (`benchmarks/dilated_depthwise.py`).
NATIVE_DILATED_DEPTHWISE_MAX_SPAN = 13


@functools.lru_cache(maxsize=None)
def native_dilated_depthwise_available() -> bool:
  """Whether DepthwiseConv2dNative computes dilations here (probed once, on the CPU).

  TF's oneDNN CPU kernel does; TF's own CPU kernel (oneDNN off: `TF_ENABLE_ONEDNN_OPTS=0`, or a build
  without it) raises `UnimplementedError`. With a GPU visible the answer is False: the op would be
  placed there, and this is not checked.
  """
  if tf.config.list_physical_devices("GPU"):
    return False
  with tf.init_scope(), tf.device("/CPU:0"):
    try:
      tf.raw_ops.DepthwiseConv2dNative(input=tf.ones([1, 5, 5, 1]), filter=tf.ones([3, 3, 1, 1]),
                                       strides=[1, 1, 1, 1], padding="SAME",
                                       dilations=[1, 2, 2, 1])
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError, tf.errors.NotFoundError):
      return False
  return True


def dilation_split(rate: int, kernel_size: int, size: Optional[int]) -> Optional[Tuple[int, int]]:
  """`(block, inner_rate)` with `block * inner_rate == rate` and an inner span the fast kernel takes.

  Among the splits whose inner span `(kernel_size - 1) * inner_rate + 1` is at most
  `NATIVE_DILATED_DEPTHWISE_MAX_SPAN`, the one whose block pads `size` (pixels; None: unknown) least,
  then the smallest block. None if there is none.
  """
  splits = [((-size) % block if size else 0, block, rate // block)
            for block in range(1, rate + 1) if rate % block == 0
            and (kernel_size - 1) * (rate // block) + 1 <= NATIVE_DILATED_DEPTHWISE_MAX_SPAN]
  return min(splits)[1:] if splits else None


def _dilation_splits(x, kernel, rate: Sequence[int], padding: str):
  """`[(block, inner rate)]` of the height and width for `x` and `kernel`, or None if one has none."""
  splits = [dilation_split(r, k, n) for r, k, n in zip(rate, kernel.shape[:2], x.shape[1:3])]
  if None in splits or (padding != "SAME" and any(block > 1 for block, _ in splits)):
    return None
  return splits


def _in_place_dilated_depthwise(x, kernel, rate: Sequence[int], padding: str):
  """The forward of `dilated_depthwise_conv2d`; None where no split applies."""
  splits = _dilation_splits(x, kernel, rate, padding)
  if splits is None:
    return None
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


def dilated_depthwise_conv2d(x, kernel, rate: Sequence[int], padding: str):
  """A stride-1 dilated (atrous) depthwise convolution, with the dilation (or part of it) in place.

  `tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], padding, dilations=rate)` computes a dilated
  depthwise convolution as SpaceToBatchND with the rate as block, an undilated convolution and
  BatchToSpaceND (as the original does: its slim `separable_conv2d` calls it). This runs
  DepthwiseConv2dNative with its `dilations` instead, after a space-to-batch by a block that divides
  the rate where the whole rate would span more than `NATIVE_DILATED_DEPTHWISE_MAX_SPAN` pixels
  (`dilation_split`): the same function, faster on oneDNN. TF's CPU gradient kernels of that op
  ignore `dilations` (their gradients came out wrong, max error the size of the gradient itself), so
  the gradient is that of `tf.nn.depthwise_conv2d`.

  Args:
    x: `[batch, height, width, channels]` float32 or bfloat16 tensor.
    kernel: `[kernel_height, kernel_width, channels, multiplier]` tensor of `x`'s dtype.
    rate: `(rate_height, rate_width)`, the dilation in pixels.
    padding: 'SAME' or 'VALID'.

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

    y = _in_place_dilated_depthwise(x, kernel, rate, padding)
    return (reference(x, kernel) if y is None else y), gradient

  return convolution(x, kernel)


def depthwise_conv(inputs, kernel, strides, padding: str, dilation_rate, data_format: str):
  """`keras.ops.depthwise_conv`, with `dilated_depthwise_conv2d` where it is faster.

  Takes `keras.ops.depthwise_conv`'s arguments, all given and in this order, and returns its
  result. `dilated_depthwise_conv2d` runs where all hold: stride 1, a dilation above 1,
  channels_last, float32 or bfloat16, a `dilation_split` of each rate ('SAME' padding, or the rate's
  whole span within `NATIVE_DILATED_DEPTHWISE_MAX_SPAN`), and
  `native_dilated_depthwise_available()`.
  """
  strides = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  rate = (dilation_rate,) * 2 if isinstance(dilation_rate, int) else tuple(dilation_rate)
  if (max(rate) > 1 and max(strides) == 1 and data_format == "channels_last"
      and inputs.dtype in (tf.float32, tf.bfloat16) and native_dilated_depthwise_available()
      and _dilation_splits(inputs, kernel, rate, padding.upper()) is not None):
    return dilated_depthwise_conv2d(inputs, kernel, rate, padding.upper())
  return keras.ops.depthwise_conv(inputs, kernel, strides=strides, padding=padding,
                                  dilation_rate=rate, data_format=data_format)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
  """Keras' DepthwiseConv2D (same variables, config and function) with faster dilated convolutions
  and a faster strided bfloat16 input gradient.

  Dilated (atrous) stride-1 convolutions go through `depthwise_conv`, which runs them with the
  dilation in place, whole or after a smaller space-to-batch (`dilated_depthwise_conv2d`).

  On bfloat16 inputs with a stride above 1 the gradient with respect to the input comes from the
  float32 kernel (`depthwise_conv2d_float32_input_gradient`, `BF16_STRIDED_DEPTHWISE_INPUT_GRADIENT_
  IN_FLOAT32`): on an AVX-512-BF16 CPU oneDNN's strided bfloat16 DepthwiseConv2dNativeBackpropInput
  took 2.5-6.5x the float32 kernel's time for Xception's three stride-2 depthwise convolutions at
  513x513, batch 2 (18-35 ms against 2.8-14 ms; with the casts 3.4-11.7 ms;
  `benchmarks/depthwise_gradients.py`). Everything else is Keras' own.

  `channel_padding` (see `Conv2D`): the input carries that many zero channels after the real ones,
  and so does the output; the kernel and bias are zero-padded at each call.

  Args:
    channel_padding: trailing zero channels of the input and output beyond the variables'.
    **kwargs: Keras' DepthwiseConv2D arguments.

  Raises:
    ValueError: a negative padding, or a padding with `data_format='channels_first'` or
      `depth_multiplier` > 1.
  """

  def __init__(self, *args, channel_padding: int = 0, **kwargs):
    super().__init__(*args, **kwargs)
    _check_channel_padding(self, channel_padding)
    if channel_padding and self.depth_multiplier != 1:
      raise ValueError(f"{self.name}: channel padding needs depth_multiplier=1, got "
                       f"{self.depth_multiplier}.")
    self.channel_padding = int(channel_padding)

  def build(self, input_shape):
    _build_for_padded_input(self, super().build, input_shape, self.channel_padding)

  def get_config(self):
    return {**super().get_config(), "channel_padding": self.channel_padding}

  def call(self, inputs):
    float32_input_gradient = (
        inputs.dtype == tf.bfloat16 and BF16_STRIDED_DEPTHWISE_INPUT_GRADIENT_IN_FLOAT32
        and max(self.strides) > 1 and self.data_format == "channels_last")
    if not (float32_input_gradient or self.channel_padding or max(self.dilation_rate) > 1):
      return super().call(inputs)
    kernel = pad_kernel(tf.cast(self.kernel, inputs.dtype), True, self.channel_padding)
    if float32_input_gradient:
      outputs = depthwise_conv2d_float32_input_gradient(
          inputs, kernel, (1,) + tuple(self.strides) + (1,), self.padding.upper())
    else:
      outputs = depthwise_conv(inputs, kernel, self.strides, self.padding, self.dilation_rate,
                               self.data_format)
    if self.use_bias:
      outputs = tf.nn.bias_add(
          outputs, pad_channels(tf.cast(self.bias, outputs.dtype), self.channel_padding))
    if self.activation is not None:
      outputs = self.activation(outputs)
    return outputs


def batch_norm(x, scope: str, params: BatchNormParams, channel_padding: int = 0):
  """BatchNorm with scale and centre, named `<scope>.BatchNorm` (slim's `<scope>/BatchNorm`).

  A `FusedBatchNormalization` (TF's fused kernel, as the original's slim `batch_norm`);
  `channel_padding`: trailing zero channels of `x` (see `Conv2D`).
  """
  return FusedBatchNormalization(
      momentum=params.decay, epsilon=params.epsilon, center=True, scale=True,
      channel_padding=channel_padding, name=scope_to_layer_name(scope + "/BatchNorm"))(x)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class DropChannelPadding(keras.layers.Layer):
  """`[batch, height, width, channels + padding]` -> `[batch, height, width, channels]`: the real
  channels of a channel-padded tensor (see `Conv2D`), for features a model exposes.

  Args:
    channels: the real channels to keep.
  """

  def __init__(self, channels: int, **kwargs):
    super().__init__(**kwargs)
    self.channels = int(channels)

  def call(self, inputs):
    return tf.slice(inputs, [0, 0, 0, 0], [-1, -1, -1, self.channels])

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (self.channels,)

  def get_config(self):
    return {**super().get_config(), "channels": self.channels}


def relu(x, name: Optional[str] = None, max_value: Optional[float] = None):
  """ReLU, or ReLU6 with `max_value=6` (research/deeplab's `use_bounded_activation`)."""
  return keras.layers.ReLU(max_value=max_value, name=scope_to_layer_name(name) if name else None)(x)


def fixed_padding(x, kernel_size: int, rate: int = 1, name: Optional[str] = None):
  """Pads `x` so that a VALID strided convolution behaves as the original's `conv2d_same`.

  research/deeplab (`core/resnet_utils.py`, `fixed_padding`) pads `(k_eff - 1) // 2` pixels before and
  the rest after, with `k_eff = k + (k - 1) * (rate - 1)`, independently of the input size. TF's 'SAME'
  padding would put the odd pixel after on even inputs and shift the sampling grid by one.

  Args:
    x: `[batch, height, width, channels]` tensor.
    kernel_size: kernel size in pixels.
    rate: atrous rate.
    name: Keras layer name.

  Returns:
    `[batch, height + k_eff - 1, width + k_eff - 1, channels]` zero-padded tensor.
  """
  kernel_size_effective = kernel_size + (kernel_size - 1) * (rate - 1)
  pad_total = kernel_size_effective - 1
  pad_beg = pad_total // 2
  pad_end = pad_total - pad_beg
  if pad_total == 0:
    return x
  return keras.layers.ZeroPadding2D(((pad_beg, pad_end), (pad_beg, pad_end)), name=name)(x)


def conv2d_same(x, filters: int, kernel_size: int, stride: int, rate: int, scope: str, *,
                bn_params: Optional[BatchNormParams], activation: bool = True,
                kernel_initializer="glorot_uniform", use_bias: Optional[bool] = None,
                relu_max_value: Optional[float] = None, input_channel_padding: int = 0,
                output_channel_padding: int = 0):
  """Conv (+ BN) (+ ReLU) with the original's padding: 'SAME' at stride 1, fixed padding otherwise.

  Args:
    x: `[batch, height, width, channels]` float tensor.
    filters: output channels.
    kernel_size: kernel size in pixels.
    stride: stride; with stride > 1 the input is padded by `fixed_padding` and the conv is VALID.
    rate: atrous (dilation) rate; must be 1 when stride > 1 (atrous convolution replaces striding).
    scope: the original's variable scope, e.g. `xception_65/entry_flow/conv1_1`.
    bn_params: BatchNorm after the conv, or None for none (then the conv has a bias, as slim's).
    activation: ReLU at the end.
    kernel_initializer: Keras initializer of the kernel.
    use_bias: override of the bias (default: a bias exactly when there is no BatchNorm).
    relu_max_value: 6 makes the activation ReLU6 (`use_bounded_activation`).
    input_channel_padding: trailing zero channels of `x` (see `Conv2D`).
    output_channel_padding: trailing zero channels to append to the output.

  Returns:
    `[batch, ceil(height / stride), ceil(width / stride), filters + output_channel_padding]` tensor.
  """
  name = scope_to_layer_name(scope)
  if stride > 1 and kernel_size > 1:
    x = fixed_padding(x, kernel_size, rate, name=name + ".pad")
    padding = "valid"
  else:
    padding = "same"
  if use_bias is None:
    use_bias = bn_params is None
  kwargs = {}
  if input_channel_padding or output_channel_padding:
    conv = Conv2D
    kwargs = dict(input_channel_padding=input_channel_padding,
                  output_channel_padding=output_channel_padding)
  else:
    conv = keras.layers.Conv2D
  if kernel_size == 1 and stride == 1 and rate == 1:
    conv = PointwiseConv2D
  x = conv(filters, kernel_size, strides=stride, dilation_rate=rate, padding=padding,
           use_bias=use_bias, kernel_initializer=kernel_initializer, name=name, **kwargs)(x)
  if bn_params is not None:
    x = batch_norm(x, scope, bn_params, output_channel_padding)
  if activation:
    x = relu(x, scope + "/relu", relu_max_value)
  return x


def depthwise_conv2d_same(x, kernel_size: int, stride: int, rate: int, scope: str, *,
                          bn_params: Optional[BatchNormParams], activation: bool,
                          depthwise_initializer="glorot_uniform",
                          relu_max_value: Optional[float] = None, channel_padding: int = 0):
  """Depthwise conv (multiplier 1) + BN (+ ReLU): slim's `separable_conv2d(num_outputs=None)`.

  Padding as `conv2d_same`; `channel_padding`: trailing zero channels of `x` (see `Conv2D`), kept in
  the output. Returns `[batch, ceil(height / stride), ceil(width / stride), channels]`.
  """
  name = scope_to_layer_name(scope)
  if stride > 1:
    x = fixed_padding(x, kernel_size, rate, name=name + ".pad")
    padding = "valid"
  else:
    padding = "same"
  x = DepthwiseConv2D(kernel_size, strides=stride, dilation_rate=rate, padding=padding,
                      depth_multiplier=1, use_bias=bn_params is None,
                      depthwise_initializer=depthwise_initializer, channel_padding=channel_padding,
                      name=name)(x)
  if bn_params is not None:
    x = batch_norm(x, scope, bn_params, channel_padding)
  if activation:
    x = relu(x, scope + "/relu", relu_max_value)
  return x


def split_separable_conv2d(x, filters: int, scope: str, *, kernel_size: int = 3, stride: int = 1,
                           rate: int = 1, bn_params: BatchNormParams, activation: bool = True,
                           depthwise_initializer=None, pointwise_initializer=None,
                           relu_max_value: Optional[float] = None, input_channel_padding: int = 0,
                           output_channel_padding: int = 0):
  """DeepLab's separable conv: `<scope>_depthwise` (+BN[+ReLU]) then `<scope>_pointwise` 1x1 (+BN[+ReLU]).

  `activation=True` is the head's form (ASPP branches, decoder: BN + ReLU after both halves,
  `core/utils.py` `split_separable_conv2d`, with its initialisers: truncated normal 0.33 and 0.06);
  `activation=False` is Xception's pre-activation form (BN only, `core/xception.py`).
  `relu_max_value=6` makes the activations ReLU6 (`use_bounded_activation`).
  `input_channel_padding` / `output_channel_padding`: trailing zero channels of `x` / to append to
  the output (see `Conv2D`).

  Returns:
    `[batch, ceil(height / stride), ceil(width / stride), filters + output_channel_padding]` tensor.
  """
  if depthwise_initializer is None:
    depthwise_initializer = keras.initializers.TruncatedNormal(stddev=0.33)
  if pointwise_initializer is None:
    pointwise_initializer = keras.initializers.TruncatedNormal(stddev=0.06)
  x = depthwise_conv2d_same(x, kernel_size, stride, rate, scope + "_depthwise", bn_params=bn_params,
                            activation=activation, depthwise_initializer=depthwise_initializer,
                            relu_max_value=relu_max_value, channel_padding=input_channel_padding)
  return conv2d_same(x, filters, 1, 1, 1, scope + "_pointwise", bn_params=bn_params,
                     activation=activation, kernel_initializer=pointwise_initializer,
                     relu_max_value=relu_max_value, input_channel_padding=input_channel_padding,
                     output_channel_padding=output_channel_padding)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class Preprocess(keras.layers.Layer):
  """Maps `[batch, height, width, 3]` RGB in [0, 255] (uint8 or float) to the encoder's input range.

  `zero_mean_unit_range`: `(2 / 255) * x - 1`, as research/deeplab computes it (same operation order,
  so results match to the bit). `subtract_imagenet_mean`: `x - [123.15, 115.90, 103.06]`.
  The output is float32 (or the layer's compute dtype under mixed precision).
  """

  def __init__(self, mode: str = ZERO_MEAN_UNIT_RANGE, **kwargs):
    super().__init__(**kwargs)
    if mode not in (ZERO_MEAN_UNIT_RANGE, SUBTRACT_IMAGENET_MEAN):
      raise ValueError(f"Preprocess mode={mode!r}: expected {ZERO_MEAN_UNIT_RANGE!r} or "
                       f"{SUBTRACT_IMAGENET_MEAN!r}.")
    self.mode = mode

  def call(self, images):
    x = tf.cast(images, tf.float32)
    if self.mode == ZERO_MEAN_UNIT_RANGE:
      x = (2.0 / 255.0) * x - 1.0
    else:
      x = x - tf.reshape(tf.constant(IMAGENET_MEAN_RGB, tf.float32), [1, 1, 1, 3])
    return tf.cast(x, self.compute_dtype)

  def get_config(self):
    return {**super().get_config(), "mode": self.mode}


@keras.saving.register_keras_serializable(package="deeplab_tf")
class ResizeLike(keras.layers.Layer):
  """Resizes `inputs[0]` to the spatial size of `inputs[1]`, bilinear with align_corners=True.

  Inputs: `[x, reference]`, `x` `[batch, h, w, c]` and `reference` `[batch, H, W, any]`.
  Output: `[batch, H, W, c]` of `x`'s dtype.
  """

  def call(self, inputs):
    x, reference = inputs
    return resize_bilinear_align_corners(x, tf.shape(reference)[1:3])

  def compute_output_shape(self, input_shapes):
    x_shape, ref_shape = input_shapes
    return (x_shape[0], ref_shape[1], ref_shape[2], x_shape[3])


def kernel_variables(model: keras.Model, include_depthwise: bool = False) -> Sequence:
  """The convolution kernels that the original applies L2 weight decay to.

  slim regularises every `weights` of `conv2d` (backbone, head, logits) and, in DeepLab's default
  configuration, no depthwise kernel (`regularize_depthwise=False`, `split_separable_conv2d`).
  """
  kernels = []
  for layer in model.layers:
    if isinstance(layer, keras.layers.SeparableConv2D):
      # The NAS cells' slim.separable_conv2d: nas_arg_scope regularises both of its kernels.
      kernels += [layer.depthwise_kernel, layer.pointwise_kernel]
    elif isinstance(layer, keras.layers.DepthwiseConv2D):
      if include_depthwise:
        kernels.append(layer.kernel)
    elif isinstance(layer, keras.layers.Conv2D):
      kernels.append(layer.kernel)
  return kernels


def _fmix32(h):
  """MurmurHash3's 32-bit finaliser: a bijective mix of uint32 values (integer ops only)."""
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16)) * tf.constant(0x85EBCA6B, tf.uint32)
  h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 13)) * tf.constant(0xC2B2AE35, tf.uint32)
  return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, 16))


@keras.saving.register_keras_serializable(package="deeplab_tf")
class HashDropout(keras.layers.Dropout):
  """Keras `Dropout` whose mask is the same in XLA-compiled and plain TensorFlow graphs.

  TensorFlow's stateless random ops lower to a different random stream under XLA than in their CPU/GPU
  kernels (even with `alg="philox"`), so a `jit_compile` training step dropped other units than the
  uncompiled step from the same seed, and their losses differed (by 0.6% with hard pixel mining, which
  picks the pixels these units feed). Here each element's uniform draw is a hash (MurmurHash3's
  finaliser) of its index and the seed, in uint32 integer ops that every backend computes alike. The
  seed comes from Keras' `SeedGenerator` as in `Dropout` (same variables, same config).
  """

  def call(self, inputs, training=False):
    if not training or self.rate == 0:
      return inputs
    seed = tf.cast(self.seed_generator.next(), tf.uint32)
    key = _fmix32(tf.bitwise.bitwise_xor(seed[0], _fmix32(seed[1] + tf.constant(0x9E3779B9, tf.uint32))))
    shape = tf.shape(inputs)
    index = tf.reshape(tf.range(tf.size(inputs, out_type=tf.int32)), shape)
    bits = _fmix32(tf.cast(index, tf.uint32) * tf.constant(0x9E3779B1, tf.uint32) + key)
    uniform = tf.cast(tf.bitwise.right_shift(bits, 8), tf.float32) * (1.0 / (1 << 24))
    keep = uniform >= self.rate
    return tf.where(keep, inputs / tf.cast(1.0 - self.rate, inputs.dtype), tf.zeros_like(inputs))
