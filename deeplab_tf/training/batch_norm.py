"""BatchNorm during training, in one place: frozen or trained, moving-average decay, synchronised.

research/deeplab runs BN with `is_training=fine_tune_batch_norm` (`core/feature_extractor.py`) and a
decay of 0.9997 (DeepLabv3, section 4.1); its multi-GPU clones never synchronised batch statistics.
Keras' `BatchNormalization` and our `model.layers.FusedBatchNormalization` (its subclass, on TF's
fused kernel) read `momentum`, `trainable` and `synchronized` at call time (synchronised BN
all-reduces the batch sums across replicas), so all three switches apply to a built model, before
the training step is traced; the model builder needs no change.
"""

from __future__ import annotations

from typing import Iterator, List

import keras

from deeplab_tf.options import BatchNormOptions


def all_layers(model: keras.Model) -> Iterator[keras.layers.Layer]:
  """Every layer of `model`, depth first, nested models and their layers included."""
  for layer in model.layers:
    yield layer
    if hasattr(layer, "layers"):
      yield from all_layers(layer)


def batch_norm_layers(model: keras.Model) -> List[keras.layers.BatchNormalization]:
  """Every `keras.layers.BatchNormalization` of `model`, nested models included."""
  return [l for l in all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]


def set_batch_norm_decay(model: keras.Model, decay: float) -> int:
  """Sets the moving-average decay (Keras `momentum`) of every BN layer; returns their count."""
  layers = batch_norm_layers(model)
  for layer in layers:
    layer.momentum = float(decay)
  return len(layers)


def set_batch_norm_synchronized(model: keras.Model, synchronized: bool = True) -> int:
  """Switches cross-replica batch statistics on (or off) for every BN layer; returns their count."""
  layers = batch_norm_layers(model)
  for layer in layers:
    layer.synchronized = synchronized
  return len(layers)


def freeze_batch_norm(model: keras.Model) -> int:
  """`fine_tune_batch_norm=False`: BN layers run in inference mode (moving statistics) and their
  gamma/beta are not trained (Keras `trainable=False`, which is both); returns their count.

  Keras ties inference mode to `trainable=False`, which also keeps gamma/beta fixed (the frozen-BN
  fine-tuning stage of DeepLabv3, section 4.1).
  """
  layers = batch_norm_layers(model)
  for layer in layers:
    layer.trainable = False
  return len(layers)


def configure_batch_norm(model: keras.Model, options: BatchNormOptions) -> None:
  """Applies `options` (freezing, synchronisation, decay) to every BN layer of `model`.

  Call it after building the model and before tracing the training step.
  """
  if not options.fine_tune_batch_norm:
    freeze_batch_norm(model)
  if options.sync_batch_norm:
    set_batch_norm_synchronized(model, True)
  if options.batch_norm_decay_override is not None:
    set_batch_norm_decay(model, options.batch_norm_decay_override)
