"""Data-parallel training gives the single-device result; strategies and sync BN from flags."""
import numpy as np
import pytest
import tensorflow as tf

from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import batch_norm
from deeplab_tf.training import strategy as strategy_lib
from deeplab_tf.training import trainer

import helpers

MODEL = ModelOptions(num_classes=helpers.NUM_CLASSES)
TRAIN = TrainOptions(train_crop_size=(helpers.CROP,) * 2, train_batch_size=4,
                     training_number_of_steps=3, base_learning_rate=0.1, save_interval_steps=100,
                     seed=3, weight_decay=1e-3)


def _mirrored():
  devices = tf.config.list_logical_devices("CPU")
  assert len(devices) >= 2, "tests/training/conftest.py could not split the CPU into 2 devices"
  return strategy_lib.mirrored_strategy([d.name for d in devices[:2]])


def _weights(options, logdir, strategy=None):
  images, labels = helpers.examples()
  result = trainer.train(MODEL, options, helpers.dataset_fn_for(4, images, labels), str(logdir),
                         strategy=strategy, model_fn=helpers.tiny_model)
  assert result.final_step == options.solver.training_number_of_steps
  return [np.asarray(v.numpy()) for v in result.model.weights], result.last_loss


def _max_difference(a, b):
  return max(float(np.max(np.abs(x - y))) for x, y in zip(a, b))


def test_mirrored_frozen_bn_equals_default(tmp_path):
  options = TRAIN.replace(fine_tune_batch_norm=False)
  single, loss_single = _weights(options, tmp_path / "default")
  mirrored, loss_mirrored = _weights(options, tmp_path / "mirrored", _mirrored())
  assert _max_difference(single, mirrored) < 1e-5
  assert loss_mirrored == pytest.approx(loss_single, rel=1e-5)
  # Training moved the weights (the comparison is not between two untouched models).
  initial = [np.asarray(v.numpy()) for v in helpers.tiny_model(MODEL).weights]
  assert _max_difference(single, initial) > 1e-3


def test_synchronized_bn_equals_default_and_unsynchronized_does_not(tmp_path):
  single, _ = _weights(TRAIN, tmp_path / "default")
  synced, _ = _weights(TRAIN.replace(sync_batch_norm=True), tmp_path / "synced", _mirrored())
  unsynced, _ = _weights(TRAIN, tmp_path / "unsynced", _mirrored())
  assert _max_difference(single, synced) < 1e-5
  # Per-replica batch statistics (2 images each) are not the 4-image statistics.
  assert _max_difference(single, unsynced) > 1e-4


def test_sync_and_freeze_switch_every_bn_layer():
  model = helpers.tiny_model(MODEL)
  assert batch_norm.set_batch_norm_synchronized(model) == 1
  assert batch_norm.batch_norm_layers(model)[0].synchronized
  n_trainable = len(model.trainable_variables)
  assert batch_norm.freeze_batch_norm(model) == 1
  assert len(model.trainable_variables) == n_trainable - 2  # gamma and beta


def test_strategy_config_from_flags():
  with pytest.raises(ValueError, match="--strategy"):
    strategy_lib.StrategyConfig("horovod")
  with pytest.raises(ValueError, match="--tpu"):
    strategy_lib.StrategyConfig("tpu")
  with pytest.raises(ValueError, match="--num_gpus"):
    strategy_lib.StrategyConfig("default", num_gpus=2)
  with pytest.raises(ValueError, match="--num_gpus"):
    strategy_lib.build_strategy(strategy_lib.StrategyConfig("mirrored", num_gpus=1))
  assert strategy_lib.build_strategy(strategy_lib.StrategyConfig()).num_replicas_in_sync == 1
  assert strategy_lib.build_strategy(
      strategy_lib.StrategyConfig("mirrored")).num_replicas_in_sync == 2


def test_tpu_path_without_a_tpu_fails_clearly():
  config = strategy_lib.StrategyConfig("tpu", tpu="local")
  with pytest.raises(RuntimeError, match="--tpu='local'"):
    strategy_lib.build_strategy(config)


def test_batch_norm_decay_override_sets_the_moving_average_rate():
  model = helpers.tiny_model(MODEL)
  assert batch_norm.set_batch_norm_decay(model, 0.25) == 1
  bn = batch_norm.batch_norm_layers(model)[0]
  images, _ = helpers.examples()
  inputs = bn.input
  features = tf.keras.Model(model.inputs, inputs)(images[:2], training=True).numpy()
  model(images[:2], training=True)
  batch_mean = features.reshape(-1, features.shape[-1]).mean(axis=0)
  # moving = decay * moving + (1 - decay) * batch, starting from 0.
  np.testing.assert_allclose(bn.moving_mean.numpy(), 0.75 * batch_mean, rtol=1e-4, atol=1e-5)
  with pytest.raises(ValueError, match="batch_norm_decay"):
    TrainOptions(batch_norm_decay=1.0)
  # the original's default keeps every layer's own decay (ResNet's 0.95 included); others override
  defaults = TrainOptions().batch_norm
  assert defaults.batch_norm_decay == 0.9997 and defaults.batch_norm_decay_override is None
  assert TrainOptions(batch_norm_decay=0.9).batch_norm.batch_norm_decay_override == 0.9
