"""One DeepLab optimizer step, and loops of them inside one `tf.function` call.

The step (research/deeplab `train.py`): softmax cross-entropy (`deeplab_tf.training.losses`) + slim
L2 weight decay, gradients scaled by the gradient multipliers, one optimizer update. Each replica's
loss is normalised over its own pixels and divided by the number of replicas, so that the summed
gradients are the average over the original's clones.

`TrainStep.loop(iterator, num_steps)` runs `num_steps` steps in one call (a `tf.range` loop over the
distributed iterator, Orbit's `steps_per_loop`): the host waits for the device only at the loop's end,
where it gets the last step's losses and whether every step's loss was finite. With `jit_compile` the
per-replica forward, loss and gradients are compiled by XLA; the update (which all-reduces gradients
across replicas) stays outside the compiled cluster so that every strategy can run it.
"""

from __future__ import annotations

from typing import Dict

import keras
import tensorflow as tf

from deeplab_tf.model.layers import kernel_variables
from deeplab_tf.options import TrainOptions
from deeplab_tf.training import losses
from deeplab_tf.training.optimizer import gradient_multipliers

IMAGE_KEYS = ("image", "label", "prediction")


class TrainStep:
  """The training computation of one model, optimizer and strategy.

  Args:
    model: the Keras model (built under `strategy.scope()`), mapping float32 images
      `[batch, h, w, 3]` in [0, 255] to logits `[batch, h', w', num_classes]`.
    optimizer: its optimizer (built for `model.trainable_variables`).
    strategy: the tf.distribute strategy.
    options: the training options (loss, solver multipliers, jit_compile, image summaries).
    num_classes: number of classes.
    ignore_label: label of pixels left out of the loss.
    step: the int64 optimizer-step variable, incremented after every update.
  """

  def __init__(self, model: keras.Model, optimizer: keras.optimizers.Optimizer,
               strategy: tf.distribute.Strategy, options: TrainOptions, *, num_classes: int,
               ignore_label: int, step: tf.Variable):
    self.model, self.optimizer, self.strategy, self.step = model, optimizer, strategy, step
    self.options, self.num_classes, self.ignore_label = options, num_classes, ignore_label
    self.trainable = model.trainable_variables
    self.kernels = kernel_variables(model)
    self.multipliers = gradient_multipliers(model, options)
    self.want_images = options.checkpointing.save_summaries_images
    self._gradients = tf.function(self.gradients, jit_compile=True) if (
        options.execution.jit_compile) else self.gradients
    self.loop = tf.function(self._loop)

  def gradients(self, images, labels, global_step):
    """Per-replica loss and gradients: `(gradients, total loss, cross-entropy, logits)`."""
    loss_options = self.options.loss
    loss_scaling = isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer)
    with tf.GradientTape() as tape:
      logits = self.model(images, training=True)
      cross_entropy = losses.softmax_cross_entropy_loss(
          logits, labels, num_classes=self.num_classes, ignore_label=self.ignore_label,
          class_weights=loss_options.label_weights, upsample_logits=loss_options.upsample_logits,
          top_k_percent_pixels=loss_options.top_k_percent_pixels,
          hard_example_mining_step=loss_options.hard_example_mining_step, step=global_step)
      total = cross_entropy + losses.l2_weight_decay(self.kernels, self.options.solver.weight_decay)
      scaled = total / self.strategy.num_replicas_in_sync
      if loss_scaling:
        scaled = self.optimizer.scale_loss(scaled)
    grads = tape.gradient(scaled, self.trainable)
    grads = [g if g is None or m == 1.0 else g * m for g, m in zip(grads, self.multipliers)]
    return grads, total, cross_entropy, logits

  def replica_step(self, batch, global_step) -> Dict[str, tf.Tensor]:
    """One update on this replica's batch; returns its losses (and summary images if asked)."""
    images, labels = batch["image"], batch["label"]
    grads, total, cross_entropy, logits = self._gradients(images, labels, global_step)
    self.optimizer.apply_gradients(zip(grads, self.trainable))
    outputs = {"loss": total, "cross_entropy": cross_entropy}
    # Labelled pixels of the crops, and examples whose whole label (before cropping; the pipeline's
    # "labelled_pixels") holds any: the controller warns about / refuses all-ignore batches.
    labelled = tf.reduce_sum(tf.cast(tf.not_equal(labels, self.ignore_label), tf.int32))
    outputs["labelled_pixels"] = labelled
    outputs["labelled_examples"] = (
        tf.reduce_sum(tf.cast(batch["labelled_pixels"] > 0, tf.int32)) if "labelled_pixels" in batch
        else tf.cast(labelled > 0, tf.int32))
    if self.want_images:
      outputs["image"] = tf.cast(tf.clip_by_value(images, 0, 255), tf.uint8)
      # Class ids (the label's ignore_label kept): `callbacks.Summaries` colours them with the colormap.
      outputs["label"] = tf.cast(labels, tf.int32)
      outputs["prediction"] = tf.argmax(logits, axis=-1, output_type=tf.int32)[..., tf.newaxis]
    return outputs

  def _step(self, iterator) -> Dict[str, tf.Tensor]:
    per_replica = self.strategy.run(self.replica_step, args=(next(iterator), self.step))
    reduced = {k: self.strategy.reduce(tf.distribute.ReduceOp.MEAN, per_replica[k], axis=None)
               for k in ("loss", "cross_entropy")}
    reduced.update({k: self.strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica[k], axis=None)
                    for k in ("labelled_pixels", "labelled_examples")})
    if self.want_images:
      for k in IMAGE_KEYS:
        reduced[k] = self.strategy.experimental_local_results(per_replica[k])[0]
    self.step.assign_add(1)
    return reduced

  def _loop(self, iterator, num_steps) -> Dict[str, tf.Tensor]:
    """`num_steps` (int32 tensor >= 1) steps; the last step's outputs, plus "bad_step": the index in
    [0, num_steps) of the first step whose loss was not finite, -1 if none, and "bad_loss" its loss;
    "unlabelled_batches": the steps whose (global) batch held no labelled pixel in its crops;
    "labelled_examples": the examples of all the steps whose whole label held any."""
    bad_step = tf.constant(-1, tf.int32)
    bad_loss = tf.constant(0.0, tf.float32)
    unlabelled = tf.constant(0, tf.int32)
    examples = tf.constant(0, tf.int32)
    for i in tf.range(num_steps - 1):
      outputs = self._step(iterator)
      bad = tf.logical_and(bad_step < 0, tf.logical_not(tf.math.is_finite(outputs["loss"])))
      bad_step = tf.where(bad, i, bad_step)
      bad_loss = tf.where(bad, outputs["loss"], bad_loss)
      unlabelled += tf.cast(outputs["labelled_pixels"] == 0, tf.int32)
      examples += outputs["labelled_examples"]
    outputs = self._step(iterator)
    bad = tf.logical_and(bad_step < 0, tf.logical_not(tf.math.is_finite(outputs["loss"])))
    outputs["bad_step"] = tf.where(bad, num_steps - 1, bad_step)
    outputs["bad_loss"] = tf.where(bad, outputs["loss"], bad_loss)
    outputs["unlabelled_batches"] = unlabelled + tf.cast(outputs["labelled_pixels"] == 0, tf.int32)
    outputs["labelled_examples"] = examples + outputs["labelled_examples"]
    del outputs["labelled_pixels"]
    return outputs
