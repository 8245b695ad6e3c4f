"""`fold_batch_norm(model)`: the inference model with every BatchNorm folded into its convolution.

At inference a BatchNorm after a convolution is an affine map per output channel,
`y = gamma * (conv(x) + b - mean) / sqrt(variance + epsilon) + beta`, so with
`s = gamma / sqrt(variance + epsilon)` it equals one convolution with kernel `W * s` (per output
channel; per input channel of a depthwise kernel) and bias `(b - mean) * s + beta` (Ioffe & Szegedy
2015, section 3.2: "the normalization ... is simply a linear transform applied to each activation";
TensorFlow's `fold_batch_norms` graph transform for frozen graphs does the same). The folded model has
the same layer names (each folded BatchNorm becomes a `FoldedBatchNorm` identity of its name, so names still find
layers), computes the same function to float32 rounding, and has no BatchNorm variables left to
train: it is for inference and export only.

One rewrite beyond the fold works around TF's grappler remapper (TF 2.21 with oneDNN): on
`Conv2D -> BiasAdd -> Add -> Relu` it fuses the four into one op and deletes the `Add` even when another
op also reads the sum (Xception's residual units: the sum feeds the next unit's ReLU and its shortcut),
then rejects the whole graph ("remapper failed: Mutation::Apply error: fanout ... exist for missing
node") and runs it with no fusion at all. Where an `Add`'s sum is read by a ReLU and by something else,
the folded biases of its inputs move after the sum (`BiasedAdd`: `x + y + b`, the same function to
float32 rounding), which the remapper leaves alone, so every other convolution keeps its fused bias and
ReLU (Xception-65 at 513x513: 1.04x faster in float32, 1.10x in bfloat16, benchmarks/README.md).
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.model.acceleration import channel_padding as padding_lib
from deeplab_tf.model.acceleration import rewrite as rewrite_lib


@keras.saving.register_keras_serializable(package="deeplab_tf")
class FoldedBatchNorm(keras.layers.Layer):
  """Where a BatchNorm was: the identity (its affine map lives in the preceding convolution)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.supports_masking = True

  def call(self, inputs, training=None, mask=None):
    del training, mask
    return inputs

  def compute_output_shape(self, input_shape):
    return input_shape


class LiveFoldedConv(keras.layers.Layer):
  """A convolution and the BatchNorm after it as one convolution, folded from their live variables.

  Shares the two layers' variables (no copy): each call computes the folded kernel and bias from their
  current values (a few multiplies per weight, ~0.1% of a 513x513 Xception-65 call) in float32, then
  runs one convolution (+ bias) in the input's dtype. A model rebuilt with these (`live=True` of
  `fold_batch_norm`) therefore stays equal to the original while the original keeps training: it is
  what compiled inference (`deeplab_tf.evaluation.inference.compiled_network`) runs. Not serialisable
  (it refers to other layers); export uses the copying fold.

  A channel-padded `conv` (`channel_padding`) computes its real channels only, unless
  `keep_channel_padding`. A depthwise convolution runs by `conv`'s own kernels (the kernel policy's).
  """

  def __init__(self, conv, bn, with_bias: bool = True, keep_channel_padding: bool = False,
               **kwargs):
    super().__init__(autocast=False, **kwargs)  # Read the variables in float32.
    self.conv = conv
    self.bn = bn
    self.with_bias = with_bias  # False: a `LiveBiasedAdd` after it adds the bias.
    self.paddings = padding_lib.channel_paddings(conv) if keep_channel_padding else (0, 0)

  def call(self, inputs):
    conv, bn = self.conv, self.bn
    scale, bias = _live_scale_and_bias(conv, bn)
    kernel = tf.cast(conv.kernel, tf.float32)
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    kernel = kernel * (scale[:, None] if depthwise else scale)
    input_padding, output_padding = self.paddings
    kernel = padding_lib.pad_kernel(tf.cast(kernel, inputs.dtype), depthwise, input_padding,
                                    output_padding)
    if depthwise and hasattr(conv, "depthwise"):  # The kernel policy's DepthwiseConv2D.
      outputs = conv.depthwise(inputs, kernel)
    elif depthwise:
      outputs = keras.ops.depthwise_conv(inputs, kernel, strides=conv.strides, padding=conv.padding,
                                         dilation_rate=conv.dilation_rate,
                                         data_format=conv.data_format)
    else:
      outputs = conv.convolution_op(inputs, kernel)
    if not self.with_bias:
      return outputs
    return tf.nn.bias_add(outputs, padding_lib.pad_channels(tf.cast(bias, outputs.dtype),
                                                            output_padding))

  def compute_output_shape(self, input_shape):
    shape = tuple(self.conv.compute_output_shape(input_shape))
    if isinstance(self.conv, keras.layers.DepthwiseConv2D):
      return shape  # Its output channels are its input's.
    return shape[:-1] + (self.conv.filters + self.paddings[1],)


def _live_scale_and_bias(conv, bn) -> Tuple[tf.Tensor, tf.Tensor]:
  """float32 `[channels]` scale and bias of `bn(conv(x))` folded, from their current variables."""
  scale = tf.cast(bn.gamma, tf.float32) * tf.math.rsqrt(
      tf.cast(bn.moving_variance, tf.float32) + bn.epsilon)
  bias = -tf.cast(bn.moving_mean, tf.float32)
  if conv.use_bias:
    bias += tf.cast(conv.bias, tf.float32)
  return scale, bias * scale + tf.cast(bn.beta, tf.float32)


@keras.saving.register_keras_serializable(package="deeplab_tf")
class BiasedAdd(keras.layers.Add):
  """`keras.layers.Add` followed by a per-channel bias: `sum(inputs) + bias`, bias `[channels]`.

  Where `fold_batch_norm` moves its inputs' folded biases (see the module docstring). Its one
  variable, `bias`, is the sum of the moved biases.
  """

  def build(self, input_shape):
    super().build(input_shape)
    self.bias = self.add_weight(name="bias", shape=(input_shape[0][-1],), initializer="zeros")

  def _merge_function(self, inputs):
    return tf.nn.bias_add(super()._merge_function(inputs), tf.cast(self.bias, inputs[0].dtype))


class LiveBiasedAdd(keras.layers.Layer):
  """`BiasedAdd` whose bias is folded at each call from the live variables of (conv, BN) pairs."""

  def __init__(self, folded: Sequence[Tuple[keras.layers.Layer, keras.layers.Layer]], **kwargs):
    super().__init__(**kwargs)
    self.folded = list(folded)

  def call(self, inputs):
    total = inputs[0]
    for x in inputs[1:]:
      total = total + x
    bias = tf.add_n([_live_scale_and_bias(conv, bn)[1] for conv, bn in self.folded])
    bias = padding_lib.pad_channels(tf.cast(bias, total.dtype), total.shape[-1] - bias.shape[0])
    return tf.nn.bias_add(total, bias)

  def compute_output_shape(self, input_shape):
    return input_shape[0]


def _consumers(model: keras.Model) -> Dict[str, int]:
  """Number of layer calls that read each layer's output."""
  return {name: len(names) for name, names in padding_lib.readers(model).items()}


def foldable_pairs(model: keras.Model) -> Dict[str, str]:
  """`{batch norm layer name: convolution layer name}` of the BatchNorms `fold_batch_norm` folds.

  A BatchNorm is folded when it is called once, on the output of a `Conv2D` or `DepthwiseConv2D`
  (depth multiplier 1) that is called once and whose output nothing else reads.
  """
  consumers = _consumers(model)
  pairs = {}
  for layer in model.layers:
    if not isinstance(layer, keras.layers.BatchNormalization) or len(layer._inbound_nodes) != 1:  # pylint: disable=protected-access
      continue
    if not (layer.center and layer.scale) or layer.axis not in (-1, 3) or layer.renorm:
      continue
    inputs = layer._inbound_nodes[0].input_tensors  # pylint: disable=protected-access
    conv = inputs[0]._keras_history.operation  # pylint: disable=protected-access
    is_conv = isinstance(conv, keras.layers.Conv2D) or (
        isinstance(conv, keras.layers.DepthwiseConv2D) and conv.depth_multiplier == 1)
    if (is_conv and len(inputs) == 1 and len(conv._inbound_nodes) == 1  # pylint: disable=protected-access
        and consumers.get(conv.name) == 1 and conv.data_format == "channels_last"):
      pairs[layer.name] = conv.name
  return pairs


def _is_relu(layer) -> bool:
  return isinstance(layer, keras.layers.ReLU) or (
      isinstance(layer, keras.layers.Activation)
      and getattr(layer.activation, "__name__", "") in ("relu", "relu6"))


def biases_after_add(model: keras.Model, pairs: Dict[str, str]) -> Dict[str, List[str]]:
  """`{Add layer name: [folded convolution names]}`: the folded biases `fold_batch_norm` moves after a sum.

  An `Add` qualifies when its sum is read by a ReLU and by at least one other reader (the pattern TF's
  remapper mishandles, see the module docstring); the convolutions listed are those folded with a BN
  (`pairs`, as from `foldable_pairs`) whose BN output only that `Add` reads.
  """
  readers = padding_lib.readers(model)
  moved = {}
  for layer in model.layers:
    if type(layer) is not keras.layers.Add or len(layer._inbound_nodes) != 1:  # pylint: disable=protected-access,unidiomatic-typecheck
      continue
    sum_readers = readers.get(layer.name, [])
    if len(sum_readers) < 2 or not any(name and _is_relu(model.get_layer(name))
                                       for name in sum_readers):
      continue
    convs = []
    for tensor in layer._inbound_nodes[0].input_tensors:  # pylint: disable=protected-access
      producer = tensor._keras_history.operation.name  # pylint: disable=protected-access
      if producer in pairs and readers.get(producer) == [layer.name]:
        convs.append(pairs[producer])
    if convs:
      moved[layer.name] = convs
  return moved


def _folded_weights(conv, bn) -> Tuple[np.ndarray, np.ndarray]:
  """float32 (kernel, bias) of `bn(conv(x))` at inference, computed in float64."""
  gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in bn.get_weights())
  scale = gamma / np.sqrt(variance + bn.epsilon)
  weights = conv.get_weights()
  kernel = np.asarray(weights[0], np.float64)
  bias = np.asarray(weights[1], np.float64) if conv.use_bias else np.zeros_like(mean)
  if isinstance(conv, keras.layers.DepthwiseConv2D):
    kernel = kernel * scale[None, None, :, None]  # [k, k, channels, 1]
  else:
    kernel = kernel * scale  # [k, k, in, out]
  return kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)


def _weights_in_compute_dtype(policy):
  """A mixed precision policy's compute-dtype policy ('mixed_bfloat16' -> 'bfloat16'); others as is."""
  if policy.variable_dtype != policy.compute_dtype:
    return keras.DTypePolicy(policy.compute_dtype)
  return policy


def fold_batch_norm(model: keras.Model, live: bool = False, *, weights_in_compute_dtype: bool = True,
                    bias_after_shared_add: bool = True, kernel_policy=None) -> keras.Model:
  """A copy of a functional `model` computing its inference function with BatchNorms folded.

  The copy carries no channel padding (`channel_padding`): it computes the real channels only, as the
  original. Its kernels are `kernel_policy`'s for inference (default: plain Keras/TF arithmetic);
  `policy.inference_model` is the usual way in.

  Args:
    model: a functional Keras model (e.g. from `build_deeplab`); it is not modified.
    live: share `model`'s layers and variables instead of copying them: each conv + BN pair becomes a
      `LiveFoldedConv` that folds their current values at every call (for compiled inference of a
      model that may still change, with `model`'s own kernels); the default copies folded values.
    weights_in_compute_dtype: a copy stores its weights in their compute dtype: a mixed precision
      layer ('mixed_bfloat16') becomes a 'bfloat16' one, whose call casts no weight (the same values:
      the mixed layer rounds its float32 weights to bfloat16 at each call; the folded copy rounds them
      once), which made the bfloat16 Xception-65 at 513x513 1.1x faster.
    bias_after_shared_add: move folded biases after the sums `biases_after_add` names (the grappler
      remapper workaround of the module docstring; plain arithmetic, harmless elsewhere).
    kernel_policy: a `policy.KernelPolicy` choosing the copy's kernels (as
      `apply_kernel_policy(..., training=False)`); None: portable. Not used by a live fold, which
      runs `model`'s own layers.

  Returns:
    A new functional model with the same inputs, outputs, layer names and compute dtypes, whose
    folded convolutions have a bias (or, where biases are moved, no bias and a `BiasedAdd` /
    `LiveBiasedAdd` after them) and whose folded BatchNorms are `FoldedBatchNorm` identities. Call it
    with `training=False` semantics only (it has no batch statistics to compute). `model` itself
    when there is nothing to fold, or when it is not a functional Keras model (a Sequential or
    subclassed model, whose graph cannot be rewritten). (A live fold keeps the channel padding when
    a padded layer is not folded.)
  """
  if not rewrite_lib.is_functional(model):
    return model
  pairs = foldable_pairs(model)
  if not pairs:
    return model
  folded_convs = {conv: bn for bn, conv in pairs.items()}
  moved = biases_after_add(model, pairs) if bias_after_shared_add else {}
  bias_moved = {conv: add for add, convs in moved.items() for conv in convs}
  if live:
    keep_padding = any(any(padding_lib.channel_paddings(layer)) and layer.name not in pairs
                       and layer.name not in folded_convs for layer in model.layers)

    def share(layer):
      if layer.name in pairs:
        return FoldedBatchNorm(name=layer.name, dtype=layer.dtype_policy)
      if layer.name in folded_convs:
        return LiveFoldedConv(layer, model.get_layer(folded_convs[layer.name]),
                              with_bias=layer.name not in bias_moved,
                              keep_channel_padding=keep_padding, name=layer.name,
                              dtype=layer.dtype_policy)
      if layer.name in moved:
        return LiveBiasedAdd([(model.get_layer(conv), model.get_layer(folded_convs[conv]))
                              for conv in moved[layer.name]], name=layer.name,
                             dtype=layer.dtype_policy)
      return layer
    return keras.models.clone_model(model, clone_function=share)

  if kernel_policy is None:
    from deeplab_tf.model.acceleration.policy import KernelPolicy  # pylint: disable=g-import-not-at-top
    kernel_policy = KernelPolicy.portable()

  def clone(layer):
    if not isinstance(layer, keras.layers.Layer):  # A stateless Keras op of the graph: shared.
      return layer
    cls, config = rewrite_lib.layer_spec(layer, kernel_policy, (0, 0), training=False)
    policy = layer.dtype_policy
    if weights_in_compute_dtype:
      policy = _weights_in_compute_dtype(policy)
    # Serialised, not the policy object: Keras' automatic `get_config` of layers without their own
    # (FoldedBatchNorm, ResizeLike) needs JSON-able constructor arguments, or the copy cannot be saved.
    config["dtype"] = keras.dtype_policies.serialize(policy)
    if layer.name in pairs:
      return FoldedBatchNorm(name=layer.name, dtype=config["dtype"])
    if layer.name in folded_convs:
      config["use_bias"] = layer.name not in bias_moved
      config["bias_initializer"] = "zeros"
    if layer.name in moved:
      return BiasedAdd.from_config(config)
    return cls.from_config(config)

  folded = keras.models.clone_model(model, clone_function=clone)
  add_biases: Dict[str, np.ndarray] = {}
  for layer in model.layers:
    if layer.name in pairs or not layer.weights:
      continue
    target = folded.get_layer(layer.name)
    if layer.name not in folded_convs:
      target.set_weights(layer.get_weights())
      continue
    kernel, bias = _folded_weights(layer, model.get_layer(folded_convs[layer.name]))
    if layer.name in bias_moved:
      add = bias_moved[layer.name]
      add_biases[add] = add_biases.get(add, 0.0) + bias.astype(np.float64)
      target.set_weights([kernel])
    else:
      target.set_weights([kernel, bias])
  for add, bias in add_biases.items():
    folded.get_layer(add).set_weights([bias.astype(np.float32)])
  return folded
