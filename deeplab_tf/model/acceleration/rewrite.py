"""The one rewrite of a built model: each layer's class and config for a kernel policy and a padding.

Every kernel choice of this package is a layer class with extra config keys (`convolutions`,
`batch_norm`); `layer_spec` says which class and config compute a layer's function under a policy, and
`rewrite` clones a functional model with them, copying the variables. Layer names, variables (shapes,
values, order) and the order of the model's layers never change, so checkpoints of any rewrite load into
any other and into the plain model `build_deeplab` returns.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import keras

from deeplab_tf.model import layers
from deeplab_tf.model.acceleration import batch_norm as batch_norm_lib
from deeplab_tf.model.acceleration import convolutions

# Config keys that only this package's classes have, by the plain class they extend.
_BATCH_NORM_KEYS = ("channel_padding", "bf16_training_channel_multiple", "bf16_inference_as_affine")
_CONV_KEYS = ("input_channel_padding", "output_channel_padding", "matmul_in_training",
              "matmul_at_inference")
_DEPTHWISE_KEYS = ("channel_padding", "in_place_dilation_max_span",
                   "bf16_strided_input_gradient_in_float32")
_CONV_CLASSES = (keras.layers.Conv2D, convolutions.Conv2D, convolutions.PointwiseConv2D)
_DEPTHWISE_CLASSES = (keras.layers.DepthwiseConv2D, convolutions.DepthwiseConv2D)


def _without(config: dict, keys) -> dict:
  return {k: v for k, v in config.items() if k not in keys}


def _pair(value) -> Tuple[int, ...]:
  return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _batch_norm_spec(layer, config, policy, padding: int):
  base = _without(config, _BATCH_NORM_KEYS)
  fused = isinstance(layer, batch_norm_lib.FusedBatchNormalization)
  if policy is not None:
    fused = policy.fused_batch_norm
  if not (fused or padding):
    return layers.BatchNormalization, base
  if policy is None:
    extra = {k: config[k] for k in _BATCH_NORM_KEYS[1:] if k in config}
  else:
    extra = dict(bf16_training_channel_multiple=policy.bf16_training_batch_norm_channel_multiple,
                 bf16_inference_as_affine=policy.bf16_inference_batch_norm_as_affine)
  return batch_norm_lib.FusedBatchNormalization, {**base, **extra, "channel_padding": padding}


def _conv_spec(layer, config, policy, paddings: Tuple[int, int], training: bool):
  base = _without(config, _CONV_KEYS)
  pointwise = (_pair(layer.kernel_size) == (1, 1) and _pair(layer.strides) == (1, 1)
               and _pair(layer.dilation_rate) == (1, 1) and layer.groups == 1
               and layer.data_format == "channels_last")
  if policy is None:
    matmul = ((layer.matmul_in_training, layer.matmul_at_inference)
              if isinstance(layer, convolutions.PointwiseConv2D) else (False, False))
  else:
    matmul = (policy.pointwise_as_matmul_in_training and training,
              policy.pointwise_as_matmul_at_inference and layer.compute_dtype == "float32"
              and not training)
  pad = dict(input_channel_padding=paddings[0], output_channel_padding=paddings[1])
  if pointwise and any(matmul):
    return convolutions.PointwiseConv2D, {**base, **pad, "matmul_in_training": matmul[0],
                                          "matmul_at_inference": matmul[1]}
  if any(paddings):
    return convolutions.Conv2D, {**base, **pad}
  return keras.layers.Conv2D, base


def _depthwise_spec(layer, config, policy, padding: int, training: bool):
  base = _without(config, _DEPTHWISE_KEYS)
  if policy is None:
    ours = isinstance(layer, convolutions.DepthwiseConv2D)
    span = layer.in_place_dilation_max_span if ours else 0
    float32_gradient = layer.bf16_strided_input_gradient_in_float32 if ours else False
  else:
    span = policy.in_place_dilation_max_span if policy.in_place_dilated_depthwise else 0
    float32_gradient = policy.bf16_strided_depthwise_input_gradient_in_float32 and training
  if max(_pair(layer.dilation_rate)) == 1:
    span = 0
  if max(_pair(layer.strides)) == 1:
    float32_gradient = False
  if not (span or float32_gradient or padding):
    return keras.layers.DepthwiseConv2D, base
  return convolutions.DepthwiseConv2D, {
      **base, "channel_padding": padding, "in_place_dilation_max_span": span,
      "bf16_strided_input_gradient_in_float32": float32_gradient}


def layer_spec(layer, policy=None, paddings: Tuple[int, int] = (0, 0), training: bool = True):
  """`(class, config)` of the layer that computes `layer`'s function as `policy` says.

  Args:
    layer: a built Keras layer.
    policy: a `KernelPolicy`; None keeps the layer's own kernel choices (only the padding changes).
    paddings: (input, output) zero channels the layer's input and output carry (see
      `channel_padding`); a depthwise convolution's or BatchNorm's are equal.
    training: the model is for training (else for inference): pointwise matrix products and the
      float32 depthwise input gradient are training choices, matrix products at inference a choice
      for float32 models without BatchNorm left.

  Returns:
    The class and the config to build it from: `type(layer)` and its config for layers no policy
    concerns.
  """
  config = layer.get_config()
  if isinstance(layer, layers.BatchNormalization):
    return _batch_norm_spec(layer, config, policy, paddings[0])
  if type(layer) in _CONV_CLASSES:  # pylint: disable=unidiomatic-typecheck
    return _conv_spec(layer, config, policy, paddings, training)
  if type(layer) in _DEPTHWISE_CLASSES:  # pylint: disable=unidiomatic-typecheck
    return _depthwise_spec(layer, config, policy, paddings[0], training)
  return type(layer), config


def is_functional(model) -> bool:
  """Whether `model` is a functional Keras model (one whose graph of layers can be rewritten)."""
  return (isinstance(model, keras.Model) and not isinstance(model, keras.Sequential)
          and bool(getattr(model, "_nodes_by_depth", None)))


def rewrite(model: keras.Model, policy=None, paddings: Optional[Dict[str, Tuple[int, int]]] = None,
            training: bool = True) -> keras.Model:
  """A copy of functional `model` with every layer as `layer_spec` says, or `model` if none changes.

  Args:
    model: a functional Keras model; it is not modified. Anything else is returned as it is.
    policy: a `KernelPolicy`, or None to keep each layer's kernel choices.
    paddings: `{layer name: (input, output) channel padding}`; absent layers carry none.
    training: see `layer_spec`.

  Returns:
    A model with the same inputs, outputs, layer names, variables' shapes and values, or `model`.
  """
  if not is_functional(model):
    return model
  paddings = paddings or {}
  specs = {layer.name: layer_spec(layer, policy, paddings.get(layer.name, (0, 0)), training)
           for layer in model.layers}
  if all(cls is type(layer) and config == layer.get_config()
         for layer in model.layers for cls, config in [specs[layer.name]]):
    return model

  def clone(layer):
    if layer.name not in specs:  # A stateless Keras op of the graph (e.g. `x[..., :3]`): shared.
      return layer
    cls, config = specs[layer.name]
    return cls.from_config(config)

  # Inputs of the same names (Keras would rename unnamed ones), so every layer keeps its name.
  inputs = keras.tree.map_structure(
      lambda t: keras.Input(batch_shape=t.shape, dtype=t.dtype,
                            name=t._keras_history.operation.name),  # pylint: disable=protected-access
      model.input)
  copy = keras.models.clone_model(model, clone_function=clone, input_tensors=inputs)
  for layer in model.layers:
    generator = getattr(layer, "seed_generator", None)
    if not layer.weights and generator is None:
      continue
    target = copy.get_layer(layer.name)
    if layer.weights:
      target.set_weights(layer.get_weights())
    if generator is not None and getattr(target, "seed_generator", None) is not None:
      target.seed_generator.state.assign(generator.state)  # Dropout draws the same masks.
  return copy
