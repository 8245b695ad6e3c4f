"""Initial weights of a fresh run (research/deeplab `train_utils.get_model_init_fn`).

Used only when the log directory holds no checkpoint yet: a resumed run restores its own checkpoint.
"""

from __future__ import annotations

import numpy as np
import keras
import tensorflow as tf

from deeplab_tf import io_utils
from deeplab_tf.options import InitializationOptions
from deeplab_tf.training.optimizer import last_layer_variables


def initialize_from_checkpoint(model: keras.Model, options: InitializationOptions) -> str:
  """Loads `options.tf_initial_checkpoint` into `model`; returns the kind loaded.

  Kinds: 'keras' (`.keras` / `.weights.h5`, layers matched by Keras; shape mismatches skipped when
  `initialize_last_layer` is False), 'tf2' (one of our checkpoints: prefix or log directory,
  `model=` restored), 'tf1' (a research/deeplab model-zoo checkpoint, through
  `deeplab_tf.checkpoints.load_tf1_checkpoint`). With `initialize_last_layer=False` the last layers
  keep their fresh initialisation. Paths may be on any `tf.io.gfile` filesystem.

  Raises:
    FileNotFoundError: nothing at `tf_initial_checkpoint`.
    ValueError: the checkpoint does not fit the model.
  """
  path = options.tf_initial_checkpoint
  keep = [] if options.initialize_last_layer else [
      (v, np.array(v.numpy()))
      for v in last_layer_variables(model, options.last_layers_contain_logits_only)]
  if path.endswith((".keras", ".weights.h5", ".h5")):
    if not tf.io.gfile.exists(path) or io_utils.isdir(path):
      raise FileNotFoundError(f"--tf_initial_checkpoint={path}: no such file.")
    model.load_weights(path, skip_mismatch=not options.initialize_last_layer)
    kind = "keras"
  else:
    prefix = tf.train.latest_checkpoint(path) if io_utils.isdir(path) else path
    if prefix is None or not tf.io.gfile.exists(prefix + ".index"):
      raise FileNotFoundError(f"--tf_initial_checkpoint={path}: not a checkpoint prefix or a "
                              "directory holding one.")
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    if reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
      try:
        tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
      except (ValueError, tf.errors.InvalidArgumentError) as e:
        raise ValueError(f"--tf_initial_checkpoint={path}: does not fit the model ({e}); to change "
                         "num_classes start from a .weights.h5 file with "
                         "--noinitialize_last_layer.") from e
      kind = "tf2"
    else:
      from deeplab_tf import checkpoints  # pylint: disable=import-outside-toplevel
      checkpoints.load_tf1_checkpoint(
          model, prefix, initialize_last_layer=options.initialize_last_layer,
          last_layers_contain_logits_only=options.last_layers_contain_logits_only)
      kind = "tf1"
  for var, value in keep:
    var.assign(value)
  return kind
