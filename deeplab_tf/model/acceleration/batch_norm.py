"""The network's BatchNorm on TF's fused kernel (FusedBatchNormV3), with oneDNN's bfloat16 choices."""

from __future__ import annotations

import keras
import tensorflow as tf

from deeplab_tf.model import layers
from deeplab_tf.model.acceleration import channel_padding as padding_lib


@keras.saving.register_keras_serializable(package="deeplab_tf")
class FusedBatchNormalization(layers.BatchNormalization):
  """`layers.BatchNormalization` (the original's BatchNorm) computed by TF's fused kernel.

  The variables, the attributes the trainer switches (`momentum`, `trainable`, `synchronized`), the
  config and the function are those of `layers.BatchNormalization`; only the arithmetic changes:
  - training (`training=True` and `trainable`): one FusedBatchNormV3 (and its fused gradient) instead
    of ~10 separate moment and normalisation ops; its batch variance carries Bessel's correction, as
    the original's slim `batch_norm(fused=True)`. `synchronized` training keeps the plain layer's
    all-reduced moments.
  - inference (or a frozen layer): FusedBatchNormV3 with `is_training=False`, which TF's grappler
    remapper fuses into the preceding convolution (`_FusedConv2D`) with oneDNN; on bfloat16/float16
    activations with `bf16_inference_as_affine`, one multiply-add in that dtype with the folded
    per-channel scale and offset (oneDNN's bfloat16 inference BN kernel measured 1.2x slower).
  - training on bfloat16 activations with `bf16_training_channel_multiple` > 1: the channels are
    zero-padded to a multiple of it around the kernel (Xception's 728 become 736): on an AVX-512-BF16
    CPU oneDNN's bfloat16 FusedBatchNormV3 with its gradient took 2.0-2.5x the time of the float32
    kernel between two casts at [2, 33..129, 33..129, 728], and 0.55-0.7x padded to 736
    (`benchmarks/batch_norm_channels.py`). The padded channels are normalised separately and sliced
    away; the real channels' moments, outputs and gradients do not depend on them.
  Unlike `tf.nn.fused_batch_norm`, `epsilon` is used as given (no clamp to 1.001e-5).
  Inputs other than 4-D channels-last (or with a mask, or `renorm`) fall back to the plain layer.

  `channel_padding` (`channel_padding` module): the input carries that many zero channels after the
  real ones, which the output carries too (zeros: padded `gamma` 1, `beta` 0, moving mean 0, moving
  variance 1); the variables and the moving-average updates cover the real channels only.

  Args:
    channel_padding: trailing zero channels of the input and output beyond the variables'.
    bf16_training_channel_multiple: pad bfloat16 training inputs' channels to a multiple of this (1:
      never).
    bf16_inference_as_affine: bfloat16/float16 inference as one multiply-add.
    **kwargs: `layers.BatchNormalization`'s arguments.

  Raises:
    ValueError: `channel_padding` < 0, or a padded input the fused kernel cannot take (not 4-D
      channels-last, a mask, `renorm`).
  """

  def __init__(self, *args, channel_padding: int = 0, bf16_training_channel_multiple: int = 1,
               bf16_inference_as_affine: bool = False, **kwargs):
    super().__init__(*args, **kwargs)
    if channel_padding < 0:
      raise ValueError(f"{self.name}: channel_padding={channel_padding} must be >= 0.")
    self.channel_padding = int(channel_padding)
    self.bf16_training_channel_multiple = max(1, int(bf16_training_channel_multiple))
    self.bf16_inference_as_affine = bool(bf16_inference_as_affine)

  def build(self, input_shape):
    padding_lib.build_for_padded_input(self, super().build, input_shape, self.channel_padding)

  def get_config(self):
    return {**super().get_config(), "channel_padding": self.channel_padding,
            "bf16_training_channel_multiple": self.bf16_training_channel_multiple,
            "bf16_inference_as_affine": self.bf16_inference_as_affine}

  def call(self, inputs, training=None, mask=None):
    if not self.is_fusable(inputs, mask):
      if self.channel_padding:
        raise ValueError(f"{self.name}: channel_padding needs a 4-D channels-last input without "
                         f"mask or renorm, got shape {inputs.shape}.")
      return super().call(inputs, training=training, mask=mask)
    pad = self.channel_padding
    gamma = padding_lib.pad_channels(self.gamma, pad, 1.0)
    beta = padding_lib.pad_channels(self.beta, pad)
    moving_mean = padding_lib.pad_channels(self.moving_mean, pad)
    moving_variance = padding_lib.pad_channels(self.moving_variance, pad, 1.0)
    replica = tf.distribute.get_replica_context()
    if training and self.trainable and self.synchronized and replica is not None:
      outputs = self.synchronized_call(replica, inputs, gamma, beta)
    elif training and self.trainable:
      empty = tf.zeros([0], tf.float32)
      x, channels = inputs, inputs.shape[-1]
      extra = 0
      if x.dtype == tf.bfloat16 and channels is not None:
        extra = padding_lib.channel_padding(channels, self.bf16_training_channel_multiple)
      if extra:
        x = tf.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])
        gamma = padding_lib.pad_channels(gamma, extra, 1.0)
        beta = padding_lib.pad_channels(beta, extra)
      outputs, mean, variance = tf.raw_ops.FusedBatchNormV3(
          x=x, scale=gamma, offset=beta, mean=empty, variance=empty, epsilon=self.epsilon,
          exponential_avg_factor=1.0, data_format="NHWC", is_training=True)[:3]
      if extra:  # Slice (not strided): its gradient is one Pad.
        outputs = tf.slice(outputs, [0, 0, 0, 0], [-1, -1, -1, channels])
      self.update_moving_averages(mean, variance)
    elif inputs.dtype != tf.float32 and self.bf16_inference_as_affine:
      scale = gamma * tf.math.rsqrt(moving_variance + self.epsilon)
      offset = beta - moving_mean * scale
      outputs = inputs * tf.cast(scale, inputs.dtype) + tf.cast(offset, inputs.dtype)
    else:
      outputs = tf.raw_ops.FusedBatchNormV3(
          x=inputs, scale=gamma, offset=beta, mean=moving_mean, variance=moving_variance,
          epsilon=self.epsilon, data_format="NHWC", is_training=False)[0]
    return tf.cast(outputs, self.compute_dtype)
