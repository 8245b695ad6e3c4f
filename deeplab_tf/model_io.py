"""Saving and restoring our own models: options beside the weights, one loader for every form.

A training log directory holds `model_options.json` (`ModelOptions.to_json()`) and TF2 checkpoints
`ckpt-N` written by a `tf.train.CheckpointManager` over `tf.train.Checkpoint(model=model, ...)`.
`load_model` rebuilds the model from the options and restores its weights from such a directory, a
checkpoint prefix, or a `.keras` file (checkpoints of the original TF1 model zoo go through
`deeplab_tf.checkpoints.load_tf1_checkpoint` instead).
"""

from __future__ import annotations

import contextlib
import gc
import logging as py_logging
import os
from typing import Iterator, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from deeplab_tf import io_utils
from deeplab_tf.errors import UserError
from deeplab_tf.model import acceleration
from deeplab_tf.model.deeplab import build_deeplab, global_dtype_policy
from deeplab_tf.options import ModelOptions

MODEL_OPTIONS_FILENAME = "model_options.json"


class CheckpointMismatchError(UserError):
  """A checkpoint that reads back completely but does not fit the model (another architecture or
  num_classes): not a corrupt one, so nothing falls back or starts afresh over it."""


class NonFiniteWeightsError(UserError):
  """A model's weights (or BatchNorm statistics) hold NaN or Inf."""


def checkpoint_problem(prefix: str) -> Optional[str]:
  """None if every tensor of the checkpoint `prefix` reads back; else what is wrong with it.

  Catches a missing index, a truncated or corrupted data file (TensorFlow raises `DataLossError`,
  `OutOfRangeError` or a raw `IndexError: Read less bytes than requested`). The reader opens the prefix
  itself: `tf.train.load_checkpoint` would take a `ram://` prefix for a folder.
  """
  try:
    reader = tf.compat.v1.train.NewCheckpointReader(prefix)
    for name, dtype in reader.get_variable_to_dtype_map().items():
      if dtype != tf.variant:  # e.g. an input iterator's state: not readable into numpy
        reader.get_tensor(name)
  except (tf.errors.OpError, ValueError, IndexError, OSError, RuntimeError) as e:
    return f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
  return None


@contextlib.contextmanager
def quiet_tf_warnings() -> Iterator[None]:
  """TensorFlow's Python warnings silenced for the block, and the garbage it leaves collected inside.

  A restore that fails (a checkpoint of another architecture) leaves a restore coordinator whose
  deletion logs one "Value in checkpoint could not be found" warning per object: 300-800 lines after
  a message that already says what is wrong.
  """
  loggers = [tf.get_logger(), py_logging.getLogger("absl")]
  levels = [logger.level for logger in loggers]
  for logger in loggers:
    logger.setLevel(py_logging.ERROR)
  try:
    yield
  finally:
    gc.collect()  # the coordinator's warnings are logged on deletion: delete it while quiet
    for logger, level in zip(loggers, levels):
      logger.setLevel(level)


def silence_failed_restores() -> None:
  """Marks every pending checkpoint restore as partial, so that none logs its unmatched values.

  A restore that raised (shape mismatch) never returned the status whose `expect_partial()` would
  silence it; the model's layers keep its coordinator, which logs one "Value in checkpoint could not
  be found" warning per object when deleted, often at exit, after the one-line error. Called only
  after such a failure (it walks the garbage collector's objects).
  """
  from tensorflow.python.checkpoint import checkpoint as checkpoint_lib  # pylint: disable=g-direct-tensorflow-import
  deleter = getattr(checkpoint_lib, "_CheckpointRestoreCoordinatorDeleter", None)
  if deleter is None:
    return
  for obj in gc.get_objects():
    if isinstance(obj, deleter):
      obj.set_expect_partial(True)


def restore_model(model: keras.Model, prefix: str, what: str = "the checkpoint") -> None:
  """Restores `model` (`model=` of our TF2 checkpoints) from `prefix`, quietly and strictly.

  Raises:
    CheckpointMismatchError: the checkpoint's model variables do not fit `model` (shapes or
      structure), in one line naming `what`.
  """
  detail = None
  with quiet_tf_warnings():
    try:
      status = tf.train.Checkpoint(model=model).restore(prefix).expect_partial()
      status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.InvalidArgumentError) as e:
      detail = " ".join(str(e).split())[:300]
    # Raised below, out of the `except`: the error's traceback would keep the failed restore alive
    # until the process ends, and its warnings would print then.
  if detail is not None:
    silence_failed_restores()
    raise CheckpointMismatchError(f"{what} {prefix} does not fit the model ({detail}).")


def non_finite_weights(variables: Sequence[tf.Variable]) -> List[str]:
  """Names (`variable.path`, else `.name`) of the variables holding NaN or Inf."""
  bad = []
  for variable in variables:
    value = variable.numpy() if hasattr(variable, "numpy") else np.asarray(variable)
    if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
      bad.append(getattr(variable, "path", None) or variable.name)
  return bad


def check_finite_weights(model: keras.Model, source: str) -> None:
  """Raises `NonFiniteWeightsError` (one line naming `source`, the count and the first layers) if any
  weight of `model`, BatchNorm moving statistics included, is NaN or Inf."""
  bad = non_finite_weights(model.weights)
  if bad:
    raise NonFiniteWeightsError(
        f"{source}: {len(bad)} of the model's {len(model.weights)} weight tensors hold NaN or Inf "
        f"(first: {', '.join(bad[:3])}); the training diverged. Use an earlier checkpoint, or "
        "retrain with a lower --base_learning_rate.")


def options_difference(saved: ModelOptions, requested: ModelOptions) -> List[str]:
  """`field: saved -> requested` for every field of the two options that differs."""
  a, b = saved.to_dict(), requested.to_dict()
  return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


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


class CheckpointNotFoundError(UserError, FileNotFoundError):
  """No (readable) checkpoint where one was expected."""


def readable_checkpoints(logdir: str) -> List[str]:
  """The checkpoint prefixes a log directory's `checkpoint` state lists, oldest first."""
  state = tf.train.get_checkpoint_state(logdir)
  candidates = list(state.all_model_checkpoint_paths) if state else []
  if state and state.model_checkpoint_path not in candidates:
    candidates.append(state.model_checkpoint_path)
  return [p if os.path.isabs(p) or io_utils.has_scheme(p) else os.path.join(logdir, p)
          for p in candidates]


def latest_readable_checkpoint(logdir: str) -> Optional[str]:
  """The newest checkpoint of `logdir` that reads back completely (`checkpoint_problem`), as training
  resumes; each newer, unreadable one is skipped with a warning naming it. None if there is none."""
  for prefix in reversed(readable_checkpoints(logdir)):
    problem = checkpoint_problem(prefix)
    if problem is None:
      return prefix
    logging.warning("Checkpoint %s is unreadable (%s): truncated or corrupted; using the previous "
                    "one.", prefix, problem)
  return None


def resolve_checkpoint(path: str) -> str:
  """A checkpoint prefix from a training log directory (its latest readable checkpoint) or a prefix.

  Raises:
    CheckpointNotFoundError: (a FileNotFoundError and `UserError`) a directory with no readable
      checkpoint, or a prefix with no `.index` file.
  """
  if io_utils.isdir(path):
    if tf.train.latest_checkpoint(path) is None:
      raise CheckpointNotFoundError(f"{path}: no checkpoint found in this directory (expected ckpt-N "
                                    "files written by deeplab_train).")
    latest = latest_readable_checkpoint(path)
    if latest is None:
      raise CheckpointNotFoundError(f"{path}: no readable checkpoint (every ckpt-N listed in its "
                                    "checkpoint file is truncated or corrupted).")
    return latest
  if not tf.io.gfile.exists(path + ".index"):
    raise CheckpointNotFoundError(f"{path}: not a checkpoint prefix ({path}.index does not exist).")
  problem = checkpoint_problem(path)
  if problem is not None:
    raise CheckpointNotFoundError(f"{path}: unreadable checkpoint ({problem}); truncated or "
                                  "corrupted, use an earlier one.")
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

  A log directory's latest checkpoint that is truncated or corrupted is skipped, with a warning
  naming it, for the previous readable one (as training resumes).

  Raises:
    FileNotFoundError: nothing loadable at `path` (`CheckpointNotFoundError` for checkpoints).
    CheckpointMismatchError: (a ValueError) the checkpoint does not fit the model (e.g. another
      model_variant or num_classes), in one line.
    NonFiniteWeightsError: (a ValueError) a weight or BatchNorm statistic is NaN or Inf (a diverged
      training run); the message names the checkpoint and the tensors.
    ValueError: an unknown `mixed_precision`.
  """
  if path.endswith(".keras"):
    if not tf.io.gfile.exists(path):
      raise CheckpointNotFoundError(f"{path}: no such .keras file.")
    if options is None:
      options = load_model_options(io_utils.dirname(path) or ".")
    # In plain layers, whatever kernel policy the file was saved with (older releases saved the
    # CPU kernels' classes); the caller applies its own.
    model = acceleration.portable_model(keras.saving.load_model(path, compile=False))
    check_finite_weights(model, path)
    return model, options
  prefix = resolve_checkpoint(path)
  if options is None:
    options = load_model_options(path if io_utils.isdir(path) else prefix)
  with global_dtype_policy(mixed_precision):
    model = build_deeplab(options, input_dtype=input_dtype)
  try:
    restore_model(model, prefix)
  except CheckpointMismatchError as e:
    raise CheckpointMismatchError(
        f"{prefix}: the checkpoint does not fit the model built from model_variant="
        f"{options.model_variant}, num_classes={options.num_classes} (check --model_variant, "
        f"--num_classes and the model_options.json beside it): {str(e).split(' does not fit the model ')[-1]}"
    ) from e
  check_finite_weights(model, prefix)
  return model, options
