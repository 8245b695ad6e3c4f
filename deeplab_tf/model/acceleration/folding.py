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

from deeplab_tf.model import layers as deeplab_layers


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

  A channel-padded `conv` (`layers.Conv2D`) computes its real channels only, unless
  `keep_channel_padding`.
  """

  def __init__(self, conv, bn, with_bias: bool = True, keep_channel_padding: bool = False,
               **kwargs):
    super().__init__(autocast=False, **kwargs)  # Read the variables in float32.
    self.conv = conv
    self.bn = bn
    self.with_bias = with_bias  # False: a `LiveBiasedAdd` after it adds the bias.
    self.paddings = deeplab_layers.channel_paddings(conv) if keep_channel_padding else (0, 0)

  def call(self, inputs):
    conv, bn = self.conv, self.bn
    scale, bias = _live_scale_and_bias(conv, bn)
    kernel = tf.cast(conv.kernel, tf.float32)
    depthwise = isinstance(conv, keras.layers.DepthwiseConv2D)
    kernel = kernel * (scale[:, None] if depthwise else scale)
    input_padding, output_padding = self.paddings
    kernel = deeplab_layers.pad_kernel(tf.cast(kernel, inputs.dtype), depthwise, input_padding,
                                       output_padding)
    if depthwise:
      outputs = deeplab_layers.depthwise_conv(inputs, kernel, conv.strides, conv.padding,
                                              conv.dilation_rate, conv.data_format)
    else:
      outputs = conv.convolution_op(inputs, kernel)
    if not self.with_bias:
      return outputs
    return tf.nn.bias_add(outputs, deeplab_layers.pad_channels(tf.cast(bias, outputs.dtype),
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
    bias = deeplab_layers.pad_channels(tf.cast(bias, total.dtype), total.shape[-1] - bias.shape[0])
    return tf.nn.bias_add(total, bias)

  def compute_output_shape(self, input_shape):
    return input_shape[0]


def _readers(model: keras.Model) -> Dict[str, List[str]]:
  """`{layer name: names of the layers reading its output}`, one entry per read; "" for a model output."""
  readers: Dict[str, List[str]] = {}
  for layer in model.layers:
    for node in layer._inbound_nodes:  # pylint: disable=protected-access
      for tensor in node.input_tensors:
        producer = tensor._keras_history.operation  # pylint: disable=protected-access
        readers.setdefault(producer.name, []).append(layer.name)
  for tensor in model.outputs:
    producer = tensor._keras_history.operation  # pylint: disable=protected-access
    readers.setdefault(producer.name, []).append("")
  return readers


def _consumers(model: keras.Model) -> Dict[str, int]:
  """Number of layer calls that read each layer's output."""
  return {name: len(names) for name, names in _readers(model).items()}


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
  readers = _readers(model)
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


def fold_batch_norm(model: keras.Model, live: bool = False) -> keras.Model:
  """A copy of a functional `model` computing its inference function with BatchNorms folded.

  Args:
    model: a functional Keras model (e.g. from `build_deeplab`); it is not modified.
    live: share `model`'s layers and variables instead of copying them: each conv + BN pair becomes a
      `LiveFoldedConv` that folds their current values at every call (for compiled inference of a
      model that may still change); the default copies folded values (for export).

  Returns:
    A new functional model with the same inputs, outputs, layer names and compute dtypes, whose
    folded convolutions have a bias (or, where `biases_after_add` says so, no bias and a `BiasedAdd` /
    `LiveBiasedAdd` after them) and whose folded BatchNorms are `FoldedBatchNorm` identities. Call it
    with `training=False` semantics only (it has no batch statistics to compute). `model` itself
    when there is nothing to fold, or when it is not a functional Keras model (a Sequential or
    subclassed model, whose graph cannot be rewritten). A copy stores its weights in their compute
    dtype: a mixed precision layer ('mixed_bfloat16') becomes a 'bfloat16' one, whose call casts no
    weight (the same values: the mixed layer rounds its float32 weights to bfloat16 at each call; the
    folded copy rounds them once), which made the bfloat16 Xception-65 at 513x513 1.1x faster. A
    float32 copy computes its `PointwiseConv2D`s as matrix products (`matmul_at_inference`): with no
    BatchNorm left to fuse, Xception-65's 513x513 inference ran 1.04-1.10x faster so (bfloat16 copies
    keep convolutions, 0.91x as matrix products; benchmarks/README.md). The folded model carries no
    channel padding (`layers.Conv2D`): it computes the real channels only, as the original, where
    the padding only helped training (bfloat16 inference of Xception-65 at 513x513 was 0.97x as
    fast padded, float32 1.00x; benchmarks/README.md). (A live fold keeps the padding when a padded
    layer is not folded.)
  """
  if not isinstance(model, keras.Model) or isinstance(model, keras.Sequential) or not getattr(
      model, "_nodes_by_depth", None):
    return model
  pairs = foldable_pairs(model)
  if not pairs:
    return model
  folded_convs = {conv: bn for bn, conv in pairs.items()}
  moved = biases_after_add(model, pairs)
  bias_moved = {conv: add for add, convs in moved.items() for conv in convs}
  if live:
    keep_padding = any(any(deeplab_layers.channel_paddings(layer)) and layer.name not in pairs
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

  def clone(layer):
    config = deeplab_layers.config_without_channel_padding(layer.get_config())
    policy = _weights_in_compute_dtype(layer.dtype_policy)
    # Serialised, not the policy object: Keras' automatic `get_config` of layers without their own
    # (FoldedBatchNorm, ResizeLike) needs JSON-able constructor arguments, or the copy cannot be saved.
    config["dtype"] = keras.dtype_policies.serialize(policy)
    if layer.name in pairs:
      return FoldedBatchNorm(name=layer.name, dtype=config["dtype"])
    if layer.name in folded_convs:
      config["use_bias"] = layer.name not in bias_moved
      config["bias_initializer"] = "zeros"
      if isinstance(layer, deeplab_layers.PointwiseConv2D) and policy.compute_dtype == "float32":
        config["matmul_at_inference"] = True
    if layer.name in moved:
      return BiasedAdd.from_config(config)
    return layer.__class__.from_config(config)

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
