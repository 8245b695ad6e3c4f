"""Issue 22 in the trainer: nothing lost (another model's logdir, two trainers), every fault named
(non-finite weights before a checkpoint, labels all ignored)."""
import json
import os
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf import model_io
from deeplab_tf.errors import UserError
from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import logdir_lock, trainer

import helpers

MODEL = ModelOptions(num_classes=helpers.NUM_CLASSES)
TRAIN = TrainOptions(train_crop_size=(helpers.CROP,) * 2, train_batch_size=4,
                     training_number_of_steps=4, base_learning_rate=0.1, save_interval_steps=2,
                     save_interval_secs=0, log_steps=1, seed=5)


def _train(logdir, model_options=MODEL, options=TRAIN, labels=None, **kwargs):
  images, default_labels = helpers.examples()
  dataset_fn = helpers.dataset_fn_for(4, images, default_labels if labels is None else labels)
  return trainer.train(model_options, options, dataset_fn, str(logdir), model_fn=helpers.tiny_model,
                       **kwargs)


def _snapshot(logdir):
  return {name: open(os.path.join(logdir, name), "rb").read() for name in sorted(os.listdir(logdir))
          if name.startswith(("ckpt-", "checkpoint", "model_options"))}


def test_another_num_classes_in_the_same_logdir_is_refused_and_nothing_is_overwritten(tmp_path):
  _train(tmp_path)
  before = _snapshot(tmp_path)
  assert "ckpt-4.index" in before
  with pytest.raises(trainer.CheckpointMismatchError) as error:
    _train(tmp_path, model_options=MODEL.replace(num_classes=5),
           options=TRAIN.replace(training_number_of_steps=8))
  message = str(error.value)
  assert isinstance(error.value, UserError) and "\n" not in message
  assert "num_classes: 3 -> 5" in message and "model_options.json" in message, message
  assert "another --train_logdir" in message and "--tf_initial_checkpoint" in message, message
  assert _snapshot(tmp_path) == before


def test_a_checkpoint_that_reads_but_does_not_fit_is_refused_not_taken_for_corrupt(tmp_path):
  """Without model_options.json (e.g. deleted) the restore itself finds the mismatch: refused, not
  "unreadable: resuming from the previous one" and then "starting afresh" over the run."""
  _train(tmp_path)
  os.remove(tmp_path / "model_options.json")
  before = _snapshot(tmp_path)
  with pytest.raises(trainer.CheckpointMismatchError, match=r"ckpt-4, which does not fit"):
    _train(tmp_path, model_options=MODEL.replace(num_classes=5),
           options=TRAIN.replace(training_number_of_steps=8))
  assert _snapshot(tmp_path) == before


def _dead_pid():
  process = subprocess.Popen([sys.executable, "-c", "pass"])
  process.wait()
  return process.pid


def _write_lease(logdir, **fields):
  os.makedirs(logdir, exist_ok=True)
  lease = {"host": socket.gethostname(), "pid": os.getppid(), "started": 1.7e9,
           "refreshed": time.time(), "token": "other"}
  lease.update(fields)
  with open(os.path.join(logdir, logdir_lock.LOCK_FILENAME), "w") as f:
    json.dump(lease, f)


def test_a_second_trainer_on_a_held_logdir_is_refused_with_the_holder(tmp_path):
  _write_lease(tmp_path, host="gpu-7")  # a live lease of another machine
  with pytest.raises(trainer.LogdirBusyError) as error:
    _train(tmp_path)
  message = str(error.value)
  assert "host gpu-7" in message and f"pid {os.getppid()}" in message, message
  assert "started 2023-11-14 22:13:20 UTC" in message, message
  assert tf.train.latest_checkpoint(str(tmp_path)) is None
  # The same host and a pid that is still running: held too.
  _write_lease(tmp_path)
  with pytest.raises(trainer.LogdirBusyError):
    _train(tmp_path)


@pytest.mark.parametrize("stale", ["dead_pid", "expired"])
def test_a_crashed_trainers_lease_is_taken_over_and_released_at_the_end(tmp_path, stale):
  if stale == "dead_pid":
    _write_lease(tmp_path, pid=_dead_pid())
  else:
    _write_lease(tmp_path, host="gpu-7", refreshed=time.time() - 2 * logdir_lock.STALE_AFTER_SECS)
  result = _train(tmp_path)
  assert result.final_step == 4
  assert not os.path.exists(tmp_path / logdir_lock.LOCK_FILENAME)  # released on normal exit


def test_the_lease_works_through_gfile_and_is_refreshed(tmp_path):
  logdir = "ram://lease_test/run"
  first = logdir_lock.LogdirLock(logdir, refresh_secs=0.05).acquire()
  try:
    held = json.loads(tf.io.gfile.GFile(logdir + "/train.lock").read())
    time.sleep(0.3)
    refreshed = json.loads(tf.io.gfile.GFile(logdir + "/train.lock").read())
    assert refreshed["refreshed"] > held["refreshed"] and refreshed["pid"] == os.getpid()
    with pytest.raises(logdir_lock.LogdirBusyError, match=f"pid {os.getpid()}"):
      logdir_lock.LogdirLock(logdir).acquire()
  finally:
    first.release()
  assert not tf.io.gfile.exists(logdir + "/train.lock")


class _BlowUpBatchNorm(keras.callbacks.Callback):
  """What --base_learning_rate=1e8 does to BN: moving variances overflow to inf while the loss of
  the step is still finite (4.7e33 in the issue)."""

  def __init__(self, at_step):
    super().__init__()
    self.at_step = at_step

  def on_train_batch_end(self, batch, logs=None):
    if batch == self.at_step:
      variance = self.model.get_layer("conv1.BatchNorm").moving_variance
      variance.assign(tf.fill(variance.shape, np.inf))


def test_non_finite_weights_are_never_checkpointed_nor_called_good(tmp_path):
  options = TRAIN.replace(training_number_of_steps=6)
  with pytest.raises(trainer.NonFiniteLossError) as error:
    _train(tmp_path, options=options, callbacks=[_BlowUpBatchNorm(at_step=3)])
  message = str(error.value)
  assert "conv1.BatchNorm/moving_variance" in message and "at step 4" in message, message
  assert "The latest good checkpoint is " + str(tmp_path / "ckpt-2") in message, message
  assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-2")
  model = helpers.tiny_model(MODEL)
  tf.train.Checkpoint(model=model).restore(str(tmp_path / "ckpt-2")).expect_partial()
  assert all(np.all(np.isfinite(v.numpy())) for v in model.weights)


def test_labels_all_ignored_are_refused_before_any_checkpoint(tmp_path):
  images, labels = helpers.examples()
  with pytest.raises(trainer.AllLabelsIgnoredError, match="ignore_label=255"):
    _train(tmp_path, labels=np.full_like(labels, 255), ignore_label=255,
           options=TRAIN.replace(save_interval_steps=1000))
  assert tf.train.latest_checkpoint(str(tmp_path)) is None


def test_batches_without_a_labelled_pixel_are_warned_about_once(tmp_path, caplog):
  images, labels = helpers.examples()
  labels = labels.copy()
  labels[4:12] = 255  # batches 1 and 2 of every 4 (16 examples, batch 4): no labelled pixel
  with caplog.at_level("WARNING", logger="absl"):
    result = _train(tmp_path, labels=labels, ignore_label=255,
                    options=TRAIN.replace(training_number_of_steps=8))
  assert result.final_step == 8
  warnings = [r.getMessage() for r in caplog.records if "carry no labelled pixel" in r.getMessage()]
  assert len(warnings) == 1 and "ignore_label=255" in warnings[0], warnings


def _wide_model(options):
  """Another architecture than `helpers.tiny_model` (16 filters, another layer): another variant."""
  images = keras.Input((helpers.CROP, helpers.CROP, 3), name="images")
  x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="conv0")(images)
  x = keras.layers.Conv2D(16, 3, padding="same", name="conv1")(x)
  x = keras.layers.Conv2D(options.num_classes, 1, name="logits.semantic")(x)
  return keras.Model(images, keras.layers.UpSampling2D(2)(x)[:, :helpers.CROP, :helpers.CROP])


def test_fine_tuning_our_own_checkpoint_to_other_classes_without_the_last_layer(tmp_path):
  first = _train(tmp_path / "first")
  source = first.model
  options = TRAIN.replace(tf_initial_checkpoint=str(tmp_path / "first"), initialize_last_layer=False,
                          training_number_of_steps=1)
  initial = {}

  class Capture(keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
      initial.update({w.path: np.array(w.numpy()) for w in self.model.weights})
  five = _train(tmp_path / "five", model_options=MODEL.replace(num_classes=5), options=options,
                callbacks=[Capture()])
  assert five.model.get_layer("logits.semantic").kernel.shape[-1] == 5
  np.testing.assert_array_equal(initial["conv1/kernel"], source.get_layer("conv1").kernel.numpy())
  # The same from a .keras file.
  source.save(str(tmp_path / "first.keras"))
  initial.clear()
  _train(tmp_path / "five_keras", model_options=MODEL.replace(num_classes=5),
         options=options.replace(tf_initial_checkpoint=str(tmp_path / "first.keras")),
         callbacks=[Capture()])
  np.testing.assert_array_equal(initial["conv1/kernel"], source.get_layer("conv1").kernel.numpy())


def test_an_initial_checkpoint_of_another_architecture_is_one_quiet_line(tmp_path, capfd):
  _train(tmp_path / "first")
  capfd.readouterr()
  with pytest.raises(trainer.CheckpointMismatchError) as error:
    trainer.train(MODEL, TRAIN.replace(tf_initial_checkpoint=str(tmp_path / "first")),
                  helpers.dataset_fn_for(4, *helpers.examples()), str(tmp_path / "second"),
                  model_fn=_wide_model)
  assert "\n" not in str(error.value) and "--tf_initial_checkpoint" in str(error.value)
  out, err = capfd.readouterr()
  warnings = [line for line in (out + err).splitlines() if "WARNING" in line or "could not be found" in line]
  assert len(warnings) < 5, warnings[:10]
