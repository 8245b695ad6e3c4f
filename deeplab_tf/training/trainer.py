"""The DeepLab training loop: a custom loop under a tf.distribute strategy.

research/deeplab `train.py`: momentum SGD (0.9) on softmax cross-entropy + L2 weight decay, the
learning-rate policies of `schedules.py`, gradient multipliers (2x on biases, `last_layer_gradient_
multiplier` on the last layers: `train_utils.get_model_gradient_multipliers`), BN trained or frozen
(`fine_tune_batch_norm`), initialisation from `tf_initial_checkpoint` only when the log directory
holds no checkpoint yet (`train_utils.get_model_init_fn`). Multi-replica training follows the
original's clones: each replica's loss is normalised over its own pixels and the gradients averaged.

On top of the original: mixed precision (Keras policies; float16 with dynamic loss scaling), a
SIGTERM handler that checkpoints before exiting, resumption at the exact step with the optimizer state
and the input iterator position, and a hard stop on a non-finite loss that keeps the last good
checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import os
import shutil
import signal
import threading
import time
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import keras
import numpy as np
import tensorflow as tf

from deeplab_tf.model.deeplab import build_deeplab
from deeplab_tf.model.layers import kernel_variables, layer_name_to_scope, mean_pixel_for_preprocessing
from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import losses, strategy as strategy_lib
from deeplab_tf.training.schedules import learning_rate_schedule

CHECKPOINT_NAME = "ckpt"
# research/deeplab `model.get_extra_layer_scopes`: what "last layers" means for fine-tuning.
LOGITS_SCOPE = "logits"
EXTRA_LAYER_SCOPES = (LOGITS_SCOPE, "image_pooling", "aspp", "concat_projection", "decoder",
                      "meta_architecture")

DatasetFn = Callable[[tf.distribute.InputContext], tf.data.Dataset]


class NonFiniteLossError(FloatingPointError):
  """The loss became NaN or Inf; the last good checkpoint is left as the latest one."""


@dataclasses.dataclass(frozen=True)
class Progress:
  """What `on_log` receives every `log_steps` steps.

  Attributes:
    step: optimizer steps done so far (global, across restarts).
    total_steps: `training_number_of_steps`.
    loss: total loss of the last step (cross-entropy + weight decay), float.
    learning_rate: the learning rate of the last step.
    steps_per_sec: steps per second over the last logging interval.
    eta_seconds: remaining steps / `steps_per_sec`.
    cross_entropy: the loss without weight decay (the part that measures the fit), float.
  """

  step: int
  total_steps: int
  loss: float
  learning_rate: float
  steps_per_sec: float
  eta_seconds: float
  cross_entropy: float = float("nan")


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


def last_layer_scopes(last_layers_contain_logits_only: bool) -> Tuple[str, ...]:
  """The scopes of the "last layers" (`model.get_extra_layer_scopes`)."""
  return (LOGITS_SCOPE,) if last_layers_contain_logits_only else EXTRA_LAYER_SCOPES


def _is_last_layer(layer_name: str, scopes: Sequence[str]) -> bool:
  # The original matches scope names as substrings of variable names.
  scope = layer_name_to_scope(layer_name)
  return any(s in scope for s in scopes)


def gradient_multipliers(model: keras.Model, options: TrainOptions) -> List[float]:
  """One multiplier per `model.trainable_variables` (`train_utils.get_model_gradient_multipliers`).

  Biases get 2, last-layer variables `last_layer_gradient_multiplier` and last-layer biases twice
  that; everything else 1.
  """
  scopes = last_layer_scopes(options.last_layers_contain_logits_only)
  by_id = {}
  for layer in strategy_lib._all_layers(model):
    bias = getattr(layer, "bias", None)
    last = _is_last_layer(layer.name, scopes)
    for var in layer.trainable_weights:
      multiplier = options.last_layer_gradient_multiplier if last else 1.0
      if bias is not None and var is bias:
        multiplier *= 2.0
      by_id.setdefault(id(var), multiplier)
  return [by_id.get(id(v), 1.0) for v in model.trainable_variables]


def _last_layer_variables(model: keras.Model, options: TrainOptions):
  scopes = last_layer_scopes(options.last_layers_contain_logits_only)
  return [v for layer in strategy_lib._all_layers(model) if _is_last_layer(layer.name, scopes)
          for v in layer.weights]


def initialize_from_checkpoint(model: keras.Model, options: TrainOptions) -> str:
  """Loads `options.tf_initial_checkpoint` into `model`; returns the kind loaded.

  Kinds: 'keras' (`.keras` / `.weights.h5`, layers matched by Keras; shape mismatches skipped when
  `initialize_last_layer` is False), 'tf2' (one of our checkpoints: prefix or log directory,
  `model=` restored), 'tf1' (a research/deeplab model-zoo checkpoint, through
  `deeplab_tf.checkpoints.load_tf1_checkpoint`). With `initialize_last_layer=False` the last layers
  keep their fresh initialisation.

  Raises:
    FileNotFoundError: nothing at `tf_initial_checkpoint`.
    ValueError: the checkpoint does not fit the model.
  """
  path = options.tf_initial_checkpoint
  keep = [] if options.initialize_last_layer else [
      (v, np.array(v.numpy())) for v in _last_layer_variables(model, options)]
  if path.endswith((".keras", ".weights.h5", ".h5")):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--tf_initial_checkpoint={path}: no such file.")
    model.load_weights(path, skip_mismatch=not options.initialize_last_layer)
    kind = "keras"
  else:
    prefix = tf.train.latest_checkpoint(path) if os.path.isdir(path) else path
    if prefix is None or not tf.io.gfile.exists(prefix + ".index"):
      raise FileNotFoundError(f"--tf_initial_checkpoint={path}: not a checkpoint prefix or a "
                              "directory holding one.")
    reader = tf.train.load_checkpoint(prefix)
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


def file_pattern_dataset_fn(file_pattern: str, model_options: ModelOptions,
                            train_options: TrainOptions, ignore_label: int) -> DatasetFn:
  """A `DatasetFn` over TFRecord shards through `deeplab_tf.data.pipeline.build_dataset`, with the
  encoder's mean pixel (padding becomes 0 after preprocessing) and the options' augmentation."""
  from deeplab_tf.data import pipeline  # pylint: disable=import-outside-toplevel
  from deeplab_tf.model.encoders import get_encoder  # pylint: disable=import-outside-toplevel
  mean_pixel = mean_pixel_for_preprocessing(get_encoder(model_options.model_variant).preprocessing)

  def dataset_fn(input_context):
    return pipeline.build_dataset(
        file_pattern, is_training=True, crop_size=train_options.train_crop_size,
        batch_size=train_options.train_batch_size,  # global: build_dataset divides per replica
        ignore_label=ignore_label, mean_pixel=mean_pixel,
        min_scale_factor=train_options.min_scale_factor,
        max_scale_factor=train_options.max_scale_factor,
        scale_factor_step_size=train_options.scale_factor_step_size,
        min_resize_value=train_options.min_resize_value, max_resize_value=train_options.max_resize_value,
        resize_factor=train_options.resize_factor, keep_aspect_ratio=train_options.keep_aspect_ratio,
        input_context=input_context, seed=train_options.seed,
        num_classes=model_options.num_classes)
  return dataset_fn


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


def _build_model(model_options, train_options, model_fn):
  """Builds the model under the mixed-precision policy, restoring the global policy afterwards."""
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(train_options.mixed_precision)
  try:
    if model_fn is not None:
      return model_fn(model_options)
    crop = tuple(train_options.train_crop_size)
    return build_deeplab(model_options, input_shape=crop + (3,))
  finally:
    keras.mixed_precision.set_global_policy(previous)


def _label_summary(labels, num_classes):
  """uint8 `[b, h, w, 1]` image of class ids spread over [0, 255] (the original's pixel scaling)."""
  scaling = max(1, 255 // num_classes)
  return tf.cast(tf.cast(labels, tf.int32) * scaling, tf.uint8)


def train(model_options: ModelOptions, train_options: TrainOptions,
          dataset: Union[str, DatasetFn], train_logdir: str, *,
          strategy: Optional[tf.distribute.Strategy] = None, ignore_label: int = 255,
          model_fn: Optional[Callable[[ModelOptions], keras.Model]] = None,
          progress=None, on_log: Optional[Callable[[Progress], None]] = None,
          stop_event: Optional[threading.Event] = None,
          checkpoint_input_pipeline: Optional[bool] = None,
          validation_fn: Optional[Callable[[keras.Model], Mapping[str, float]]] = None
          ) -> TrainResult:
  """Trains DeepLab, resuming from the latest checkpoint in `train_logdir` if there is one.

  Args:
    model_options: the architecture (written to `<train_logdir>/model_options.json`).
    train_options: how to train; `train_batch_size` is the global batch.
    dataset: a TFRecord file pattern (read through `deeplab_tf.data.pipeline.build_dataset`), or
      `dataset_fn(input_context) -> tf.data.Dataset` of dicts with "image" float32
      `[per_replica_batch, h, w, 3]` in [0, 255] and "label" int `[per_replica_batch, h, w, 1]`,
      sharded per input pipeline and batched per replica (see `strategy.distribute_dataset`),
      repeating forever.
    train_logdir: checkpoints `ckpt-N` (N = step), `model_options.json` and TensorBoard events.
    strategy: a tf.distribute strategy (default: the default strategy). Create it before calling.
    ignore_label: label of pixels left out of the loss.
    model_fn: builds the model from `model_options` instead of `build_deeplab` (e.g. a small model to
      test the machinery); it must map `[b, h, w, 3]` to logits `[b, h', w', num_classes]`.
    progress: a tqdm-like object; `progress.update(1)` is called after every step.
    on_log: called with a `Progress` every `log_steps` steps.
    stop_event: when set (or on SIGTERM), training checkpoints and returns between two steps.
    checkpoint_input_pipeline: save the input iterator in the checkpoints, so that a resumed run
      reads on where it stopped. Default: True except with multi-worker training, where each worker
      instead skips the batches already consumed (exact only for a deterministic dataset_fn).
    validation_fn: called on the chief with the model after every checkpoint (and at the end); its
      values (e.g. {"miou": 0.61}) are written as TensorBoard scalars `validation/<name>` at that step
      and kept in `TrainResult.validation`. The binary's `--validation_split` evaluates mIoU on a
      validation subset this way.

  Returns:
    A `TrainResult`.

  Raises:
    NonFiniteLossError: the loss became NaN or Inf; nothing is saved after the last good checkpoint.
    ValueError: inconsistent options (e.g. batch not divisible by the replicas), a bad initial
      checkpoint.
    FileNotFoundError: `tf_initial_checkpoint` does not exist.
  """
  started = time.time()
  strategy = strategy or tf.distribute.get_strategy()
  num_replicas = strategy.num_replicas_in_sync
  if train_options.train_batch_size % num_replicas:
    raise ValueError(f"train_batch_size={train_options.train_batch_size}: expected a multiple of the "
                     f"{num_replicas} replicas.")
  if train_options.label_weights is not None and len(train_options.label_weights) != (
      model_options.num_classes):
    raise ValueError(f"label_weights={train_options.label_weights}: expected "
                     f"num_classes={model_options.num_classes} weights.")
  chief = strategy_lib.is_chief(strategy)
  multi_worker = isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
  if checkpoint_input_pipeline is None:
    checkpoint_input_pipeline = not multi_worker
  # Non-chief workers take part in saving (it may need collectives) but write to a scratch folder.
  ckpt_dir = train_logdir if chief else os.path.join(
      train_logdir, f".worker_{strategy_lib.worker_id(strategy)}_tmp")
  os.makedirs(ckpt_dir, exist_ok=True)
  if isinstance(dataset, str):
    dataset = file_pattern_dataset_fn(dataset, model_options, train_options, ignore_label)

  if train_options.seed is not None:
    keras.utils.set_random_seed(train_options.seed)
  with strategy.scope():
    model = _build_model(model_options, train_options, model_fn)
    if not train_options.fine_tune_batch_norm:
      strategy_lib.freeze_batch_norm(model)
    if train_options.sync_batch_norm:
      strategy_lib.set_batch_norm_synchronized(model, True)
    if train_options.batch_norm_decay_override is not None:
      strategy_lib.set_batch_norm_decay(model, train_options.batch_norm_decay_override)
    schedule = learning_rate_schedule(train_options)
    optimizer = MomentumOptimizer(learning_rate=schedule, momentum=train_options.momentum)
    if train_options.mixed_precision == "mixed_float16":
      optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")

  manager_ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step)
  manager = tf.train.CheckpointManager(manager_ckpt, ckpt_dir, max_to_keep=train_options.max_to_keep,
                                       checkpoint_name=CHECKPOINT_NAME)
  # Every worker restores from the chief's folder.
  latest = tf.train.latest_checkpoint(train_logdir)
  if latest:
    # The iterator is restored separately below, once it exists.
    manager_ckpt.restore(latest).expect_partial()
  elif train_options.tf_initial_checkpoint:
    initialize_from_checkpoint(model, train_options)
  start_step = int(step.numpy())
  if chief:
    from deeplab_tf import model_io  # pylint: disable=import-outside-toplevel
    model_io.save_model_options(train_logdir, model_options)

  if checkpoint_input_pipeline:
    distributed = strategy_lib.distribute_dataset(strategy, dataset)
  else:
    distributed = strategy_lib.distribute_dataset(
        strategy, lambda ctx: dataset(ctx).skip(start_step))
  iterator = iter(distributed)
  if checkpoint_input_pipeline:
    manager_ckpt.iterator = iterator
    if latest:
      reader = tf.train.load_checkpoint(latest)
      if any(k.startswith("iterator/") for k in reader.get_variable_to_shape_map()):
        tf.train.Checkpoint(iterator=iterator).read(latest).expect_partial()

  trainable = model.trainable_variables
  multipliers = gradient_multipliers(model, train_options)
  kernels = kernel_variables(model)
  use_multipliers = any(m != 1.0 for m in multipliers)
  loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
  want_images = train_options.save_summaries_images

  def step_fn(batch, global_step):
    images, labels = batch["image"], batch["label"]
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      cross_entropy = losses.softmax_cross_entropy_loss(
          logits, labels, num_classes=model_options.num_classes, ignore_label=ignore_label,
          class_weights=train_options.label_weights,
          upsample_logits=train_options.upsample_logits,
          top_k_percent_pixels=train_options.top_k_percent_pixels,
          hard_example_mining_step=train_options.hard_example_mining_step, step=global_step)
      regularization = losses.l2_weight_decay(kernels, train_options.weight_decay)
      total = cross_entropy + regularization
      # Gradients are summed across replicas by the optimizer: average like the original's clones.
      scaled = total / num_replicas
      if loss_scaling:
        scaled = optimizer.scale_loss(scaled)
    grads = tape.gradient(scaled, trainable)
    if use_multipliers:
      grads = [g if g is None or m == 1.0 else g * m for g, m in zip(grads, multipliers)]
    optimizer.apply_gradients(zip(grads, trainable))
    outputs = {"loss": total, "cross_entropy": cross_entropy}
    if want_images:
      outputs["image"] = tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8)
      outputs["label"] = _label_summary(tf.where(labels == ignore_label, 0, labels),
                                        model_options.num_classes)
      prediction = tf.argmax(logits, axis=-1, output_type=tf.int32)[..., tf.newaxis]
      outputs["prediction"] = _label_summary(prediction, model_options.num_classes)
    return outputs

  @tf.function
  def train_step(iterator):
    per_replica = strategy.run(step_fn, args=(next(iterator), step))
    reduced = {k: strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica[k], axis=None)
               for k in ("loss", "cross_entropy")}
    if want_images:
      for k in ("image", "label", "prediction"):
        reduced[k] = strategy.experimental_local_results(per_replica[k])[0]
    step.assign_add(1)
    return reduced

  writer = (tf.summary.create_file_writer(train_logdir) if chief
            else tf.summary.create_noop_writer())
  stop_event = stop_event or threading.Event()
  total_steps = train_options.training_number_of_steps
  history: List[Tuple[int, float]] = []
  last_loss = float("nan")
  saved_path = latest
  saved_step = start_step if latest else -1
  interrupted = False
  current = start_step
  interval_start, interval_step = time.time(), current

  validation: List[Tuple[int, Dict[str, float]]] = []

  def save():
    nonlocal saved_path, saved_step
    path = manager.save(checkpoint_number=current)
    saved_path, saved_step = (path if chief else saved_path), current
    if chief and validation_fn is not None:
      values = {k: float(v) for k, v in validation_fn(model).items()}
      validation.append((current, values))
      for name, value in values.items():
        tf.summary.scalar(f"validation/{name}", value, step=current)

  try:
    with _SigtermFlag(stop_event), writer.as_default():
      while current < total_steps:
        if stop_event.is_set():
          interrupted = True
          break
        outputs = train_step(iterator)
        last_loss = float(outputs["loss"])
        if not math.isfinite(last_loss):
          raise NonFiniteLossError(
              f"Loss is {last_loss} at step {current + 1} (cross-entropy "
              f"{float(outputs['cross_entropy'])}); stopped without saving. The latest good "
              f"checkpoint is {saved_path}. Lower --base_learning_rate, check the data, or use "
              "--mixed_precision=float32.")
        current += 1
        if progress is not None:
          progress.update(1)
        learning_rate = float(schedule(current - 1))
        if current % train_options.save_summaries_steps == 0 or current == total_steps:
          tf.summary.scalar("total_loss", last_loss, step=current)
          tf.summary.scalar("cross_entropy", float(outputs["cross_entropy"]), step=current)
          tf.summary.scalar("learning_rate", learning_rate, step=current)
          if want_images:
            for k in ("image", "label", "prediction"):
              tf.summary.image(f"samples/{k}", outputs[k], step=current, max_outputs=2)
        if current % train_options.log_steps == 0 or current == total_steps:
          history.append((current, last_loss))
          now = time.time()
          rate = (current - interval_step) / max(now - interval_start, 1e-9)
          interval_start, interval_step = now, current
          if on_log is not None:
            on_log(Progress(current, total_steps, last_loss, learning_rate, rate,
                            (total_steps - current) / max(rate, 1e-9),
                            cross_entropy=float(outputs["cross_entropy"])))
        if current % train_options.save_interval_steps == 0:
          save()
      if saved_step != current and current > start_step:
        save()
  finally:
    writer.flush()
    if not chief:
      shutil.rmtree(ckpt_dir, ignore_errors=True)
  if current > start_step and (not history or history[-1][0] != current):
    history.append((current, last_loss))
  return TrainResult(final_step=current, start_step=start_step, last_loss=last_loss,
                     losses=history, wall_time_seconds=time.time() - started,
                     checkpoint_path=saved_path, interrupted=interrupted, model=model,
                     validation=validation)
