"""The controller: time-based checkpoints beside step-based ones."""
import time

import keras
import tensorflow as tf

from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import trainer

import helpers

MODEL = ModelOptions(num_classes=helpers.NUM_CLASSES)
TRAIN = TrainOptions(train_crop_size=(helpers.CROP,) * 2, train_batch_size=4,
                     training_number_of_steps=8, base_learning_rate=0.1, save_interval_steps=1000,
                     max_to_keep=100, log_steps=1, seed=5)


class _Slow(keras.callbacks.Callback):
  def on_train_batch_end(self, batch, logs=None):
    time.sleep(0.3)


def _ckpt_steps(logdir):
  state = tf.train.get_checkpoint_state(str(logdir))
  return [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]


def _train(options, logdir):
  images, labels = helpers.examples()
  return trainer.train(MODEL, options, helpers.dataset_fn_for(4, images, labels), str(logdir),
                       model_fn=helpers.tiny_model, callbacks=[_Slow()])


def test_save_interval_secs_checkpoints_between_step_intervals(tmp_path):
  # 0.3 s per step, a checkpoint due every 0.5 s: one every second step (more under load), and the
  # final one; the step interval (1000) never fires.
  _train(TRAIN.replace(save_interval_secs=0.5), tmp_path / "timed")
  steps = _ckpt_steps(tmp_path / "timed")
  assert steps[-1] == 8 and len(steps) >= 3 and all(0 < s <= 8 for s in steps), steps
  # 0 turns the time-based interval off: only the final checkpoint.
  _train(TRAIN.replace(save_interval_secs=0), tmp_path / "steps_only")
  assert _ckpt_steps(tmp_path / "steps_only") == [8]
