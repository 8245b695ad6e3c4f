"""Channel padding: features carried with zero channels appended, so that CPU kernels see whole vectors.

On an AVX-512 CPU oneDNN's kernels work on whole 16-float vectors. Xception's 728 channels (45.5
vectors) made its BatchNorm and depthwise kernels 1.3x / 1.5x slower per channel than 736 in float32
(2-4x for bfloat16 BatchNorm); carried through the network as 736 channels whose last 8 are zeros, the
padding is paid once per weight (the kernels are zero-padded at each call) instead of once per
activation. The training step of Xception-65 at 513x513, batch 2, ran 1.01-1.04x faster padded in
float32 and 1.05x in bfloat16; inference was not faster (float32 1.00x, bfloat16 0.97x), so only
training pads (benchmarks/README.md, "Why it is fast").

The padding is a rewrite of a built model, never part of its definition: `with_channel_padding(model,
multiple)` gives the padded copy and `without_channel_padding(model)` the plain one. Both keep every
variable's shape and value (the original's checkpoints have the real channels only), every layer's
name and the order of the model's layers, so checkpoints written by one load into the other. The real
channels' values do not depend on the padding (up to float32 summation order).

Which tensors are padded: the output of a convolution whose `filters` is one of `channel_counts` and
not a multiple of `multiple`, and everything that carries it unchanged (BatchNorm, ReLU, clipping,
sums, depthwise convolutions, zero padding), until convolutions read it. A convolution is padded only
where every reader of its padded output can take the padding; a padded tensor never leaves the model
or reaches a concatenation, a resize or a pooling.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import keras
import tensorflow as tf

# Config keys of the padded layers (`convolutions.Conv2D`, `convolutions.DepthwiseConv2D`,
# `batch_norm.FusedBatchNormalization`).
CHANNEL_PADDING_KEYS = ("input_channel_padding", "output_channel_padding", "channel_padding")


def channel_padding(channels: int, multiple: int) -> int:
  """Zero channels that round `channels` up to a multiple of `multiple` (728, 16 -> 8; 736, 16 -> 0)."""
  return -channels % multiple


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


def build_for_padded_input(layer, build, input_shape, padding: int) -> None:
  """Runs `build` (a Keras layer's own) on `input_shape` less `padding` trailing channels, then lets
  the layer accept the padded input: its variables have the real channels only.

  Raises:
    ValueError: the input has no more channels than `padding`.
  """
  if not padding:
    build(input_shape)
    return
  channels = input_shape[-1]
  if channels is None or channels <= padding:
    raise ValueError(f"{layer.name}: channel padding {padding} needs an input with more channels, "
                     f"got input shape {tuple(input_shape)}.")
  build(tuple(input_shape[:-1]) + (channels - padding,))
  layer.input_spec = keras.InputSpec(min_ndim=len(input_shape), axes={-1: channels})


def check_channel_padding(layer, *paddings: int) -> None:
  """Raises ValueError unless the paddings are non-negative and the layer is channels-last."""
  if any(p < 0 for p in paddings):
    raise ValueError(f"{layer.name}: channel paddings {paddings} must be >= 0.")
  if any(paddings) and getattr(layer, "data_format", "channels_last") != "channels_last":
    raise ValueError(f"{layer.name}: channel padding needs data_format='channels_last', got "
                     f"{layer.data_format!r}.")


def channel_paddings(layer) -> Tuple[int, int]:
  """(input, output) zero channels a layer's input and output carry beyond its variables' channels.

  (0, 0) for every layer but the padded convolutions and BatchNorms of this package.
  """
  config = getattr(layer, "channel_padding", None)
  if config is not None:
    return int(config), int(config)
  return (int(getattr(layer, "input_channel_padding", 0) or 0),
          int(getattr(layer, "output_channel_padding", 0) or 0))


def config_without_channel_padding(config: dict) -> dict:
  """A layer config with its channel paddings set to 0: the same layer on the real channels only."""
  return {k: (0 if k in CHANNEL_PADDING_KEYS else v) for k, v in config.items()}


@keras.saving.register_keras_serializable(package="deeplab_tf")
class DropChannelPadding(keras.layers.Layer):
  """`[batch, height, width, channels + padding]` -> `[batch, height, width, channels]`.

  Kept so that `.keras` files of the releases that built Xception padded (they hold it) still load;
  the rewrite of this module never inserts it.

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


def _producers(layer) -> List[str]:
  node = layer._inbound_nodes[0]  # pylint: disable=protected-access
  return [t._keras_history.operation.name for t in node.input_tensors]  # pylint: disable=protected-access


def readers(model: keras.Model) -> Dict[str, List[str]]:
  """`{layer name: names of the layers reading its output}`, one entry per read; "" for a model output."""
  result: Dict[str, List[str]] = {}
  for layer in model.layers:
    for node in layer._inbound_nodes:  # pylint: disable=protected-access
      for tensor in node.input_tensors:
        producer = tensor._keras_history.operation  # pylint: disable=protected-access
        result.setdefault(producer.name, []).append(layer.name)
  for tensor in model.outputs:
    producer = tensor._keras_history.operation  # pylint: disable=protected-access
    result.setdefault(producer.name, []).append("")
  return result


def _is_padded_convolution(layer) -> bool:
  """A convolution whose input and output may carry padding (groups 1, channels last)."""
  return (isinstance(layer, keras.layers.Conv2D) and getattr(layer, "groups", 1) == 1
          and layer.data_format == "channels_last")


def _is_depthwise(layer) -> bool:
  return (isinstance(layer, keras.layers.DepthwiseConv2D) and layer.depth_multiplier == 1
          and layer.data_format == "channels_last")


def _carries_padding(layer) -> bool:
  """Layers whose output carries their input's zero channels as zeros."""
  from deeplab_tf.model import activations, layers  # pylint: disable=g-import-not-at-top
  if _is_depthwise(layer) or isinstance(layer, layers.BatchNormalization):
    return True
  if type(layer) in (keras.layers.ReLU, keras.layers.Add, keras.layers.ZeroPadding2D):  # pylint: disable=unidiomatic-typecheck
    return True
  return isinstance(layer, activations.Clip)


def plan_channel_padding(model: keras.Model, multiple: int,
                         channel_counts: Optional[Sequence[int]] = None) -> Dict[str, Tuple[int, int]]:
  """`{layer name: (input padding, output padding)}` of the layers `with_channel_padding` pads.

  Args:
    model: a functional Keras model whose layers are each called once.
    multiple: channels are padded up to a multiple of this (16: an AVX-512 vector of float32).
    channel_counts: only convolutions with this many filters start a padding (None: any count).

  Returns:
    An entry for every layer whose input or output is padded; depthwise convolutions and BatchNorms
    have equal input and output paddings. Empty when nothing can be padded.
  """
  if multiple <= 1 or not getattr(model, "_nodes_by_depth", None):
    return {}
  order = [layer for layer in model.layers if layer._inbound_nodes]  # pylint: disable=protected-access
  if any(len(layer._inbound_nodes) != 1 for layer in order):  # pylint: disable=protected-access
    return {}  # A shared layer would need one padding per call.
  producers = {layer.name: _producers(layer) for layer in order}
  reads = readers(model)
  by_name = {layer.name: layer for layer in order}
  sources = {layer.name for layer in order if _is_padded_convolution(layer)
             and channel_padding(layer.filters, multiple)
             and (channel_counts is None or layer.filters in channel_counts)}

  def upstream_sources(name: str, seen=None) -> set:
    seen = set() if seen is None else seen
    if name in seen:
      return set()
    seen.add(name)
    if name in sources:
      return {name}
    found = set()
    if _carries_padding(by_name[name]):
      for producer in producers[name]:
        found |= upstream_sources(producer, seen)
    return found

  while True:
    pad: Dict[str, int] = {}
    bad = set()
    for layer in order:
      name = layer.name
      ins = [pad.get(p, 0) for p in producers[name]]
      if name in sources:
        pad[name] = channel_padding(layer.filters, multiple)
      elif _carries_padding(layer):
        if len(set(ins)) > 1:
          bad.update(producers[name])
        pad[name] = max(ins) if ins else 0
      else:
        pad[name] = 0
      if any(ins) and not (_is_padded_convolution(layer) or _carries_padding(layer)):
        bad.update(p for p, i in zip(producers[name], ins) if i)
    bad.update(name for name, names in reads.items() if "" in names and pad.get(name))
    if not bad:
      break
    culprits = set()
    for name in bad:
      culprits |= upstream_sources(name)
    if not culprits:  # Cannot happen: every padded tensor starts at a source.
      return {}
    sources -= culprits
  plan = {}
  for layer in order:
    name = layer.name
    ins = [pad.get(p, 0) for p in producers[name]]
    in_pad = max(ins) if ins else 0
    out_pad = pad.get(name, 0)
    if _is_padded_convolution(layer) and (in_pad or out_pad):
      plan[name] = (in_pad, out_pad)
    elif (_is_depthwise(layer) or _is_batch_norm(layer)) and in_pad:
      plan[name] = (in_pad, in_pad)
  return plan


def _is_batch_norm(layer) -> bool:
  from deeplab_tf.model import layers  # pylint: disable=g-import-not-at-top
  return isinstance(layer, layers.BatchNormalization)


def with_channel_padding(model: keras.Model, multiple: int = 16,
                         channel_counts: Optional[Sequence[int]] = (728,)) -> keras.Model:
  """A copy of `model` whose features of `channel_counts` channels are carried zero-padded.

  See the module docstring. The copy has the same variables' shapes and values, layer names and
  outputs (to float32 summation order); its padded layers are this package's `Conv2D`,
  `PointwiseConv2D`, `DepthwiseConv2D` and `FusedBatchNormalization`.

  Args:
    model: a functional Keras model (e.g. from `build_deeplab`); it is not modified.
    multiple: channels are padded up to a multiple of this.
    channel_counts: the convolution widths to pad (default: Xception's 728, the one measured);
      None pads every width that is not a multiple.

  Returns:
    The padded copy, or `model` itself when nothing is padded.
  """
  from deeplab_tf.model.acceleration import rewrite  # pylint: disable=g-import-not-at-top
  return rewrite.rewrite(model, None, plan_channel_padding(model, multiple, channel_counts))


def without_channel_padding(model: keras.Model) -> keras.Model:
  """A copy of `model` whose layers carry no channel padding: the same variables' values and the
  same outputs, computed on the real channels only. `model` itself if nothing is padded."""
  if not any(any(channel_paddings(layer)) for layer in model.layers):
    return model
  from deeplab_tf.model.acceleration import rewrite  # pylint: disable=g-import-not-at-top
  return rewrite.rewrite(model, None, {})
