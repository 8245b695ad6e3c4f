"""The controller: time-based checkpoints, a truncated latest checkpoint, a full disk."""
import os
import time

import keras
import pytest
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


def _train(options, logdir, callbacks=()):
  images, labels = helpers.examples()
  return trainer.train(MODEL, options, helpers.dataset_fn_for(4, images, labels), str(logdir),
                       model_fn=helpers.tiny_model, callbacks=callbacks)


def test_save_interval_secs_checkpoints_between_step_intervals(tmp_path):
  # 0.3 s per step, a checkpoint due every 0.5 s: one every second step (more under load), and the
  # final one; the step interval (1000) never fires.
  _train(TRAIN.replace(save_interval_secs=0.5), tmp_path / "timed", [_Slow()])
  steps = _ckpt_steps(tmp_path / "timed")
  assert steps[-1] == 8 and len(steps) >= 3 and all(0 < s <= 8 for s in steps), steps
  # 0 turns the time-based interval off: only the final checkpoint.
  _train(TRAIN.replace(save_interval_secs=0), tmp_path / "steps_only", [_Slow()])
  assert _ckpt_steps(tmp_path / "steps_only") == [8]


def test_truncated_latest_checkpoint_resumes_from_the_previous_with_a_warning(tmp_path, caplog):
  options = TRAIN.replace(save_interval_secs=0, save_interval_steps=4)
  _train(options, tmp_path)
  assert _ckpt_steps(tmp_path) == [4, 8]
  data = tf.io.gfile.glob(str(tmp_path / "ckpt-8.data-*"))[0]
  with open(data, "r+b") as f:  # what a kill during a copy or a full disk leaves
    f.truncate(os.path.getsize(data) // 2)
  with caplog.at_level("WARNING", logger="absl"):
    resumed = _train(options.replace(training_number_of_steps=12), tmp_path)
  assert resumed.start_step == 4 and resumed.final_step == 12
  warnings = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
  assert len(warnings) == 1 and str(tmp_path / "ckpt-8") in warnings[0], warnings
  assert _ckpt_steps(tmp_path)[-1] == 12


def test_disk_full_while_checkpointing_is_one_clear_error_and_keeps_the_previous(tmp_path,
                                                                                 monkeypatch):
  write = tf.train.Checkpoint._write  # pylint: disable=protected-access

  def full_disk(self, prefix, *args, **kwargs):
    if not prefix.endswith("ckpt-8"):
      return write(self, prefix, *args, **kwargs)
    # As TensorFlow's sharded save does: part files in '<prefix>_temp/', then the disk fills up.
    tf.io.gfile.makedirs(prefix + "_temp")
    with tf.io.gfile.GFile(prefix + "_temp/part-00000-of-00001.data-00000-of-00001", "wb") as f:
      f.write(b"\0" * 100)
    raise tf.errors.ResourceExhaustedError(None, None, f"{prefix}_temp/part-00000; No space left "
                                           "on device")

  monkeypatch.setattr(tf.train.Checkpoint, "_write", full_disk)
  options = TRAIN.replace(save_interval_secs=0, save_interval_steps=4)
  with pytest.raises(trainer.CheckpointWriteError) as raised:
    _train(options, tmp_path)
  message = str(raised.value)
  assert "\n" not in message and str(tmp_path / "ckpt-8") in message, message
  assert "No space left on device" in message and "MiB" in message
  assert str(tmp_path / "ckpt-4") in message  # the checkpoint still to resume from
  assert not tf.io.gfile.glob(str(tmp_path / "ckpt-8*"))  # temporary folder removed
  assert tf.train.latest_checkpoint(str(tmp_path)) == str(tmp_path / "ckpt-4")
  assert tf.compat.v1.train.NewCheckpointReader(str(tmp_path / "ckpt-4")).get_tensor(
      "step/.ATTRIBUTES/VARIABLE_VALUE") == 4
