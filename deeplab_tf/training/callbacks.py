"""Keras callbacks of the training loop: progress bar, log line, TensorBoard summaries, validation.

The controller (`deeplab_tf.training.controller`) calls `on_train_begin`, then
`on_train_batch_end(step, logs)` at the end of every loop of steps (one step, or `steps_per_loop`),
then `on_train_end`; after every checkpoint it calls `on_checkpoint(step, prefix)` of the callbacks
that have one (`Validation`). `logs` holds:
  "step": optimizer steps done (global, across restarts); "steps": steps run by this loop;
  "total_steps"; "loss" (total loss of the loop's last step, float); "cross_entropy";
  "learning_rate" (of the last step);
  "image": uint8 `[b, h, w, 3]`, "label", "prediction": int32 `[b, h, w, 1]` class ids (the label's
  ignore pixels keep `ignore_label`): the last step's samples, if image summaries are asked for.
An interval of N steps fires when a loop ends at or crosses a multiple of N, and at the last step.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import keras
import tensorflow as tf

from deeplab_tf.data.colormaps import get_colormap
from deeplab_tf.training.train_step import IMAGE_KEYS

# Samples of a batch written as TensorBoard images at every summary step.
MAX_SUMMARY_IMAGES = 2


def crossed(step: int, steps: int, every: int, total_steps: int) -> bool:
  """Whether the loop of `steps` steps ending at `step` reached a multiple of `every`, or the end."""
  return step // every > (step - steps) // every or step == total_steps


@dataclasses.dataclass(frozen=True)
class Progress:
  """What `LogLine`'s function receives every `log_steps` steps.

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


class LogLine(keras.callbacks.Callback):
  """Every `log_steps` steps: a `Progress` to `on_log` (if given) and `(step, loss)` to `history`,
  which also gets the last step run."""

  def __init__(self, log_steps: int, on_log: Optional[Callable[[Progress], None]] = None):
    super().__init__()
    self.log_steps, self.on_log = log_steps, on_log
    self.history: List[Tuple[int, float]] = []
    self._since = (time.time(), 0)
    self._last: Optional[Tuple[int, float]] = None

  def on_train_begin(self, logs=None):
    self._since = (time.time(), logs["step"])

  def on_train_end(self, logs=None):
    if self._last is not None and (not self.history or self.history[-1] != self._last):
      self.history.append(self._last)

  def on_train_batch_end(self, batch, logs=None):
    self._last = (batch, logs["loss"])
    if not crossed(batch, logs["steps"], self.log_steps, logs["total_steps"]):
      return
    self.history.append((batch, logs["loss"]))
    now = time.time()
    rate = (batch - self._since[1]) / max(now - self._since[0], 1e-9)
    self._since = (now, batch)
    if self.on_log is not None:
      self.on_log(Progress(batch, logs["total_steps"], logs["loss"], logs["learning_rate"], rate,
                           (logs["total_steps"] - batch) / max(rate, 1e-9),
                           cross_entropy=logs["cross_entropy"]))


class ProgressBar(keras.callbacks.Callback):
  """Advances a tqdm-like `bar` by the steps of every loop; shows the losses every `log_steps`."""

  def __init__(self, bar, log_steps: int = 1):
    super().__init__()
    self.bar, self.log_steps = bar, log_steps

  def on_train_batch_end(self, batch, logs=None):
    self.bar.update(logs["steps"])
    if hasattr(self.bar, "set_postfix") and crossed(batch, logs["steps"], self.log_steps,
                                                    logs["total_steps"]):
      self.bar.set_postfix(loss=f"{logs['loss']:.4f}", xent=f"{logs['cross_entropy']:.4f}",
                           lr=f"{logs['learning_rate']:.3g}")


def colour_class_ids(class_ids, colormap: str) -> tf.Tensor:
  """uint8 `[b, h, w, 3]` RGB of integer class ids `[b, h, w, 1]` (or `[b, h, w]`) in the colours of
  `colormap` (`deeplab_tf.data.colormaps`; ids outside [0, 255] are clipped), as `deeplab_vis` colours
  its pictures. research/deeplab's summaries showed `id * (255 // num_classes)` as grey levels instead."""
  ids = tf.cast(class_ids, tf.int32)
  if ids.shape.rank == 4:
    ids = ids[..., 0]
  return tf.gather(tf.constant(get_colormap(colormap)), tf.clip_by_value(ids, 0, 255))


class Summaries(keras.callbacks.Callback):
  """TensorBoard scalars (total_loss, cross_entropy, learning_rate) and, if present in the logs,
  sample images every `save_summaries_steps` steps, into `writer` (a `tf.summary` writer):
  `samples/image`, and `samples/label`, `samples/prediction` coloured with `colormap` (the dataset's,
  e.g. "pascal", "cityscapes", "ade20k"; see `colour_class_ids`)."""

  def __init__(self, writer, save_summaries_steps: int, colormap: str = "pascal"):
    super().__init__()
    self.writer, self.every, self.colormap = writer, save_summaries_steps, colormap
    get_colormap(colormap)  # an unknown name fails here, not at the first summary

  def on_train_batch_end(self, batch, logs=None):
    if not crossed(batch, logs["steps"], self.every, logs["total_steps"]):
      return
    with self.writer.as_default(step=batch):
      tf.summary.scalar("total_loss", logs["loss"])
      tf.summary.scalar("cross_entropy", logs["cross_entropy"])
      tf.summary.scalar("learning_rate", logs["learning_rate"])
      for k in IMAGE_KEYS:
        if k in logs:
          images = logs[k][:MAX_SUMMARY_IMAGES]
          if k != "image":
            images = colour_class_ids(images, self.colormap)
          tf.summary.image(f"samples/{k}", images, max_outputs=MAX_SUMMARY_IMAGES)

  def on_train_end(self, logs=None):
    self.writer.flush()


class Validation(keras.callbacks.Callback):
  """After every checkpoint: `validation_fn(model)` -> `{name: value}`, written as TensorBoard scalars
  `validation/<name>` at that step into `writer` (if given) and kept in `results`.

  research/deeplab ran `eval.py` beside training instead; `deeplab_tf.evaluation.evaluate.
  validation_fn` gives the mIoU of a split's first images.
  """

  def __init__(self, validation_fn: Callable[[keras.Model], Mapping[str, float]], writer=None):
    super().__init__()
    self.validation_fn, self.writer = validation_fn, writer
    self.results: List[Tuple[int, Dict[str, float]]] = []

  def on_checkpoint(self, step: int, prefix: str):
    del prefix
    values = {k: float(v) for k, v in self.validation_fn(self.model).items()}
    self.results.append((step, values))
    if self.writer is not None:
      with self.writer.as_default(step=step):
        for name, value in values.items():
          tf.summary.scalar(f"validation/{name}", value)
