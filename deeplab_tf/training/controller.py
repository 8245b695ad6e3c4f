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
the chief makes the restored one the latest again. A checkpoint that reads back but does not fit the
model (another run's architecture or num_classes) is refused with `CheckpointMismatchError`, never
skipped: skipping it would overwrite that run. With no usable checkpoint `init_fn` (e.g.
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

from deeplab_tf import io_utils, model_io
from deeplab_tf.errors import UserError
from deeplab_tf.options import CheckpointOptions
from deeplab_tf.training import strategy as strategy_lib

CHECKPOINT_NAME = "ckpt"


class NonFiniteLossError(FloatingPointError):
  """The loss, or a weight before a checkpoint, became NaN or Inf; the last good checkpoint is left
  as the latest one (every checkpoint written holds finite weights and BatchNorm statistics)."""


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


checkpoint_problem = model_io.checkpoint_problem
CheckpointMismatchError = model_io.CheckpointMismatchError

# A run whose first this many steps carry no labelled pixel in their whole labels is refused.
ALL_IGNORED_STEPS = 10


class AllLabelsIgnoredError(UserError):
  """The split's labels hold no pixel other than ignore_label: the loss is 0 and nothing is learnt."""


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
    weights: the model's variables (BatchNorm statistics included), checked to be finite before every
      checkpoint: a diverging run (a loss still finite, 4.7e33, over inf BN variances) is stopped
      before a non-finite checkpoint is written.
    ignore_label: named in the messages about batches with no labelled pixel.
  """

  def __init__(self, *, strategy: tf.distribute.Strategy, checkpoint: tf.train.Checkpoint,
               step: tf.Variable, logdir: str, options: CheckpointOptions, total_steps: int,
               steps_per_loop: int = 1, init_fn: Optional[Callable[[], None]] = None,
               callbacks: Sequence[keras.callbacks.Callback] = (),
               stop_event: Optional[threading.Event] = None,
               weights: Sequence[tf.Variable] = (), ignore_label: Optional[int] = None):
    self.strategy, self.checkpoint, self.step, self.logdir = strategy, checkpoint, step, logdir
    self.options, self.total_steps, self.steps_per_loop = options, total_steps, steps_per_loop
    self.init_fn, self.callbacks = init_fn, list(callbacks)
    self.weights = list(weights)
    self.ignore_label = ignore_label
    self._warned_unlabelled = False
    self._labelled_seen = False
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
        # It reads back completely: if it does not fit the model it is another run's (another
        # model_variant or num_classes), not a corrupt one. Refused: falling back or starting afresh
        # would overwrite that run's checkpoints.
        mismatch = None
        with model_io.quiet_tf_warnings():
          try:
            self.checkpoint.restore(prefix).expect_partial().assert_existing_objects_matched()
          except (ValueError, AssertionError, tf.errors.InvalidArgumentError) as e:
            mismatch = " ".join(str(e).split())[:240]
          except (tf.errors.OpError, IndexError) as e:
            problem = f"{type(e).__name__}: {str(e).strip()[:200]}"
        if mismatch is not None:  # raised out of the `except`, see model_io.restore_model
          model_io.silence_failed_restores()
          raise CheckpointMismatchError(
              f"--train_logdir={self.logdir} holds checkpoint {prefix}, which does not fit the model "
              f"requested ({mismatch}): it is another run's. Train in another --train_logdir, or "
              f"start from it with --tf_initial_checkpoint={prefix} (and --noinitialize_last_layer "
              "for another num_classes).")
        if problem is None:
          self.restored = self.latest = prefix
          break
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
      NonFiniteLossError: a weight is NaN or Inf: nothing written (every checkpoint is finite).
      CheckpointWriteError: the checkpoint could not be written; its temporary files were removed.
    """
    bad = model_io.non_finite_weights(self.weights)
    if bad:
      raise NonFiniteLossError(
          f"{len(bad)} of the model's {len(self.weights)} weight tensors hold NaN or Inf at step "
          f"{step} (first: {', '.join(bad[:3])}) although the loss is finite; stopped without saving. "
          f"{self._latest_good()} Lower --base_learning_rate, check the data, or use "
          "--mixed_precision=float32.")
    try:
      path = self.manager.save(checkpoint_number=step)
    except (tf.errors.ResourceExhaustedError, tf.errors.UnknownError, tf.errors.DataLossError,
            tf.errors.FailedPreconditionError, OSError) as e:
      raise self._write_error(step, e) from e
    self._saved_step, self._saved_time = step, time.time()
    if self.chief:
      self.latest = path
    return self.latest

  def _latest_good(self) -> str:
    if self.latest:
      return f"The latest good checkpoint is {self.latest}."
    return "No checkpoint was written by this run."

  def _check_labelled(self, outputs, start: int, current: int):
    """Warns once per run when a batch (its crop) holds no labelled pixel; refuses a split whose
    whole labels hold none in the first `ALL_IGNORED_STEPS` steps (see `TrainStep`'s outputs)."""
    ignore = f"ignore_label={self.ignore_label}" if self.ignore_label is not None else "ignore_label"
    empty = int(outputs.get("unlabelled_batches", 0))
    if empty and not self._warned_unlabelled:
      self._warned_unlabelled = True
      logging.warning("%d of the batches up to step %d carry no labelled pixel (all %s): their "
                      "cross-entropy is 0 and they teach nothing. Check the labels and ignore_label "
                      "if this keeps happening (warned once per run).", empty, current, ignore)
    if int(outputs.get("labelled_examples", 1)) > 0:
      self._labelled_seen = True
    if not self._labelled_seen and current - start >= min(ALL_IGNORED_STEPS, self.total_steps - start):
      raise AllLabelsIgnoredError(
          f"The first {current - start} training batches hold no pixel other than {ignore} in their "
          "whole labels: the split has no labelled pixel (the loss would be 0.0 at every step). Check "
          f"that the label PNGs hold class ids, and the dataset's ignore_label. Stopped at step "
          f"{current}.")

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
      NonFiniteLossError: a loss, or a weight before a checkpoint, was NaN or Inf; nothing was saved
        after the last good checkpoint.
      AllLabelsIgnoredError: the first batches' whole labels hold no labelled pixel.
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
                f"without saving. {self._latest_good()} Lower "
                "--base_learning_rate, check the data, or use --mixed_precision=float32.")
          current += n
          self._check_labelled(outputs, start, current)
          logs = {"step": current, "steps": n, "total_steps": self.total_steps, "loss": last_loss,
                  "cross_entropy": float(outputs["cross_entropy"]),
                  "learning_rate": float(learning_rate_fn(current - 1))}
          logs.update({k: v for k, v in outputs.items()
                       if k not in logs and k not in ("bad_step", "bad_loss", "unlabelled_batches",
                                                      "labelled_examples")})
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
