"""The building blocks every DeepLab encoder and head is made of: the network, in plain Keras layers.

How these layers are computed on a given machine (fused BatchNorm, matrix products, dilated depthwise
kernels, channel padding) is not chosen here: `deeplab_tf.model.acceleration` rewrites a built model
for its kernel policy (docs/ARCHITECTURE.md, "The kernel-policy seam").

Layer names follow one rule so that checkpoint import is a rule, not a table: a Keras layer is named after
the original's TF1 variable scope with `/` (which Keras forbids in names) spelled `.`; see
`scope_to_layer_name`. A convolution named `a.b.conv1` owns the checkpoint variables `a/b/conv1/weights`
and its BatchNorm layer `a.b.conv1.BatchNorm` owns `a/b/conv1/BatchNorm/{gamma,beta,moving_mean,
moving_variance}`, exactly as slim names them (research/deeplab `core/xception.py`, `core/utils.py`).
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

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
# (research/deeplab `core/feature_extractor.py`, `_preprocess_zero_mean_unit_range` and the ImageNet mean).
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


@keras.saving.register_keras_serializable(package="deeplab_tf")
class BatchNormalization(keras.layers.BatchNormalization):
  """The original's BatchNorm: Keras' layer whose moving variance is updated with Bessel's correction.

  Keras' `BatchNormalization` updates the moving variance with the biased batch variance; the
  original's slim `batch_norm(fused=True)` (its default for 4-D NHWC inputs) with the unbiased one,
  `variance * n / (n - 1)` (n = batch * height * width). This layer does the latter, in plain TF ops
  that run on every device: moments by `tf.nn.moments` (or, `synchronized`, by three all-reduces of
  sum, sum of squares and count over the replicas), the output normalised by the biased variance, as
  both. Variables (`gamma`, `beta`, `moving_mean`, `moving_variance`), config and the attributes the
  trainer switches (`momentum` for `batch_norm_decay`, `trainable=False` for
  `fine_tune_batch_norm=False`, `synchronized` for `sync_batch_norm`) are Keras' own; inference is
  Keras' own. Inputs other than 4-D channels-last (or with a mask, or `renorm`) fall back to Keras'
  training arithmetic. The kernel policy may replace it by
  `acceleration.batch_norm.FusedBatchNormalization`, the same function on TF's fused kernel.
  """

  def is_fusable(self, inputs, mask) -> bool:
    """Whether `inputs` are 4-D channels-last float, unmasked, and the layer plain (no renorm)."""
    rank = len(inputs.shape)
    return (rank == 4 and self.axis in (-1, 3) and mask is None and not self.renorm and self.center
            and self.scale and inputs.dtype in (tf.float32, tf.bfloat16, tf.float16))

  def call(self, inputs, training=None, mask=None):
    if not (training and self.trainable and self.is_fusable(inputs, mask)):
      return super().call(inputs, training=training, mask=mask)
    replica = tf.distribute.get_replica_context()
    if self.synchronized and replica is not None:
      return self.synchronized_call(replica, inputs, self.gamma, self.beta)
    x = tf.cast(inputs, tf.float32)
    mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
    count = tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32)
    self.update_moving_averages(mean, variance * count / tf.maximum(count - 1.0, 1.0))
    outputs = tf.nn.batch_normalization(x, mean, variance, self.beta, self.gamma, self.epsilon)
    return tf.cast(outputs, self.compute_dtype)

  def update_moving_averages(self, mean, unbiased_variance):
    """moving = momentum * moving + (1 - momentum) * batch, on the first `channels` entries of
    `mean` and `unbiased_variance` (`[channels (+ padding)]` float32)."""
    channels = self.moving_mean.shape[0]
    if mean.shape[0] != channels:
      mean, unbiased_variance = mean[:channels], unbiased_variance[:channels]
    self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
    self.moving_variance.assign(
        self.moving_variance * self.momentum + unbiased_variance * (1.0 - self.momentum))

  def synchronized_call(self, replica, inputs, gamma, beta):
    """Training BatchNorm with the moments of the global batch (`gamma`, `beta` `[channels]`)."""
    x = tf.cast(inputs, tf.float32)
    axes = [0, 1, 2]
    total = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(x, axes))
    squares = replica.all_reduce(tf.distribute.ReduceOp.SUM, tf.reduce_sum(tf.square(x), axes))
    count = replica.all_reduce(tf.distribute.ReduceOp.SUM,
                               tf.cast(tf.reduce_prod(tf.shape(x)[:3]), tf.float32))
    mean = tf.math.divide_no_nan(total, count)
    variance = tf.maximum(tf.math.divide_no_nan(squares, count) - tf.square(mean), 0.0)
    self.update_moving_averages(mean, variance * count / tf.maximum(count - 1.0, 1.0))
    outputs = tf.nn.batch_normalization(x, mean, variance, beta, gamma, self.epsilon)
    return tf.cast(outputs, inputs.dtype)


def batch_norm(x, scope: str, params: BatchNormParams):
  """BatchNorm with scale and centre, named `<scope>.BatchNorm` (slim's `<scope>/BatchNorm`)."""
  return BatchNormalization(momentum=params.decay, epsilon=params.epsilon, center=True, scale=True,
                            name=scope_to_layer_name(scope + "/BatchNorm"))(x)


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
                relu_max_value: Optional[float] = None):
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

  Returns:
    `[batch, ceil(height / stride), ceil(width / stride), filters]` tensor.
  """
  name = scope_to_layer_name(scope)
  if stride > 1 and kernel_size > 1:
    x = fixed_padding(x, kernel_size, rate, name=name + ".pad")
    padding = "valid"
  else:
    padding = "same"
  if use_bias is None:
    use_bias = bn_params is None
  x = keras.layers.Conv2D(filters, kernel_size, strides=stride, dilation_rate=rate, padding=padding,
                          use_bias=use_bias, kernel_initializer=kernel_initializer, name=name)(x)
  if bn_params is not None:
    x = batch_norm(x, scope, bn_params)
  if activation:
    x = relu(x, scope + "/relu", relu_max_value)
  return x


def depthwise_conv2d_same(x, kernel_size: int, stride: int, rate: int, scope: str, *,
                          bn_params: Optional[BatchNormParams], activation: bool,
                          depthwise_initializer="glorot_uniform",
                          relu_max_value: Optional[float] = None):
  """Depthwise conv (multiplier 1) + BN (+ ReLU): slim's `separable_conv2d(num_outputs=None)`.

  Padding as `conv2d_same`. Returns `[batch, ceil(height / stride), ceil(width / stride), channels]`.
  """
  name = scope_to_layer_name(scope)
  if stride > 1:
    x = fixed_padding(x, kernel_size, rate, name=name + ".pad")
    padding = "valid"
  else:
    padding = "same"
  x = keras.layers.DepthwiseConv2D(kernel_size, strides=stride, dilation_rate=rate, padding=padding,
                                   depth_multiplier=1, use_bias=bn_params is None,
                                   depthwise_initializer=depthwise_initializer, name=name)(x)
  if bn_params is not None:
    x = batch_norm(x, scope, bn_params)
  if activation:
    x = relu(x, scope + "/relu", relu_max_value)
  return x


def split_separable_conv2d(x, filters: int, scope: str, *, kernel_size: int = 3, stride: int = 1,
                           rate: int = 1, bn_params: BatchNormParams, activation: bool = True,
                           depthwise_initializer=None, pointwise_initializer=None,
                           relu_max_value: Optional[float] = None):
  """DeepLab's separable conv: `<scope>_depthwise` (+BN[+ReLU]) then `<scope>_pointwise` 1x1 (+BN[+ReLU]).

  `activation=True` is the head's form (ASPP branches, decoder: BN + ReLU after both halves,
  `core/utils.py` `split_separable_conv2d`, with its initialisers: truncated normal 0.33 and 0.06);
  `activation=False` is Xception's pre-activation form (BN only, `core/xception.py`).
  `relu_max_value=6` makes the activations ReLU6 (`use_bounded_activation`).

  Returns:
    `[batch, ceil(height / stride), ceil(width / stride), filters]` tensor.
  """
  if depthwise_initializer is None:
    depthwise_initializer = keras.initializers.TruncatedNormal(stddev=0.33)
  if pointwise_initializer is None:
    pointwise_initializer = keras.initializers.TruncatedNormal(stddev=0.06)
  x = depthwise_conv2d_same(x, kernel_size, stride, rate, scope + "_depthwise", bn_params=bn_params,
                            activation=activation, depthwise_initializer=depthwise_initializer,
                            relu_max_value=relu_max_value)
  return conv2d_same(x, filters, 1, 1, 1, scope + "_pointwise", bn_params=bn_params,
                     activation=activation, kernel_initializer=pointwise_initializer,
                     relu_max_value=relu_max_value)


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
