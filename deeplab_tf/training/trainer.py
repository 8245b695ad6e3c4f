"""Training DeepLab: `train()` wires the parts of `deeplab_tf.training` together.

research/deeplab `train.py`, split the way Orbit and deeplab2 split it:
  `optimizer.py`       momentum SGD, learning-rate schedule, gradient multipliers;
  `batch_norm.py`      BN frozen or trained, its decay, synchronised across replicas;
  `initialization.py`  `tf_initial_checkpoint` for a fresh run (`train_utils.get_model_init_fn`);
  `train_step.py`      loss, gradients and update, `steps_per_loop` steps per call, XLA;
  `controller.py`      intervals, checkpoints, resume, NaN stop, SIGTERM;
  `callbacks.py`       progress bar, log line, TensorBoard summaries, validation.

On top of the original: mixed precision (Keras policies; float16 with dynamic loss scaling), a
SIGTERM handler that checkpoints before exiting, resumption at the exact step with the optimizer state
and the input position, a hard stop on a non-finite loss that keeps the last good checkpoint, and
checkpoints on any `tf.io.gfile` filesystem (`gs://`, `ram://`).
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf import model_io
from deeplab_tf.model.acceleration import apply_kernel_policy
from deeplab_tf.model.deeplab import build_deeplab, global_dtype_policy
from deeplab_tf.model.layers import mean_pixel_for_preprocessing
from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import callbacks as callbacks_lib
from deeplab_tf.training import strategy as strategy_lib
from deeplab_tf.training.batch_norm import configure_batch_norm
from deeplab_tf.training.callbacks import Progress
from deeplab_tf.training.controller import (AllLabelsIgnoredError, CheckpointMismatchError,
                                            CheckpointWriteError, Controller, NonFiniteLossError)
from deeplab_tf.training.logdir_lock import LogdirBusyError, LogdirLock
from deeplab_tf.training.initialization import initialize_from_checkpoint
from deeplab_tf.training.optimizer import build_optimizer
from deeplab_tf.training.schedules import learning_rate_schedule
from deeplab_tf.training.train_step import TrainStep

__all__ = ["train", "TrainResult", "Progress", "NonFiniteLossError", "CheckpointWriteError",
           "CheckpointMismatchError", "LogdirBusyError", "AllLabelsIgnoredError",
           "file_pattern_dataset_fn"]

DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


@dataclasses.dataclass
class TrainResult:
  """What `train` returns.

  Attributes:
    final_step: the step training stopped at (== training_number_of_steps unless interrupted).
    start_step: the step it resumed from (0 on a fresh run).
    last_loss: total loss of the last step run (NaN if none ran).
    losses: `(step, total loss)` at every logging step and at the last step.
    wall_time_seconds: time spent in `train`, seconds.
    checkpoint_path: the latest checkpoint prefix written (None if none was written).
    interrupted: stopped early by SIGTERM or `stop_event`, after writing a checkpoint.
    model: the trained Keras model (built under the strategy's scope).
    validation: `(step, {name: value})` from `validation_fn` after every checkpoint.
  """

  final_step: int
  start_step: int
  last_loss: float
  losses: List[Tuple[int, float]]
  wall_time_seconds: float
  checkpoint_path: Optional[str]
  interrupted: bool = False
  model: Optional[keras.Model] = dataclasses.field(default=None, repr=False)
  validation: List[Tuple[int, Dict[str, float]]] = dataclasses.field(default_factory=list)


def file_pattern_dataset_fn(file_pattern: str, model_options: ModelOptions,
                            train_options: TrainOptions, ignore_label: int) -> DatasetFn:
  """A `DatasetFn` over TFRecord shards through `deeplab_tf.data.pipeline.build_dataset`, with the
  encoder's mean pixel (padding becomes 0 after preprocessing) and the options' augmentation."""
  from deeplab_tf.data import pipeline  # pylint: disable=import-outside-toplevel
  from deeplab_tf.model.encoders import get_encoder  # pylint: disable=import-outside-toplevel
  mean_pixel = mean_pixel_for_preprocessing(get_encoder(model_options.model_variant).preprocessing)
  augmentation = train_options.augmentation

  def dataset_fn(input_context):
    return pipeline.build_dataset(
        file_pattern, is_training=True, crop_size=augmentation.train_crop_size,
        batch_size=train_options.solver.train_batch_size,  # global: build_dataset divides per replica
        ignore_label=ignore_label, mean_pixel=mean_pixel,
        min_scale_factor=augmentation.min_scale_factor,
        max_scale_factor=augmentation.max_scale_factor,
        scale_factor_step_size=augmentation.scale_factor_step_size,
        min_resize_value=augmentation.min_resize_value, max_resize_value=augmentation.max_resize_value,
        resize_factor=augmentation.resize_factor, keep_aspect_ratio=augmentation.keep_aspect_ratio,
        input_context=input_context, seed=train_options.execution.seed,
        num_classes=model_options.num_classes)
  return dataset_fn


def _check_options(model_options: ModelOptions, train_options: TrainOptions, num_replicas: int):
  batch, label_weights = train_options.solver.train_batch_size, train_options.loss.label_weights
  if batch % num_replicas:
    raise ValueError(f"train_batch_size={batch}: expected a multiple of the {num_replicas} replicas.")
  if label_weights is not None and len(label_weights) != model_options.num_classes:
    raise ValueError(f"label_weights={label_weights}: expected "
                     f"num_classes={model_options.num_classes} weights.")


def check_logdir_options(train_logdir: str, model_options: ModelOptions) -> None:
  """Refuses to resume in a log directory whose checkpoints are another model's.

  The cheap check, before any model is built: the `model_options.json` of a log directory that holds
  a checkpoint must equal `model_options` (resuming with other options would restore what does not
  fit, or fit silently into another architecture, and then overwrite the earlier run).

  Raises:
    CheckpointMismatchError: (a `UserError`) naming both option sets' differing fields and the ways
      out (another --train_logdir, or --tf_initial_checkpoint to fine-tune from it).
  """
  path = os.path.join(train_logdir, model_io.MODEL_OPTIONS_FILENAME)
  if tf.train.latest_checkpoint(train_logdir) is None or not tf.io.gfile.exists(path):
    return
  try:
    saved = model_io.load_model_options(path)
  except ValueError:
    return  # unreadable: the restore itself tells whether the checkpoint fits
  differences = model_io.options_difference(saved, model_options)
  if differences:
    raise CheckpointMismatchError(
        f"--train_logdir={train_logdir} holds the checkpoints of another model: its {path} differs "
        f"from the options requested ({'; '.join(differences)}, as saved -> requested). Nothing was "
        "changed. Train in another --train_logdir, resume with the saved options, or start from that "
        f"run with --tf_initial_checkpoint={train_logdir} (with --noinitialize_last_layer for another "
        "num_classes).")


def _build_model(model_options, train_options, model_fn):
  """Builds the model under the mixed-precision policy, restoring the global policy afterwards."""
  with global_dtype_policy(train_options.execution.mixed_precision):
    if model_fn is not None:
      return model_fn(model_options)
    crop = tuple(train_options.augmentation.train_crop_size)
    return build_deeplab(model_options, input_shape=crop + (3,))


def _build_training_state(strategy, model_options, train_options, model_fn):
  """`(model, optimizer, step, checkpoint)`: built under the strategy's scope, rewritten for the
  kernel policy (`execution.kernel_policy`; the checkpoint's variables do not depend on it), BN
  configured, seeded.

  The checkpoint holds the model, the optimizer, the step and `data_seed`, the seed of the input
  pipeline read from a file pattern (the options' seed, else one drawn now, so that a resumed run
  reads the same order).
  """
  if train_options.execution.seed is not None:
    keras.utils.set_random_seed(train_options.execution.seed)
  with strategy.scope():
    model = _build_model(model_options, train_options, model_fn)
    model = apply_kernel_policy(model, train_options.execution.kernel_policy, training=True)
    configure_batch_norm(model, train_options.batch_norm)
    optimizer = build_optimizer(train_options)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
  seed = train_options.execution.seed
  data_seed = tf.Variable(np.random.randint(2**31) if seed is None else seed, dtype=tf.int64,
                          trainable=False, name="data_seed")
  checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step, data_seed=data_seed)
  return model, optimizer, step, checkpoint


def _input_iterator(strategy, dataset_fn: DatasetFn, checkpoint: tf.train.Checkpoint,
                    restored: Optional[str], start_step: int, save_iterator: bool):
  """The distributed input iterator at the position of `start_step`.

  By default the pipeline skips the batches the `start_step` steps consumed (each step takes one
  batch per replica from its worker's pipeline), which resumes exactly for a deterministic
  `dataset_fn` (seeded shuffling and augmentation) and keeps tf.data's shuffle and prefetch buffers
  of decoded images out of the checkpoints (issue 11: 195 MB of 17 MB were buffers at crop 65).
  With `save_iterator` the iterator's state joins `checkpoint` instead and is read back.
  """
  if save_iterator:
    iterator = iter(strategy_lib.distribute_dataset(strategy, dataset_fn))
    checkpoint.iterator = iterator
    if restored and any(k.startswith("iterator/") for k in tf.compat.v1.train.NewCheckpointReader(
        restored).get_variable_to_shape_map()):
      tf.train.Checkpoint(iterator=iterator).read(restored).expect_partial()
    return iterator

  def resumed_dataset_fn(ctx):
    batches_per_step = ctx.num_replicas_in_sync // ctx.num_input_pipelines
    return dataset_fn(ctx).skip(start_step * batches_per_step)
  return iter(strategy_lib.distribute_dataset(strategy, resumed_dataset_fn))


def _callbacks(model, train_options, writer, log, progress, validation, extra, colormap="pascal"):
  """The log line, summaries, progress bar (if `progress`), validation (if any) and `extra`."""
  intervals = train_options.checkpointing
  chosen = [log, callbacks_lib.Summaries(writer, intervals.save_summaries_steps, colormap)]
  if progress is not None:
    chosen.append(callbacks_lib.ProgressBar(progress, intervals.log_steps))
  chosen += ([validation] if validation else []) + list(extra)
  for callback in chosen:
    callback.set_model(model)
  return chosen


def train(model_options: ModelOptions, train_options: TrainOptions,
          dataset: Union[str, DatasetFn], train_logdir: str, *,
          strategy: Optional[tf.distribute.Strategy] = None, ignore_label: int = 255,
          model_fn: Optional[Callable[[ModelOptions], keras.Model]] = None,
          progress=None, on_log: Optional[Callable[[Progress], None]] = None,
          stop_event: Optional[threading.Event] = None,
          checkpoint_input_pipeline: bool = False,
          validation_fn: Optional[Callable[[keras.Model], Mapping[str, float]]] = None,
          callbacks: Sequence[keras.callbacks.Callback] = (),
          colormap: str = "pascal") -> TrainResult:
  """Trains DeepLab, resuming from the latest readable checkpoint in `train_logdir` if there is one.

  Args:
    model_options: the architecture (written to `<train_logdir>/model_options.json`).
    train_options: how to train; `train_batch_size` is the global batch.
    dataset: a TFRecord file pattern (read through `deeplab_tf.data.pipeline.build_dataset`), or
      `dataset_fn(input_context) -> tf.data.Dataset` of dicts with "image" float32
      `[per_replica_batch, h, w, 3]` in [0, 255] and "label" int `[per_replica_batch, h, w, 1]`,
      sharded per input pipeline and batched per replica (see `strategy.distribute_dataset`),
      repeating forever.
    train_logdir: checkpoints `ckpt-N` (N = step), `model_options.json`, TensorBoard events; local,
      `gs://`, `ram://`, any `tf.io.gfile` path.
    strategy: a tf.distribute strategy (default: the default strategy). Create it before calling.
    ignore_label: label of pixels left out of the loss.
    model_fn: builds the model from `model_options` instead of `build_deeplab` (e.g. a small model to
      test the machinery); it must map `[b, h, w, 3]` to logits `[b, h', w', num_classes]`.
    progress: a tqdm-like object, advanced by the steps of every loop (`callbacks.ProgressBar`).
    on_log: called with a `Progress` every `log_steps` steps (`callbacks.LogLine`).
    stop_event: when set (or on SIGTERM), training checkpoints and returns between two loops.
    checkpoint_input_pipeline: save the input iterator (with its shuffle and prefetch buffers) in the
      checkpoints. Default False: a resumed run skips the batches already consumed, exact for a
      deterministic dataset_fn; a file pattern is read with the options' seed, or one drawn once and
      kept in the checkpoints as `data_seed`.
    validation_fn: called on the chief with the model after every checkpoint (`callbacks.Validation`).
    callbacks: more Keras callbacks (`deeplab_tf.training.callbacks` describes their logs).
    colormap: colours of the label and prediction image summaries (the dataset's colormap name).

  Returns:
    A `TrainResult`.

  The chief holds `train_logdir` with a lease (`logdir_lock`) while it trains.

  Raises:
    NonFiniteLossError: the loss, or a weight (BatchNorm statistics included) before a checkpoint,
      became NaN or Inf; nothing is saved after the last good checkpoint, and every checkpoint
      written holds finite weights.
    CheckpointMismatchError: (a `UserError`) `train_logdir` holds another model's checkpoints
      (`check_logdir_options`, or a checkpoint that reads but does not fit); nothing is changed.
    LogdirBusyError: (a `UserError`) another trainer holds `train_logdir`.
    AllLabelsIgnoredError: (a `UserError`) the first batches' whole labels hold no labelled pixel.
    CheckpointWriteError: a checkpoint could not be written (e.g. disk full); the previous one stays.
    ValueError: inconsistent options (e.g. batch not divisible by replicas), bad initial checkpoint.
    FileNotFoundError: `tf_initial_checkpoint` does not exist.
  """
  started = time.time()
  strategy = strategy or tf.distribute.get_strategy()
  _check_options(model_options, train_options, strategy.num_replicas_in_sync)
  check_logdir_options(train_logdir, model_options)
  lock = LogdirLock(train_logdir).acquire() if strategy_lib.is_chief(strategy) else None
  try:
    return _train(model_options, train_options, dataset, train_logdir, started, strategy,
                  ignore_label, model_fn, progress, on_log, stop_event, checkpoint_input_pipeline,
                  validation_fn, callbacks, colormap)
  finally:
    if lock is not None:
      lock.release()


def _train(model_options, train_options, dataset, train_logdir, started, strategy, ignore_label,
           model_fn, progress, on_log, stop_event, checkpoint_input_pipeline, validation_fn,
           callbacks, colormap) -> TrainResult:
  """`train` once the log directory is held."""
  model, optimizer, step, checkpoint = _build_training_state(strategy, model_options, train_options,
                                                             model_fn)
  chief = strategy_lib.is_chief(strategy)
  writer = tf.summary.create_file_writer(train_logdir) if chief else tf.summary.create_noop_writer()
  log = callbacks_lib.LogLine(train_options.checkpointing.log_steps, on_log)
  validation = callbacks_lib.Validation(validation_fn, writer) if validation_fn and chief else None

  def build_with_classes(num_classes):  # the checkpoint's model, to fine-tune to other classes
    return _build_model(model_options.replace(num_classes=num_classes), train_options, model_fn)
  init_fn = (lambda: initialize_from_checkpoint(model, train_options.initialization,
                                                build_with_classes)) if (
      train_options.initialization.tf_initial_checkpoint) else None
  controller = Controller(
      strategy=strategy, checkpoint=checkpoint, step=step, logdir=train_logdir,
      options=train_options.checkpointing, total_steps=train_options.solver.training_number_of_steps,
      steps_per_loop=train_options.execution.steps_per_loop, init_fn=init_fn,
      callbacks=_callbacks(model, train_options, writer, log, progress, validation, callbacks,
                           colormap),
      stop_event=stop_event, weights=model.weights, ignore_label=ignore_label)
  start_step = controller.restore_or_initialize()
  if chief:
    model_io.save_model_options(train_logdir, model_options)
  if isinstance(dataset, str):
    dataset = file_pattern_dataset_fn(dataset, model_options, train_options.replace(
        seed=int(checkpoint.data_seed.numpy())), ignore_label)
  iterator = _input_iterator(strategy, dataset, checkpoint, controller.restored, start_step,
                             checkpoint_input_pipeline)
  train_step = TrainStep(model, optimizer, strategy, train_options,
                         num_classes=model_options.num_classes, ignore_label=ignore_label, step=step)
  schedule = learning_rate_schedule(train_options.solver)
  outcome = controller.run(lambda n: train_step.loop(iterator, tf.constant(n, tf.int32)),
                           lambda s: float(schedule(s)))
  return TrainResult(final_step=outcome["final_step"], start_step=start_step,
                     last_loss=outcome["last_loss"], losses=log.history,
                     wall_time_seconds=time.time() - started, checkpoint_path=outcome["checkpoint"],
                     interrupted=outcome["interrupted"], model=model,
                     validation=validation.results if validation else [])
