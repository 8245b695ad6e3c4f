"""Saving and restoring our own models: options beside the weights, one loader for every form.

A training log directory holds `model_options.json` (`ModelOptions.to_json()`) and TF2 checkpoints
`ckpt-N` written by a `tf.train.CheckpointManager` over `tf.train.Checkpoint(model=model, ...)`.
`load_model` rebuilds the model from the options and restores its weights from such a directory, a
checkpoint prefix, or a `.keras` file (checkpoints of the original TF1 model zoo go through
`deeplab_tf.checkpoints.load_tf1_checkpoint` instead).
"""

from __future__ import annotations

import os
from typing import Optional, Tuple

import keras
import tensorflow as tf

from deeplab_tf import io_utils
from deeplab_tf.model import acceleration
from deeplab_tf.model.deeplab import build_deeplab, global_dtype_policy
from deeplab_tf.options import ModelOptions

MODEL_OPTIONS_FILENAME = "model_options.json"


def save_model_options(logdir: str, options: ModelOptions) -> str:
  """Writes `<logdir>/model_options.json` atomically and returns its path."""
  path = os.path.join(logdir, MODEL_OPTIONS_FILENAME)
  io_utils.atomic_write_text(path, options.to_json(indent=1) + "\n")
  return path


def load_model_options(path: str) -> ModelOptions:
  """Reads `model_options.json` from a file, or from the folder (or a checkpoint prefix's folder).

  Raises:
    FileNotFoundError: no model_options.json where expected, with the places looked at.
    ValueError: the file is not valid options JSON.
  """
  candidates = [path] if path.endswith(".json") else [
      os.path.join(path, MODEL_OPTIONS_FILENAME),
      os.path.join(io_utils.dirname(path), MODEL_OPTIONS_FILENAME)]
  for candidate in candidates:
    if tf.io.gfile.exists(candidate) and not io_utils.isdir(candidate):
      text = io_utils.read_text(candidate)
      try:
        return ModelOptions.from_json(text)
      except (ValueError, TypeError) as e:
        raise ValueError(f"{candidate}: not a valid ModelOptions JSON ({e}).") from e
  raise FileNotFoundError(
      f"No {MODEL_OPTIONS_FILENAME} found at {candidates}; pass the model flags (--model_variant, "
      "--num_classes, ...) or point at a training log directory written by deeplab_train.")


def resolve_checkpoint(path: str) -> str:
  """A checkpoint prefix from a training log directory (its latest checkpoint) or a prefix.

  Raises:
    FileNotFoundError: a directory with no checkpoint, or a prefix with no `.index` file.
  """
  if io_utils.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise FileNotFoundError(f"{path}: no checkpoint found in this directory (expected ckpt-N files "
                              "written by deeplab_train).")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise FileNotFoundError(f"{path}: not a checkpoint prefix ({path}.index does not exist).")
  return path


def load_model(path: str, options: Optional[ModelOptions] = None, input_dtype: str = "float32",
               mixed_precision: str = "float32") -> Tuple[keras.Model, ModelOptions]:
  """Rebuilds a DeepLab model and restores its weights.

  Args:
    path: a training log directory (latest `ckpt-N`), a TF2 checkpoint prefix, or a `.keras` file.
    options: the architecture; by default read from `model_options.json` beside the checkpoint.
    input_dtype: input dtype of the rebuilt model ('float32' or 'uint8'); ignored for `.keras` files.
    mixed_precision: Keras dtype policy of the rebuilt model: 'float32', or 'mixed_bfloat16' /
      'mixed_float16' (float32 weights as in the checkpoint, 16-bit activations; float32 logits);
      ignored for `.keras` files, which keep the policies they were saved with.

  Returns:
    `(model, options)`.

  Raises:
    FileNotFoundError: nothing loadable at `path`.
    ValueError: the checkpoint does not fit the model (e.g. another num_classes), or an unknown
      `mixed_precision`.
  """
  if path.endswith(".keras"):
    if not tf.io.gfile.exists(path):
      raise FileNotFoundError(f"{path}: no such .keras file.")
    if options is None:
      options = load_model_options(io_utils.dirname(path) or ".")
    # In plain layers, whatever kernel policy the file was saved with (older releases saved the
    # CPU kernels' classes); the caller applies its own.
    model = acceleration.portable_model(keras.saving.load_model(path, compile=False))
    return model, options
  prefix = resolve_checkpoint(path)
  if options is None:
    options = load_model_options(path if io_utils.isdir(path) else prefix)
  with global_dtype_policy(mixed_precision):
    model = build_deeplab(options, input_dtype=input_dtype)
  status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
  try:
    status.assert_existing_objects_matched()
  except AssertionError as e:
    raise ValueError(f"{prefix}: the checkpoint does not match the model built from {options} "
                     f"({e}).") from e
  return model, options
