"""steps_per_loop: N single steps equal one loop of N; NaN checks and logs at loop boundaries."""
import numpy as np
import pytest

from deeplab_tf.options import ModelOptions, TrainOptions
from deeplab_tf.training import trainer

import helpers

MODEL = ModelOptions(num_classes=helpers.NUM_CLASSES)
TRAIN = TrainOptions(train_crop_size=(helpers.CROP,) * 2, train_batch_size=4,
                     training_number_of_steps=12, base_learning_rate=0.1, save_interval_steps=100,
                     log_steps=1, seed=5, weight_decay=1e-3)


def _train(options, logdir, **kwargs):
  images, labels = helpers.examples()
  dataset_fn = kwargs.pop("dataset_fn", helpers.dataset_fn_for(4, images, labels))
  return trainer.train(MODEL, options, dataset_fn, str(logdir), model_fn=helpers.tiny_model,
                       **kwargs)


def test_one_loop_of_n_steps_equals_n_single_steps(tmp_path):
  single = _train(TRAIN, tmp_path / "single")
  looped = _train(TRAIN.replace(steps_per_loop=5), tmp_path / "looped")
  assert single.final_step == looped.final_step == 12
  # The same ops on the same data in the same order, in one process: equal up to float rounding of
  # differently fused graphs (1e-6 is ~10 float32 ulps at these weight magnitudes).
  for a, b in zip(single.model.weights, looped.model.weights):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)
  assert looped.last_loss == pytest.approx(single.last_loss, rel=1e-5)
  # The host sees the loss only at loop ends: steps 5, 10 and the last, 12 (loops of 5, 5, 2).
  assert [s for s, _ in looped.losses] == [5, 10, 12]
  assert [s for s, _ in single.losses] == list(range(1, 13))
  moved = [float(np.max(np.abs(a.numpy() - b.numpy())))
           for a, b in zip(looped.model.weights, helpers.tiny_model(MODEL).weights)]
  assert max(moved) > 1e-3  # training changed the weights


def test_loops_end_at_checkpoints_and_a_nan_inside_a_loop_is_named(tmp_path):
  images, labels = helpers.examples()
  # Batch index 5 is step 6, inside the second loop (steps 5..8 after the checkpoint at 4).
  dataset_fn = helpers.dataset_fn_for(4, images, labels, nan_at_batch=5)
  options = TRAIN.replace(steps_per_loop=20, save_interval_steps=4)
  with pytest.raises(trainer.NonFiniteLossError, match="step 6.*ckpt-4"):
    _train(options, tmp_path, dataset_fn=dataset_fn)
