"""Training-step time of Xception-65 DeepLabv3+ (crop 513, batch 2) in float32 and mixed_bfloat16.

Runs the trainer's own step (`deeplab_tf.training.train`, default strategy) on a constant in-memory
batch: `--warmup_steps` untimed steps (tracing included), then the median wall time of `--steps`
steps, taken from the trainer's per-step progress callback.

  .venv/bin/python benchmarks/train_step.py --precisions=float32,mixed_bfloat16 --steps=5
"""

import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

from deeplab_tf.options import ModelOptions, TrainOptions  # pylint: disable=g-import-not-at-top
from deeplab_tf.training import trainer  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("precisions", ["float32", "mixed_bfloat16"], "Policies to time.")
flags.DEFINE_integer("crop", 513, "Square crop size.")
flags.DEFINE_integer("batch", 2, "Batch size.")
flags.DEFINE_integer("warmup_steps", 2, "Untimed steps first.")
flags.DEFINE_integer("steps", 5, "Timed steps.")
FLAGS = flags.FLAGS


class _StepTimer:
  """A tqdm-like `progress` object recording the time of every `update`."""

  def __init__(self):
    self.times = [time.perf_counter()]

  def update(self, n):
    del n
    self.times.append(time.perf_counter())


def time_steps(precision):
  model_options = ModelOptions(model_variant="xception_65", num_classes=21, output_stride=16,
                               atrous_rates=(6, 12, 18), decoder_output_stride=4)
  steps = FLAGS.warmup_steps + FLAGS.steps
  options = TrainOptions(train_crop_size=(FLAGS.crop, FLAGS.crop), train_batch_size=FLAGS.batch,
                         training_number_of_steps=steps, save_interval_steps=10**9,
                         save_summaries_steps=10**9, log_steps=10**9, mixed_precision=precision,
                         seed=0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (FLAGS.batch, FLAGS.crop, FLAGS.crop, 3)).astype(np.float32),
           "label": rng.integers(0, 21, (FLAGS.batch, FLAGS.crop, FLAGS.crop, 1)).astype(np.int32)}
  timer = _StepTimer()
  with tempfile.TemporaryDirectory() as logdir:
    trainer.train(model_options, options,
                  lambda ctx: tf.data.Dataset.from_tensors(batch).repeat(), logdir, progress=timer)
  durations = np.diff(timer.times)[FLAGS.warmup_steps:]
  return statistics.median(durations), durations


def main(argv):
  del argv
  for precision in FLAGS.precisions:
    median, durations = time_steps(precision)
    logging.info("%s: median %.2f s/step over %d steps (%s)", precision, median, len(durations),
                 ", ".join(f"{d:.2f}" for d in durations))


if __name__ == "__main__":
  app.run(main)
