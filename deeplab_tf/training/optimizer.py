"""The optimizer and the gradient multipliers of research/deeplab `train.py`.

Momentum SGD (0.9) with TF1's `MomentumOptimizer` update, the learning-rate policies of
`deeplab_tf.training.schedules`, and `train_utils.get_model_gradient_multipliers`: 2x on biases,
`last_layer_gradient_multiplier` on the "last layers" (`model.get_extra_layer_scopes`). Mixed float16
wraps the optimizer in Keras' dynamic loss scaling.
"""

from __future__ import annotations

from typing import List, Sequence

import keras

from deeplab_tf.model.deeplab import get_extra_layer_scopes
from deeplab_tf.model.layers import layer_name_to_scope
from deeplab_tf.options import TrainOptions
from deeplab_tf.training.batch_norm import all_layers
from deeplab_tf.training.schedules import learning_rate_schedule



@keras.saving.register_keras_serializable(package="deeplab_tf")
class MomentumOptimizer(keras.optimizers.SGD):
  """Momentum SGD with TF1's `MomentumOptimizer` update, as research/deeplab trains with.

  `accumulation = momentum * accumulation + gradient; variable -= learning_rate * accumulation`.
  Keras' SGD puts the learning rate inside the velocity instead, which differs whenever the learning
  rate changes (every step of the poly schedule).
  """

  def update_step(self, gradient, variable, learning_rate):
    learning_rate = keras.ops.cast(learning_rate, variable.dtype)
    gradient = keras.ops.cast(gradient, variable.dtype)
    accumulation = self.momentums[self._get_variable_index(variable)]
    self.assign(accumulation, accumulation * keras.ops.cast(self.momentum, variable.dtype) + gradient)
    self.assign_sub(variable, learning_rate * accumulation)


def build_optimizer(options: TrainOptions) -> keras.optimizers.Optimizer:
  """`MomentumOptimizer` on the options' learning-rate schedule; loss-scaled for mixed_float16.

  Build it under the strategy's scope.
  """
  optimizer = MomentumOptimizer(learning_rate=learning_rate_schedule(options.solver),
                                momentum=options.solver.momentum)
  if options.execution.mixed_precision == "mixed_float16":
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _is_last_layer(layer_name: str, scopes: Sequence[str]) -> bool:
  # The original matches scope names as substrings of variable names.
  scope = layer_name_to_scope(layer_name)
  return any(s in scope for s in scopes)


def last_layer_variables(model: keras.Model, last_layers_contain_logits_only: bool) -> List:
  """Every weight of the last layers (trainable or not)."""
  scopes = get_extra_layer_scopes(last_layers_contain_logits_only)
  return [v for layer in all_layers(model) if _is_last_layer(layer.name, scopes)
          for v in layer.weights]


def gradient_multipliers(model: keras.Model, options: TrainOptions) -> List[float]:
  """One multiplier per `model.trainable_variables` (`train_utils.get_model_gradient_multipliers`).

  Biases get 2, last-layer variables `last_layer_gradient_multiplier` and last-layer biases twice
  that; everything else 1.
  """
  scopes = get_extra_layer_scopes(options.initialization.last_layers_contain_logits_only)
  by_id = {}
  for layer in all_layers(model):
    bias = getattr(layer, "bias", None)
    last = _is_last_layer(layer.name, scopes)
    for var in layer.trainable_weights:
      multiplier = options.solver.last_layer_gradient_multiplier if last else 1.0
      if bias is not None and var is bias:
        multiplier *= 2.0
      by_id.setdefault(id(var), multiplier)
  return [by_id.get(id(v), 1.0) for v in model.trainable_variables]
