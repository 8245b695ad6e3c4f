"""The outer training loop (Orbit's `Controller`): intervals, checkpoints, stopping, resuming.

The controller runs the train step's loops (`steps_per_loop` steps per call), and between two loops:
stops on a non-finite loss (keeping the last good checkpoint as the latest one), checkpoints every
`save_interval_steps` steps and every `save_interval_secs` seconds (research/deeplab's only interval,
1200 s) through a `tf.train.CheckpointManager`, calls the Keras callbacks, and stops cleanly,
checkpointing first, on SIGTERM or a set `stop_event`. In multi-worker training a
`tf.distribute.experimental.PreemptionCheckpointHandler` watches SIGTERM instead: the workers agree
on a step, all checkpoint there and `run` returns.

Resuming (`restore_or_initialize`): the newest checkpoint of the log directory whose files read back
completely is restored; a truncated or corrupted newer one is skipped with a warning naming it, and
the chief makes the restored one the latest again. With no usable checkpoint `init_fn` (e.g.
`--tf_initial_checkpoint`) initialises the model.
In multi-worker training every worker restores from the chief's directory; the other workers save
into a scratch folder (saving may need collectives) that is removed at the end. Decisions taken from
a worker's own clock or signals (time-based checkpoints, stopping) are agreed on by all workers, so
they all take the same branch.

A checkpoint that cannot be written (disk full, quota) ends in one `CheckpointWriteError` line naming
the folder and the space a checkpoint needs; its temporary files are removed and the previous
checkpoint stays the latest.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from typing import Callable, Dict, List, Optional, Sequence

import keras
import tensorflow as tf
from absl import logging

from deeplab_tf import io_utils
from deeplab_tf.options import CheckpointOptions
from deeplab_tf.training import strategy as strategy_lib

CHECKPOINT_NAME = "ckpt"


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is left as the latest one."""


class CheckpointWriteError(OSError):
  """A checkpoint could not be written (e.g. the disk is full); the previous one is intact."""


class _SigtermFlag:
  """Sets `event` on SIGTERM while active (main thread only); restores the previous handler."""

  def __init__(self, event: threading.Event):
    self.event = event
    self.previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self.previous = signal.signal(signal.SIGTERM, lambda signum, frame: self.event.set())
    return self

  def __exit__(self, *exc):
    if self.previous is not None:
      signal.signal(signal.SIGTERM, self.previous)


def checkpoint_files(prefix: str) -> Sequence[str]:
  """The files of the checkpoint `prefix` (`.index`, `.data-*`)."""
  return tf.io.gfile.glob(prefix + ".*")


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


def _local_free_bytes(directory: str) -> Optional[int]:
  """Free bytes of the local disk holding `directory`; None for other filesystems."""
  if io_utils.has_scheme(directory):
    return None
  try:
    return shutil.disk_usage(directory).free  # not-gfile: free space exists only for a local disk
  except OSError:
    return None


class Controller:
  """Runs training loops with checkpoints, callbacks and stopping; see the module docstring.

  Args:
    strategy: the tf.distribute strategy.
    checkpoint: what a checkpoint holds (model, optimizer, step, ...).
    step: the int64 optimizer-step variable (the checkpoint number).
    logdir: the log directory (the chief's checkpoints).
    options: the checkpoint intervals and `max_to_keep`.
    total_steps: stop after this many optimizer steps.
    steps_per_loop: steps per call of the loop function.
    init_fn: initialises a fresh run (no usable checkpoint), e.g. from `tf_initial_checkpoint`.
    callbacks: Keras callbacks (see `deeplab_tf.training.callbacks`); those with an
      `on_checkpoint(step, prefix)` method are also called after every checkpoint.
    stop_event: when set (or on SIGTERM), training checkpoints and returns between two loops.
  """

  def __init__(self, *, strategy: tf.distribute.Strategy, checkpoint: tf.train.Checkpoint,
               step: tf.Variable, logdir: str, options: CheckpointOptions, total_steps: int,
               steps_per_loop: int = 1, init_fn: Optional[Callable[[], None]] = None,
               callbacks: Sequence[keras.callbacks.Callback] = (),
               stop_event: Optional[threading.Event] = None):
    self.strategy, self.checkpoint, self.step, self.logdir = strategy, checkpoint, step, logdir
    self.options, self.total_steps, self.steps_per_loop = options, total_steps, steps_per_loop
    self.init_fn, self.callbacks = init_fn, list(callbacks)
    self.stop_event = stop_event or threading.Event()
    self.chief = strategy_lib.is_chief(strategy)
    self.multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
    self.directory = logdir if self.chief else os.path.join(
        logdir, f".worker_{strategy_lib.worker_id(strategy)}_tmp")
    if not self.chief and tf.io.gfile.exists(self.directory):  # left by a killed run: stale
      tf.io.gfile.rmtree(self.directory)
    tf.io.gfile.makedirs(self.directory)
    self.manager: Optional[tf.train.CheckpointManager] = None  # made by restore_or_initialize
    self.preemption = None
    self._preempted = threading.Event()
    self.restored: Optional[str] = None
    self.latest: Optional[str] = None
    self._saved_step = -1
    self._saved_time = time.time()
    self._agree_fn = None

  def restore_or_initialize(self) -> int:
    """Restores the newest readable checkpoint of `logdir` (or runs `init_fn`); returns the step."""
    state = tf.train.get_checkpoint_state(self.logdir)
    candidates = list(state.all_model_checkpoint_paths) if state else []
    if state and state.model_checkpoint_path not in candidates:
      candidates.append(state.model_checkpoint_path)
    candidates = [p if os.path.isabs(p) or io_utils.has_scheme(p) else os.path.join(self.logdir, p)
                  for p in candidates]
    for prefix in reversed(candidates):
      problem = checkpoint_problem(prefix)
      if problem is None:
        try:
          self.checkpoint.restore(prefix).expect_partial()
          self.restored = self.latest = prefix
          break
        except (tf.errors.OpError, ValueError, IndexError) as e:
          problem = f"{type(e).__name__}: {str(e).strip()[:200]}"
      logging.warning("Checkpoint %s is unreadable (%s): truncated or corrupted; resuming from the "
                      "previous one.", prefix, problem)
    else:
      if candidates:
        logging.warning("No readable checkpoint in %s: starting afresh.", self.logdir)
      if self.init_fn is not None:
        self.init_fn()
    if self.chief and self.restored and candidates and self.restored != candidates[-1]:
      # Make the good checkpoint the latest again, for the manager, eval and resuming alike.
      good = candidates[:candidates.index(self.restored) + 1]
      tf.compat.v1.train.update_checkpoint_state(self.logdir, self.restored, good)
    # The manager reads the (repaired) state; it does not initialise (done above, once).
    self.manager = tf.train.CheckpointManager(
        self.checkpoint, self.directory, max_to_keep=self.options.max_to_keep,
        checkpoint_name=CHECKPOINT_NAME, step_counter=self.step)
    if self.multi_worker and self.strategy.cluster_resolver.cluster_spec().jobs:
      # Preemption of any worker: all agree on a step, checkpoint there, and stop (`run` returns).
      self.preemption = tf.distribute.experimental.PreemptionCheckpointHandler(
          self.strategy.cluster_resolver, self.manager,
          termination_config=tf.distribute.experimental.TerminationConfig(
              exit_fn=self._preempted.set))
    self._saved_step = int(self.step.numpy()) if self.restored else -1
    self._saved_time = time.time()
    return int(self.step.numpy())

  def _agree(self, *flags: bool) -> List[bool]:
    """Each flag true on any worker (one collective in multi-worker training, else the flags)."""
    if not self.multi_worker:
      return list(flags)
    if self._agree_fn is None:
      def agree(values):
        per_replica = self.strategy.run(lambda v: v, args=(values,))
        return self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
      self._agree_fn = tf.function(agree)
    return [bool(v > 0) for v in self._agree_fn(tf.constant(flags, tf.int32)).numpy()]

  def save(self, step: int) -> str:
    """Writes checkpoint `ckpt-<step>`; returns the latest chief checkpoint prefix.

    Raises:
      CheckpointWriteError: the checkpoint could not be written; its temporary files were removed.
    """
    try:
      path = self.manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, tf.errors.UnknownError, tf.errors.DataLossError,
            tf.errors.FailedPreconditionError, OSError) as e:
      raise self._write_error(step, e) from e
    self._saved_step, self._saved_time = step, time.time()
    if self.chief:
      self.latest = path
    return self.latest

  def _write_error(self, step: int, error: Exception) -> CheckpointWriteError:
    prefix = os.path.join(self.directory, f"{CHECKPOINT_NAME}-{step}")
    for leftover in tf.io.gfile.glob(prefix + "_temp*") + tf.io.gfile.glob(prefix + ".*"):
      if io_utils.isdir(leftover):
        tf.io.gfile.rmtree(leftover)
      else:
        tf.io.gfile.remove(leftover)
    previous = self.manager.latest_checkpoint
    if previous:
      needed = sum(tf.io.gfile.stat(f).length for f in checkpoint_files(previous))
    else:
      needed = sum(v.shape.num_elements() * v.dtype.size
                   for v in tf.train.TrackableView(self.checkpoint).descendants()
                   if isinstance(v, tf.Variable))
    free = _local_free_bytes(self.directory)
    first_line = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
    return CheckpointWriteError(
        f"Could not write checkpoint {prefix} ({type(error).__name__}: {first_line}): a checkpoint "
        f"needs about {needed / 2**20:.1f} MiB"
        + (f", {free / 2**20:.1f} MiB are free in {self.directory}" if free is not None else "")
        + f". Temporary files removed; the latest checkpoint is still {previous}. Free some space "
        "or point --train_logdir elsewhere, then re-run the same command to resume.")

  def _loop_size(self, step: int) -> int:
    to_save = self.options.save_interval_steps - step % self.options.save_interval_steps
    return min(self.steps_per_loop, self.total_steps - step, to_save)

  def run(self, loop_fn: Callable[[int], Dict[str, tf.Tensor]],
          learning_rate_fn: Callable[[int], float]) -> Dict[str, object]:
    """Trains from the current step to `total_steps`.

    Args:
      loop_fn: runs `n` steps and returns `TrainStep.loop`'s outputs.
      learning_rate_fn: the learning rate at an optimizer step.

    Returns:
      {"final_step", "last_loss", "interrupted", "checkpoint"}.

    Raises:
      NonFiniteLossError: a loss was NaN or Inf; nothing was saved after the last good checkpoint.
      CheckpointWriteError: see `save`.
    """
    current = start = int(self.step.numpy())
    last_loss, interrupted = float("nan"), False
    for callback in self.callbacks:
      callback.on_train_begin({"step": current})
    try:
      with contextlib.nullcontext() if self.preemption else _SigtermFlag(self.stop_event):
        while current < self.total_steps and not interrupted:
          n = self._loop_size(current)
          outputs = loop_fn(n)
          last_loss = float(outputs["loss"])
          bad_step = int(outputs["bad_step"])
          if bad_step >= 0:
            raise NonFiniteLossError(
                f"Loss is {float(outputs['bad_loss'])} at step {current + bad_step + 1}; stopped "
                f"without saving. The latest good checkpoint is {self.latest}. Lower "
                "--base_learning_rate, check the data, or use --mixed_precision=float32.")
          current += n
          logs = {"step": current, "steps": n, "total_steps": self.total_steps, "loss": last_loss,
                  "cross_entropy": float(outputs["cross_entropy"]),
                  "learning_rate": float(learning_rate_fn(current - 1))}
          logs.update({k: v for k, v in outputs.items()
                       if k not in logs and k not in ("bad_step", "bad_loss")})
          for callback in self.callbacks:
            callback.on_train_batch_end(current, logs)
          if self.preemption is not None:
            self.preemption.save_checkpoint_if_preempted(checkpoint_number=current)
            if self._preempted.is_set():  # saved at `current` by the handler
              self._saved_step, self.latest = current, self.manager.latest_checkpoint
              interrupted = True
              break
          secs = self.options.save_interval_secs
          interrupted, time_due = self._agree(
              self.stop_event.is_set(), bool(secs) and time.time() - self._saved_time >= secs)
          if (current % self.options.save_interval_steps == 0 or current == self.total_steps
              or time_due or interrupted):
            path = self.save(current)
            for callback in self.callbacks:
              if hasattr(callback, "on_checkpoint"):
                callback.on_checkpoint(current, path)
    finally:
      for callback in self.callbacks:
        callback.on_train_end({"step": current})
      if not self.chief and tf.io.gfile.exists(self.directory):
        tf.io.gfile.rmtree(self.directory)
    return {"final_step": current, "last_loss": last_loss, "interrupted": interrupted,
            "checkpoint": self.latest}
