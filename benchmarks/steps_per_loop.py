"""Steps per second of a small model with `--steps_per_loop` 1 vs 20 (host round trips per step).

MobileNetV2 DeepLabv3 (crop 65, batch 2, default strategy) on a constant in-memory batch. Each setting
trains `--steps` steps; the time of the first loop (tracing) is left out: steps/s is measured from the
end of the first loop to the end of training, from the trainer's own callbacks.

  PYTHONPATH=$PWD .venv/bin/python benchmarks/steps_per_loop.py --steps_per_loop=1,20 --steps=200
"""

import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf  # pylint: disable=g-import-not-at-top
from absl import app, flags, logging  # pylint: disable=g-import-not-at-top

from deeplab_tf.options import ModelOptions, TrainOptions  # pylint: disable=g-import-not-at-top
from deeplab_tf.training import trainer  # pylint: disable=g-import-not-at-top

flags.DEFINE_list("steps_per_loop", ["1", "20"], "Settings to time.")
flags.DEFINE_integer("crop", 65, "Square crop size.")
flags.DEFINE_integer("batch", 2, "Batch size.")
flags.DEFINE_integer("steps", 200, "Steps per setting (a multiple of every setting).")
flags.DEFINE_boolean("jit_compile", False, "Also compile the step with XLA.")
FLAGS = flags.FLAGS


class _LoopTimes(keras.callbacks.Callback):
  """Records (step, time) at the end of every loop."""

  def __init__(self):
    super().__init__()
    self.times = []

  def on_train_batch_end(self, batch, logs=None):
    self.times.append((batch, time.perf_counter()))


def steps_per_second(steps_per_loop: int) -> float:
  model_options = ModelOptions(model_variant="mobilenet_v2", num_classes=21)
  options = TrainOptions(train_crop_size=(FLAGS.crop, FLAGS.crop), train_batch_size=FLAGS.batch,
                         training_number_of_steps=FLAGS.steps, save_interval_steps=10**9,
                         save_interval_secs=0, save_summaries_steps=10**9, log_steps=10**9,
                         steps_per_loop=steps_per_loop, jit_compile=FLAGS.jit_compile, seed=0)
  rng = np.random.default_rng(0)
  batch = {"image": rng.uniform(0, 255, (FLAGS.batch, FLAGS.crop, FLAGS.crop, 3)).astype(np.float32),
           "label": rng.integers(0, 21, (FLAGS.batch, FLAGS.crop, FLAGS.crop, 1)).astype(np.int32)}
  timer = _LoopTimes()
  with tempfile.TemporaryDirectory() as logdir:
    trainer.train(model_options, options, lambda ctx: tf.data.Dataset.from_tensors(batch).repeat(),
                  logdir, callbacks=[timer])
  (first_step, first_time), (last_step, last_time) = timer.times[0], timer.times[-1]
  return (last_step - first_step) / (last_time - first_time)


def main(argv):
  del argv
  rates = {int(n): steps_per_second(int(n)) for n in FLAGS.steps_per_loop}
  base = rates[min(rates)]
  for n, rate in rates.items():
    logging.info("steps_per_loop=%d: %.1f steps/s (%.2fx steps_per_loop=%d)", n, rate, rate / base,
                 min(rates))


if __name__ == "__main__":
  app.run(main)
