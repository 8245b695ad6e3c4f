"""Initial weights of a fresh run (research/deeplab `train_utils.get_model_init_fn`).

Used only when the log directory holds no checkpoint yet: a resumed run restores its own checkpoint.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import keras
import tensorflow as tf

from deeplab_tf import io_utils, model_io
from deeplab_tf.errors import UserError
from deeplab_tf.options import InitializationOptions
from deeplab_tf.training.optimizer import last_layer_variables

# Builds the model being trained with another number of classes (that of the checkpoint).
BuildFn = Callable[[int], keras.Model]


def _copy_but_last_layers(source: keras.Model, model: keras.Model, last_ids, path: str):
  """Copies `source`'s weights into `model`'s, in order, except the last layers' (`last_ids`)."""
  if len(source.weights) != len(model.weights):
    raise model_io.CheckpointMismatchError(
        f"--tf_initial_checkpoint={path}: another architecture ({len(source.weights)} weight tensors, "
        f"the model {len(model.weights)}); check --model_variant and the model flags.")
  for theirs, ours in zip(source.weights, model.weights):
    if id(ours) in last_ids:
      continue
    if tuple(theirs.shape) != tuple(ours.shape):
      raise model_io.CheckpointMismatchError(
          f"--tf_initial_checkpoint={path}: {theirs.path} is {list(theirs.shape)} there, "
          f"{list(ours.shape)} in the model, outside the last layers; check --model_variant and the "
          "model flags.")
    ours.assign(np.asarray(theirs.numpy()))


def _one_line(error) -> str:
  """`checkpoints.CheckpointMismatchError`'s listing in one line: its counts, the first names, the hint."""
  lines = [line.strip() for line in str(error).splitlines() if line.strip()]
  names = [line for line in lines[1:] if not line.endswith(":") and "(" not in line[:1]
           and not line.startswith(("The logits", "Check that", "..."))][:3]
  hints = [line for line in lines if line.startswith(("The logits", "Check that"))]
  first = lines[0].split(": ", 1)[-1] if lines else ""
  return " ".join([first, f"E.g. {'; '.join(names)}." if names else ""] + hints).strip()


def _checkpoint_num_classes(path: str, prefix: str) -> int:
  try:
    return model_io.load_model_options(path if io_utils.isdir(path) else prefix).num_classes
  except (FileNotFoundError, ValueError) as e:
    raise UserError(f"--tf_initial_checkpoint={path} with --noinitialize_last_layer: its number of "
                    f"classes is unknown ({str(e).splitlines()[0]}); put the model_options.json of "
                    "its training run beside it.") from e


def initialize_from_checkpoint(model: keras.Model, options: InitializationOptions,
                               build_fn: Optional[BuildFn] = None) -> str:
  """Loads `options.tf_initial_checkpoint` into `model`; returns the kind loaded.

  Kinds: 'keras' (`.keras` / `.weights.h5`, layers matched by Keras; shape mismatches skipped when
  `initialize_last_layer` is False), 'tf2' (one of our checkpoints: prefix or log directory,
  `model=` restored), 'tf1' (a research/deeplab model-zoo checkpoint, through
  `deeplab_tf.checkpoints.load_tf1_checkpoint`). With `initialize_last_layer=False` the last layers
  keep their fresh initialisation, from our own checkpoints as from the model zoo
  (research/deeplab's fine-tuning to another number of classes): a checkpoint of ours is restored
  into a model built by `build_fn` with the checkpoint's num_classes (its `model_options.json`), and
  every weight but the last layers' copied over. Paths may be on any `tf.io.gfile` filesystem.

  Args:
    model: the model to initialise.
    options: `tf_initial_checkpoint`, `initialize_last_layer`, `last_layers_contain_logits_only`.
    build_fn: builds the same architecture with another num_classes; needed for a TF2 checkpoint
      of ours with `initialize_last_layer=False` (else that case restores everything).

  Raises:
    FileNotFoundError: nothing at `tf_initial_checkpoint` (`model_io.CheckpointNotFoundError`, a
      `UserError`).
    ValueError: the checkpoint does not fit the model (`model_io.CheckpointMismatchError`, a
      `UserError`, in one line).
  """
  path = options.tf_initial_checkpoint
  last = [] if options.initialize_last_layer else last_layer_variables(
      model, options.last_layers_contain_logits_only)
  keep = [(v, np.array(v.numpy())) for v in last]
  if path.endswith(".keras") and not options.initialize_last_layer:
    if not tf.io.gfile.exists(path) or io_utils.isdir(path):
      raise model_io.CheckpointNotFoundError(f"--tf_initial_checkpoint={path}: no such file.")
    with model_io.quiet_tf_warnings():
      source = keras.saving.load_model(path, compile=False)
    _copy_but_last_layers(source, model, {id(v) for v in last}, path)
    kind = "keras"
  elif path.endswith((".keras", ".weights.h5", ".h5")):
    if not tf.io.gfile.exists(path) or io_utils.isdir(path):
      raise model_io.CheckpointNotFoundError(f"--tf_initial_checkpoint={path}: no such file.")
    model.load_weights(path, skip_mismatch=not options.initialize_last_layer)
    kind = "keras"
  else:
    prefix = tf.train.latest_checkpoint(path) if io_utils.isdir(path) else path
    if prefix is None or not tf.io.gfile.exists(prefix + ".index"):
      raise model_io.CheckpointNotFoundError(
          f"--tf_initial_checkpoint={path}: not a checkpoint prefix or a directory holding one.")
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    if reader.has_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"):
      hint = ("; to fine-tune to another num_classes add --noinitialize_last_layer"
              if options.initialize_last_layer else "")
      mismatch = None
      try:
        if options.initialize_last_layer or build_fn is None:
          model_io.restore_model(model, prefix, what="--tf_initial_checkpoint")
        else:
          source = build_fn(_checkpoint_num_classes(path, prefix))
          model_io.restore_model(source, prefix, what="--tf_initial_checkpoint")
          _copy_but_last_layers(source, model, {id(v) for v in last}, path)
      except model_io.CheckpointMismatchError as e:
        mismatch = str(e).rstrip(".")
      if mismatch is not None:
        raise model_io.CheckpointMismatchError(f"{mismatch}{hint}.")
      kind = "tf2"
    else:
      from deeplab_tf import checkpoints  # pylint: disable=import-outside-toplevel
      try:
        checkpoints.load_tf1_checkpoint(
            model, prefix, initialize_last_layer=options.initialize_last_layer,
            last_layers_contain_logits_only=options.last_layers_contain_logits_only)
      except checkpoints.CheckpointMismatchError as e:
        raise model_io.CheckpointMismatchError(f"--tf_initial_checkpoint={path}: {_one_line(e)}") from None
      kind = "tf1"
  for var, value in keep:
    var.assign(value)
  return kind
